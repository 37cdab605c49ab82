"""The leaderboard site (``report.site``) on small run dirs on three backbones, one of them in a suite dir.

Checks: every backbone is a column group of the overview and is ranked on its own; the overview's CSV and
JSON hold what its table shows; the costs equal a computation straight from the records and run.json; every
internal link of every page resolves; there is one plotly.js and no page inlines it; a rebuild is
byte-identical; a DIR that is neither a run nor a suite dir is a one-line error.
"""

from __future__ import annotations

import csv
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.report.site import backbone_of, build_site
from mlfsic.harness.report.stats import summarise
from mlfsic.harness.sweep.store import write_suite_json
from test_leaderboard import make_run_dir

N_BOOT = 500
FEATURES = {"protocol": "episodic-v1", "embedding_id": "minilm-0123"}
SMALL_CNN = {"kind": "small_cnn", "image_size": 96}
TEACHER = {"kind": "open_clip", "model": "tiny-teacher"}


def make_benchmark_run(root: Path, run_id: str, methods: dict[str, float], backbone: dict, backbone_id: str,
                       settings: tuple[str, ...], num_gpus: float = 0.0, rng_seed: int = 0) -> Path:
    """A run dir (``make_run_dir``) with the run.json blocks the site reads: config, backbone, fit_seconds,
    evaluate_chunk_s, methods, leakage_check; records with per-seed fit_s and per-episode predict_s."""
    run = make_run_dir(root, run_id, methods, settings=settings, rng_seed=rng_seed,
                       features={**FEATURES, "backbone_id": backbone_id},
                       only={"wordvec-zeroshot": ("0shot",)} if "0shot" in settings else None)
    rng = np.random.default_rng(rng_seed + 1)
    records = pd.read_parquet(run / "records.parquet")
    fit_seconds = {f"{m}/seed{s}": round(float(rng.uniform(1, 50)), 3)
                   for m, s in sorted(set(zip(records["method"], records["seed"])))}
    records["fit_s"] = [fit_seconds[f"{m}/seed{s}"] for m, s in zip(records["method"], records["seed"])]
    records["predict_s"] = rng.uniform(0.001, 0.05, size=len(records))
    records.to_parquet(run / "records.parquet", index=False)
    info = json.loads((run / "run.json").read_text())
    regime = backbone.get("regime")
    info.update(
        config={"n_episodes": 12, "eval_split": "test", "fit_val": False, "dataset": {"name": "coco-moji", "backbone": backbone},
                "resources": {"num_cpus": 1, "num_gpus": num_gpus}},
        dataset={"name": "coco-moji"},
        backbone={"id": backbone_id, "kind": backbone["kind"], **({"model": "tiny-teacher", "regime": regime,
                                                                    "stand_in": "not CLIP"} if regime else {}),
                  "training": {"n_train": 6000}},
        fit_seconds=fit_seconds, evaluate_chunk_s={"n_chunks": 3, "wall": 10.0, "cpu": 8.0},
        methods={m: {"method": m, "config": {"lr": 0.001, "seed_free": True}, "config_hash": "c" * 64} for m in methods},
        leakage_check={"base": {"images": 600, "labels": 42, "split": "base"}, "val": {"images": 150, "labels": 9},
                       "fit_receives": ["base", "val"], "evaluated_split_reaches_fit": False, "ok": True},
    )
    (run / "run.json").write_text(json.dumps(info, indent=1))
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("site-runs")
    cnn = make_benchmark_run(root / "runs", "run-cnn", {"laso": 0.72, "protonet": 0.6, "wordvec-zeroshot": 0.4},
                             SMALL_CNN, "small_cnn-aaaa", ("0shot", "1shot", "5shot"))
    seen = make_benchmark_run(root / "runs", "run-seen", {"laso": 0.55, "protonet": 0.7}, {**TEACHER, "regime": "concept-seen"},
                              "teacher-seen-bbbb", ("1shot",), num_gpus=0.5, rng_seed=4)
    strict = make_benchmark_run(root / "runs", "run-strict", {"laso": 0.5, "protonet": 0.66}, {**TEACHER, "regime": "strict"},
                                "teacher-strict-cccc", ("1shot", "5shot"), rng_seed=7)
    suite = root / "suites" / "teachers"
    write_suite_json(suite, {"suite": "teachers", "suite_id": "teachers-0", "members": [
        {"name": "seen", "run_id": "run-seen", "run_dir": "../../runs/run-seen", "overrides": [], "status": "complete"},
        {"name": "strict", "run_id": "run-strict", "run_dir": "../../runs/run-strict", "overrides": [], "status": "complete"},
    ]})
    return {"cnn": cnn, "seen": seen, "strict": strict, "suite": suite, "root": root}


@pytest.fixture(scope="module")
def site(runs) -> Path:
    out = runs["root"] / "site"
    build_site([runs["cnn"], runs["suite"]], out, n_boot=N_BOOT)
    return out


