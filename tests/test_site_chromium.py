"""The leaderboard site in headless Chromium (offline): filters and sorting change what the overview shows, a
benchmark page reached by its link renders its plots, and no page logs a console error. Skips as
test_page_chromium does (no /usr/bin/chromium or no playwright).

``MLFSIC_SHOTS=1`` saves /tmp/site_shots/overview.png and /tmp/site_shots/benchmark.png.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from test_page_chromium import CHROMIUM, CHROMIUM_ARGS, _sync_playwright
from test_site import SMALL_CNN, TEACHER, make_benchmark_run

SHOTS = Path("/tmp/site_shots")


def test_site_filters_sort_and_renders_in_chromium(tmp_path):
    sync_playwright = _sync_playwright()
    from mlfsic.harness.report.site import build_site

    cnn = make_benchmark_run(tmp_path / "runs", "run-cnn", {"laso": 0.72, "protonet": 0.6, "wordvec-zeroshot": 0.4},
                             SMALL_CNN, "small_cnn-aaaa", ("0shot", "1shot", "5shot"))
    strict = make_benchmark_run(tmp_path / "runs", "run-strict", {"laso": 0.5, "protonet": 0.66},
                                {**TEACHER, "regime": "strict"}, "teacher-strict-cccc", ("1shot", "5shot"), rng_seed=7)
    site = tmp_path / "site"
    build_site([cnn, strict], site, n_boot=300)
    overview = json.loads((site / "overview.json").read_text())
    one_shot = "coco-moji · small_cnn · 1shot"
    by_map = [r["method"] for r in sorted((r for r in overview["rows"] if one_shot in r["cells"]),
                                          key=lambda r: r["cells"][one_shot]["map"])]
    pages = sorted(site.rglob("*.html"))
    errors: dict[str, list[str]] = {}
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 900})
            current = {"page": ""}
            tab.on("console", lambda m: errors.setdefault(current["page"], []).append(m.text) if m.type == "error" else None)
            tab.on("pageerror", lambda e: errors.setdefault(current["page"], []).append(str(e)))
            tab.on("request", lambda request: requests.append(request.url))
            current["page"] = "index.html"
            tab.goto((site / "index.html").as_uri())

            def visible_columns() -> list[str]:
                return tab.eval_on_selector_all("#mlfsic-overview th[data-col]",
                                                "ths => ths.filter(t => t.offsetParent !== null).map(t => t.textContent)")

            def visible_rows() -> list[str]:
                return tab.eval_on_selector_all("#mlfsic-overview tbody tr",
                                                "rows => rows.filter(r => r.offsetParent !== null)"
                                                ".map(r => r.cells[0].textContent)")

            all_columns, all_rows = visible_columns(), visible_rows()
            tab.locator('input.mlfsic-filter[name="setting"][value="0shot"]').uncheck()
            no_zero_shot, rows_without_zero_shot = visible_columns(), visible_rows()
            tab.locator('input.mlfsic-filter[name="backbone"][value="tiny-teacher (strict)"]').uncheck()
            cnn_only = visible_columns()
            tab.locator('input.mlfsic-filter[name="regime"][value="none"]').uncheck()
            nothing, no_rows = visible_columns(), visible_rows()
            for name, value in (("setting", "0shot"), ("backbone", "tiny-teacher (strict)"), ("regime", "none")):
                tab.locator(f'input.mlfsic-filter[name="{name}"][value="{value}"]').check()
            restored = visible_columns()
            header = tab.locator("#mlfsic-overview th", has_text=one_shot)
            header.click()
            ascending = visible_rows()
            header.click()
            descending = visible_rows()
            if os.environ.get("MLFSIC_SHOTS") == "1":
                SHOTS.mkdir(parents=True, exist_ok=True)
                tab.screenshot(path=str(SHOTS / "overview.png"), full_page=True)
            current["page"] = "benchmarks/coco-moji-small-cnn.html"
            tab.locator('a[href="benchmarks/coco-moji-small-cnn.html"]').first.click()
            tab.wait_for_selector(".js-plotly-plot .main-svg", timeout=20000)
            url = tab.url
            n_plots = tab.locator(".js-plotly-plot").count()
            n_bars = tab.locator("#mlfsic-bar-coco-moji .bars path").count()
            if os.environ.get("MLFSIC_SHOTS") == "1":
                tab.screenshot(path=str(SHOTS / "benchmark.png"), full_page=True)
            for page in pages:
                current["page"] = page.relative_to(site).as_posix()
                tab.goto(page.as_uri())
                if page.parent.name == "benchmarks":
                    tab.wait_for_selector(".js-plotly-plot .main-svg", timeout=20000)
                else:
                    tab.wait_for_load_state("load")
        finally:
            browser.close()
    assert errors == {}
    assert all(u.startswith("file:") or u.startswith("data:") for u in requests), requests
    assert all_columns == [c["label"] for c in overview["columns"]] and len(all_columns) == 5
    assert all_rows == ["laso", "protonet", "wordvec-zeroshot"]
    assert no_zero_shot == [c for c in all_columns if not c.endswith("0shot")]
    assert rows_without_zero_shot == ["laso", "protonet"]  # the zero-shot-only method has nothing left to show
    assert cnn_only == ["coco-moji · small_cnn · 1shot", "coco-moji · small_cnn · 5shot"]
    assert nothing == [] and no_rows == []
    assert restored == all_columns
    assert ascending == by_map + ["wordvec-zeroshot"] and descending == by_map[::-1] + ["wordvec-zeroshot"]
    assert url.endswith("benchmarks/coco-moji-small-cnn.html")
    assert n_plots == 1 + 3 and n_bars >= 3
    if SHOTS.is_dir() and os.environ.get("MLFSIC_SHOTS") == "1":
        assert (SHOTS / "overview.png").stat().st_size > 10_000
    shutil.rmtree(site)
