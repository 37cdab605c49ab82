"""Open the leaderboard page in headless Chromium (offline): charts render, the table sorts, no console
errors. Skips when Chromium (/usr/bin/chromium) or the playwright package is missing.

Set MLFSIC_SCREENSHOT_DIR to keep a copy of the screenshot.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from test_leaderboard import make_run_dir

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]


def _sync_playwright():
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install playwright; no browser download needed)")
    return sync_playwright


def test_page_renders_offline_in_chromium(tmp_path):
    sync_playwright = _sync_playwright()
    from mlfsic.harness.report.leaderboard import build_leaderboard

    run = make_run_dir(tmp_path / "runs", "run-a", {"alpha": 0.7, "beta": 0.68, "gamma": 0.5},
                       settings=("0shot", "1shot", "5shot"))
    refs = tmp_path / "refs"
    refs.mkdir()
    (refs / "p.yaml").write_text("entries:\n  - {method: PaperNet, dataset: coco-moji, setting: 5shot, map: 75.0, "
                                 "paper: 'Doe et al., X, 2020', table: 'Table 1'}\n")
    page = build_leaderboard([run], tmp_path / "out", reference_dir=refs, n_boot=1000)["html"]
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 900})
            tab.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            tab.on("pageerror", lambda error: errors.append(str(error)))
            tab.on("request", lambda request: requests.append(request.url))
            tab.goto(page.as_uri())
            tab.wait_for_selector(".js-plotly-plot .main-svg", timeout=20000)
            n_plots = tab.locator(".js-plotly-plot").count()
            n_svgs = tab.locator(".js-plotly-plot .main-svg").count()
            n_bars = tab.locator("#mlfsic-bar-coco-moji .bars path").count()
            n_rows = tab.locator("#mlfsic-results-table tbody tr").count()
            first_method = tab.locator("#mlfsic-results-table tbody tr td:nth-child(4)").first.inner_text()
            tab.locator("#mlfsic-results-table th", has_text="method").click()
            tab.locator("#mlfsic-results-table th", has_text="method").click()  # descending
            sorted_first = tab.locator("#mlfsic-results-table tbody tr td:nth-child(4)").first.inner_text()
            shot = tmp_path / "leaderboard.png"
            tab.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    if os.environ.get("MLFSIC_SCREENSHOT_DIR"):
        target = Path(os.environ["MLFSIC_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target / "leaderboard.png")
    assert errors == []
    assert all(url.startswith("file:") or url.startswith("data:") for url in requests), requests
    assert n_plots == 1 + 3  # one bar chart, one heatmap per setting
    assert n_svgs >= 2 * n_plots  # plotly draws a main svg and an overlay svg per chart
    assert n_bars >= 3 * 3  # three methods x three settings
    assert n_rows == 3 * 3 + 1  # ours plus the reported row
    assert first_method == "alpha" and sorted_first == "PaperNet (reported)"
    assert shot.stat().st_size > 10_000