class _Page(HTMLParser):
    """Links (href/src) and the overview table's header texts and cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.headers: list[str] = []
        self.rows: list[list[str]] = []
        self._in_overview = self._in_head = self._in_value = False
        self._text = ""

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("href", "src"):
            if attrs.get(name):
                self.links.append(attrs[name])
        if tag == "table":
            self._in_overview = attrs.get("id") == "mlfsic-overview"
        if not self._in_overview:
            return
        if tag == "th":
            self._in_head, self._text = True, ""
        elif tag == "tr" and self.headers:
            self.rows.append([])
        elif tag == "td":
            self.rows[-1].append("")
        elif tag == "span" and attrs.get("class") == "v":
            self._in_value = True
        elif tag == "a" and self.rows and self.rows[-1] == [""]:
            self._in_value = True  # the method name

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_overview = False
        elif tag == "th" and self._in_head:
            self.headers.append(self._text)
            self._in_head = False
        elif tag in ("span", "a"):
            self._in_value = False

    def handle_data(self, data):
        if self._in_head:
            self._text += data
        elif self._in_value:
            self.rows[-1][-1] += data


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    return page


def test_backbone_labels_from_run_json():
    def label(backbone: dict, block: dict | None = None) -> tuple[str, str]:
        return backbone_of({"config": {"dataset": {"backbone": backbone}}, "backbone": block or {}})

    assert label(SMALL_CNN) == ("small_cnn", "none")
    assert label({"kind": "resnet50"}) == ("resnet50", "none")
    assert label({"kind": "timm", "model": "tf_efficientnet_lite0"}) == ("timm tf_efficientnet_lite0", "none")
    assert label({**TEACHER, "regime": "concept-seen"}) == ("tiny-teacher (concept-seen)", "concept-seen")
    assert label(TEACHER, {"regime": "strict"}) == ("tiny-teacher (strict)", "strict")
    assert label({"kind": "open_clip", "model": "ViT-B-16-quickgelu"}) == ("open_clip ViT-B-16-quickgelu", "none")


def test_overview_has_every_backbone_and_its_csv_and_json_hold_the_table(runs, site):
    page = _parse(site / "index.html")
    assert page.headers[0] == "method"
    columns = page.headers[1:]
    assert columns == ["coco-moji · small_cnn · 0shot", "coco-moji · small_cnn · 1shot", "coco-moji · small_cnn · 5shot",
                       "coco-moji · tiny-teacher (concept-seen) · 1shot", "coco-moji · tiny-teacher (strict) · 1shot",
                       "coco-moji · tiny-teacher (strict) · 5shot"]
    with (site / "overview.csv").open() as handle:
        table = list(csv.reader(handle))
    assert table[0] == page.headers
    assert table[1:] == page.rows
    overview = json.loads((site / "overview.json").read_text())
    assert [c["label"] for c in overview["columns"]] == columns
    assert [r["method"] for r in overview["rows"]] == [r[0] for r in page.rows] == ["laso", "protonet", "wordvec-zeroshot"]
    # each backbone is summarised and ranked on its own: the numbers are those of its run alone
    for key, prefix in (("cnn", "coco-moji · small_cnn"), ("strict", "coco-moji · tiny-teacher (strict)")):
        data = summarise([runs[key]], n_boot=N_BOOT)
        for row in data.cells.itertuples(index=False):
            cell = next(r for r in overview["rows"] if r["method"] == row.method)["cells"][f"{prefix} · {row.setting}"]
            assert cell["map"] == pytest.approx(row.map, abs=1e-12) and cell["rank"] == row.rank
            assert cell["mark"] == row.mark
    laso = next(r for r in overview["rows"] if r["method"] == "laso")["cells"]
    protonet = next(r for r in overview["rows"] if r["method"] == "protonet")["cells"]
    assert laso["coco-moji · small_cnn · 1shot"]["rank"] == 1 and protonet["coco-moji · small_cnn · 1shot"]["rank"] == 2
    assert protonet["coco-moji · tiny-teacher (strict) · 1shot"]["rank"] == 1
    assert laso["coco-moji · tiny-teacher (strict) · 1shot"]["text"].endswith("*]")
    html = (site / "index.html").read_text()
    for value in ("small_cnn", "tiny-teacher (concept-seen)", "tiny-teacher (strict)", "concept-seen", "strict", "0shot"):
        assert 'class="mlfsic-filter" name="' in html and f'value="{value}"' in html


def test_costs_equal_a_computation_from_the_records(runs, site):
    costs = pd.read_csv(site / "costs.csv")
    assert len(costs) == (3 + 2 + 2) + 2 + 4  # cnn: 0shot x1 + 1/5shot x2; seen: 2; strict: 2 x 2
    for key, num_gpus in (("cnn", 0.0), ("seen", 0.5), ("strict", 0.0)):
        records = pd.read_parquet(runs[key] / "records.parquet")
        info = json.loads((runs[key] / "run.json").read_text())
        ratio = info["evaluate_chunk_s"]["cpu"] / info["evaluate_chunk_s"]["wall"]
        for (method, setting), rows in records.groupby(["method", "setting"]):
            fit = sum(info["fit_seconds"][f"{method}/seed{s}"] for s in sorted(rows["seed"].unique()))
            assert fit == pytest.approx(rows.groupby("seed")["fit_s"].first().sum())
            predict = rows["predict_s"].sum()
            got = costs[(costs["backbone_id"] == info["backbone"]["id"]) & (costs["method"] == method)
                        & (costs["setting"] == setting)]
            assert len(got) == 1
            got = got.iloc[0]
            assert got["n_episodes"] == len(rows) and got["n_fits"] == rows["seed"].nunique()
            assert got["fit_s"] == pytest.approx(fit, rel=1e-12)
            assert got["predict_s"] == pytest.approx(predict, rel=1e-12)
            assert got["episodes_per_s"] == pytest.approx(len(rows) / predict, rel=1e-12)
            assert got["predict_cpu_s"] == pytest.approx(predict * ratio, rel=1e-12)
            assert got["gpu_s"] == pytest.approx((fit + predict) * num_gpus, rel=1e-12, abs=0.0)
    page = (site / "benchmarks" / "coco-moji-small-cnn.html").read_text()
    assert 'id="mlfsic-costs"' in page and "0 on a CPU run" in page and "evaluate_chunk_s" in page
    assert "GPU-s 0 (CPU run)" in (site / "index.html").read_text()


def test_every_internal_link_resolves_and_plotly_js_exists_once(site):
    pages = sorted(site.rglob("*.html"))
    assert {p.relative_to(site).as_posix() for p in pages} == {
        "index.html", "benchmarks/coco-moji-small-cnn.html", "benchmarks/coco-moji-tiny-teacher-concept-seen.html",
        "benchmarks/coco-moji-tiny-teacher-strict.html", "methods/laso.html", "methods/protonet.html",
        "methods/wordvec-zeroshot.html"}
    scripts = [p for p in site.rglob("*.js")]
    assert [p.relative_to(site).as_posix() for p in scripts] == ["assets/plotly.min.js"]
    assert scripts[0].stat().st_size > 1_000_000
    n_links = 0
    for page in pages:
        text = page.read_text()
        assert "plotly.js v" not in text and len(text) < 300_000, page  # plotly.js is never inlined
        for link in _parse(page).links:
            if re.match(r"https?://", link):
                continue
            target = (page.parent / link.split("#")[0]).resolve()
            assert target.is_file(), (page, link)
            n_links += 1
        if page.parent.name == "benchmarks":
            assert '<script src="../assets/plotly.min.js"' in text and "Plotly.newPlot" in text
            for table in ("results", "ranks", "costs"):
                assert f'href="{page.stem}.{table}.csv"' in text and f'href="{page.stem}.{table}.json"' in text
    assert n_links > 30
    card = (site / "methods" / "laso.html").read_text()
    assert "Alfassy et al." in card and "https://github.com/leokarlin/LaSO" in card
    assert "fit_receives" in card and "base split 600 images, 42 labels" in card and "c" * 64 in card
    assert "0123456789abcdef0123456789abcdef01234567" in card and "tiny-teacher" in card


def test_rebuild_is_byte_identical(runs, site, tmp_path):
    again = tmp_path / "again"
    build_site([runs["cnn"], runs["suite"]], again, n_boot=N_BOOT)
    first = sorted(p.relative_to(site) for p in site.rglob("*") if p.is_file())
    assert first == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for name in first:
        assert (site / name).read_bytes() == (again / name).read_bytes(), name
    # Rebuilt into the same folder from fewer runs: the pages of benchmarks no longer there are gone.
    written = build_site([runs["cnn"]], again, n_boot=N_BOOT)
    pages = {str(p.relative_to(again)) for p in (again / "benchmarks").glob("*")}
    assert pages == {name for name in written if name.startswith("benchmarks/")}
    assert len(pages) < len([name for name in first if str(name).startswith("benchmarks/")])


def test_cli_writes_a_suite_site_and_refuses_a_dir_that_is_neither(runs, tmp_path, capsys):
    from mlfsic.harness.cli import main

    assert main(["leaderboard", str(runs["suite"])]) == 0
    printed = capsys.readouterr().out
    assert str(runs["suite"] / "site" / "index.html") in printed and "# mlfsic leaderboard" in printed
    for name in ("index.html", "leaderboard.md", "leaderboard.csv", "leaderboard.html", "assets/plotly.min.js"):
        assert (runs["suite"] / "site" / name).is_file(), name
    (tmp_path / "junk").mkdir()
    assert main(["leaderboard", str(runs["cnn"]), str(tmp_path / "junk")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"{tmp_path / 'junk'}: neither a run dir" in error
    with pytest.raises(MlfsicError, match="neither a run dir"):
        build_site([tmp_path / "missing"], tmp_path / "out")
