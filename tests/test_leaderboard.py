"""Leaderboard statistics, merging and files, on run dirs made by a small generator (below).

Means, CIs and the paired bootstrap are checked against a hand computation with scipy/numpy; rebuilds
must be byte-identical; rows of different episode sets must never be paired.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.report import build_leaderboard
from mlfsic.harness.report.reference import load_reported
from mlfsic.harness.report.stats import group_tag, summarise

N_BOOT = 2000

# ---------------------------------------------------------------- fixture generator

LABELS = ("cat", "dog", "kite", "pizza")


def episode_set_id(dataset: str, setting: str, seed: int, protocol: str = "episodic-v1") -> str:
    return hashlib.sha256(f"{protocol}/{dataset}/{setting}/{seed}".encode()).hexdigest()


def make_run_dir(
    root: Path,
    run_id: str,
    methods: dict[str, float],
    settings: tuple[str, ...] = ("1shot", "5shot"),
    datasets: tuple[str, ...] = ("coco-moji",),
    seeds: tuple[int, ...] = (0, 1),
    n_episodes: int = 12,
    protocol: str = "episodic-v1",
    config_hash: dict[str, str] | None = None,
    rng_seed: int = 0,
) -> Path:
    """Per-label AP ~ method level + label offset + episode difficulty + noise; mAP = mean of the label APs."""
    rng = np.random.default_rng(rng_seed)
    run_dir = root / run_id
    run_dir.mkdir(parents=True)
    records, label_rows, sets = [], [], {}
    for dataset in datasets:
        for setting in settings:
            for seed in seeds:
                es = episode_set_id(dataset, setting, seed, protocol)
                sets[f"{dataset}/{setting}/seed{seed}"] = es
                difficulty = rng.normal(0.0, 0.08, size=n_episodes)
                for method in sorted(methods):
                    level = methods[method]
                    for episode in range(n_episodes):
                        ap = np.clip(level + difficulty[episode] + rng.normal(0.0, 0.05, size=len(LABELS))
                                     + np.linspace(-0.1, 0.1, len(LABELS)), 0.0, 1.0)
                        records.append({
                            "run_id": run_id, "method": method,
                            "method_config_hash": (config_hash or {}).get(method, hashlib.sha256(method.encode()).hexdigest()),
                            "dataset": dataset, "setting": setting, "k_shot": int(setting[0]), "seed": seed,
                            "episode_set_id": es, "episode": episode, "map": float(ap.mean()),
                            "f1_3": float(np.clip(ap.mean() - 0.2, 0, 1)), "f1_5": float(np.clip(ap.mean() - 0.25, 0, 1)),
                            "n_labels": len(LABELS), "n_query": 16, "fit_s": 1.0, "predict_s": 0.01, "status": "ok",
                        })
                        label_rows.extend({
                            "run_id": run_id, "method": method, "dataset": dataset, "setting": setting, "seed": seed,
                            "episode_set_id": es, "episode": episode, "label": label, "ap": float(value),
                        } for label, value in zip(LABELS, ap))
    pd.DataFrame(records).to_parquet(run_dir / "records.parquet", index=False)
    pd.DataFrame(label_rows).to_parquet(run_dir / "label_ap.parquet", index=False)
    info = {
        "run_id": run_id, "created": "2025-01-02T03:04:05+00:00", "config": {"n_episodes": n_episodes},
        "git": {"commit": "0123456789abcdef0123456789abcdef01234567", "dirty": False},
        "versions": {"numpy": np.__version__, "pandas": pd.__version__}, "hardware": {"cpu_count": 2},
        "episode_sets": sets, "failures": [{"method": "broken", "dataset": datasets[0], "setting": settings[0],
                                            "seed": 0, "error": "ValueError: boom"}],
    }
    (run_dir / "run.json").write_text(json.dumps(info, indent=1))
    return run_dir


# ---------------------------------------------------------------- tests


def _ours(data, method: str, setting: str = "1shot") -> pd.Series:
    cells = data.cells
    rows = cells[(cells["kind"] == "ours") & (cells["method"] == method) & (cells["setting"] == setting)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_means_cis_and_paired_bootstrap_match_hand_computation(tmp_path):
    run = make_run_dir(tmp_path, "run-a", {"alpha": 0.70, "beta": 0.69, "gamma": 0.45})
    data = summarise([run], n_boot=N_BOOT, seed=3)
    records = pd.read_parquet(run / "records.parquet")
    cell = records[records["setting"] == "1shot"]
    for method in ("alpha", "beta", "gamma"):
        values = cell[cell["method"] == method]["map"].to_numpy()
        row = _ours(data, method)
        assert row["map"] == pytest.approx(values.mean(), abs=1e-12)
        half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
        assert row["map_ci95"] == pytest.approx(half, rel=1e-10)
        assert row["f1_3"] == pytest.approx(cell[cell["method"] == method]["f1_3"].mean(), abs=1e-12)
        assert row["n_episodes"] == 24 and row["n_seeds"] == 2 and row["n_paired"] == 24

    def aligned(method: str) -> np.ndarray:
        rows = cell[cell["method"] == method].sort_values(["episode_set_id", "episode"])
        return rows["map"].to_numpy()

    best = max(("alpha", "beta", "gamma"), key=lambda m: aligned(m).mean())
    assert _ours(data, best)["rank"] == 1 and _ours(data, best)["mark"] == ""
    for method in ("alpha", "beta", "gamma"):
        if method == best:
            continue
        diff = aligned(method) - aligned(best)
        index = np.random.default_rng(3).integers(0, diff.size, size=(N_BOOT, diff.size))
        boot = diff[index].mean(axis=1)
        row = _ours(data, method)
        assert row["diff_vs_best"] == pytest.approx(diff.mean(), abs=1e-12)
        assert row["diff_ci_low"] == pytest.approx(np.percentile(boot, 2.5), abs=1e-12)
        assert row["diff_ci_high"] == pytest.approx(np.percentile(boot, 97.5), abs=1e-12)
        tied = np.percentile(boot, 2.5) <= 0 <= np.percentile(boot, 97.5)
        assert row["mark"] == ("=" if tied else "*")
    gamma = _ours(data, "gamma")
    assert gamma["mark"] == "*" and gamma["rank"] == 3
    ranks = dict(zip(data.average_ranks["method"], data.average_ranks["avg_rank"]))
    expected_gamma = np.mean([_ours(data, "gamma", s)["rank"] for s in ("1shot", "5shot")])
    assert ranks["gamma"] == pytest.approx(expected_gamma)


def test_rebuild_is_byte_identical_and_html_is_self_contained(tmp_path):
    run = make_run_dir(tmp_path / "runs", "run-a", {"alpha": 0.7, "beta": 0.5})
    first = build_leaderboard([run], tmp_path / "one", n_boot=N_BOOT)
    second = build_leaderboard([run], tmp_path / "two", n_boot=N_BOOT)
    assert set(first) == {"csv", "md", "html"}
    for kind in first:
        assert first[kind].read_bytes() == second[kind].read_bytes(), kind
    page = first["html"].read_text()
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, flags=re.IGNORECASE)
    assert not re.search(r"<link[^>]*\bhref\s*=", page, flags=re.IGNORECASE)
    assert page.count("<script") >= 3 and "Plotly.newPlot" in page
    for div_id in ("mlfsic-bar-coco-moji", "mlfsic-heatmap-coco-moji-1shot-", "mlfsic-results-table", "mlfsic-provenance"):
        assert div_id in page
    assert "0123456789abcdef0123456789abcdef01234567" in page and "2025-01-02T03:04:05+00:00" in page
    assert episode_set_id("coco-moji", "1shot", 0) in page
    assert not list((tmp_path / "one").glob(".*.tmp"))  # atomic writes leave no temp files
    md = first["md"].read_text()
    assert "## coco-moji / 1shot" in md and "FAILED broken" in md


def test_rows_from_different_episode_sets_are_never_paired(tmp_path):
    run_a = make_run_dir(tmp_path, "run-a", {"alpha": 0.7, "beta": 0.6}, settings=("1shot",))
    run_b = make_run_dir(tmp_path, "run-b", {"gamma": 0.9}, settings=("1shot",), protocol="fixed-support", rng_seed=5)
    data = summarise([run_a, run_b], n_boot=N_BOOT)
    alpha, beta, gamma = (_ours(data, m) for m in ("alpha", "beta", "gamma"))
    assert alpha["group"] == beta["group"] != gamma["group"]
    assert gamma["group"] == group_tag(tuple(episode_set_id("coco-moji", "1shot", s, "fixed-support") for s in (0, 1)))
    # gamma is far better but lives on other episode sets: alpha stays the best of its own group
    assert alpha["rank"] == 1 and alpha["best"] == "alpha" and beta["best"] == "alpha"
    assert gamma["rank"] == 1 and gamma["best"] == "gamma" and gamma["n_paired"] == 24
    assert sorted(data.groups) == sorted({alpha["group"], gamma["group"]})
    # a method that ran only one of the seeds has another episode-set group, so it is not paired either
    run_c = make_run_dir(tmp_path, "run-c", {"delta": 0.7}, settings=("1shot",), seeds=(0,), rng_seed=9)
    data = summarise([run_a, run_c], n_boot=N_BOOT)
    delta = _ours(data, "delta")
    assert delta["group"] != _ours(data, "alpha")["group"] and delta["n_paired"] == 12


def test_merging_runs_keeps_one_copy_and_refuses_disagreement(tmp_path):
    run_a = make_run_dir(tmp_path, "run-a", {"alpha": 0.7, "beta": 0.6})
    copy = tmp_path / "run-b"
    shutil.copytree(run_a, copy)
    for name in ("records.parquet", "label_ap.parquet"):
        frame = pd.read_parquet(copy / name)
        frame["run_id"] = "run-b"
        frame.to_parquet(copy / name, index=False)
    info = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps({**info, "run_id": "run-b"}))
    single = summarise([run_a], n_boot=N_BOOT)
    merged = summarise([copy, run_a], n_boot=N_BOOT)
    pd.testing.assert_frame_equal(single.cells, merged.cells)
    pd.testing.assert_frame_equal(single.label_ap, merged.label_ap)
    assert [r["run_id"] for r in merged.runs] == ["run-a", "run-b"]

    frame = pd.read_parquet(copy / "records.parquet")
    frame.loc[0, "map"] += 0.01
    frame.to_parquet(copy / "records.parquet", index=False)
    with pytest.raises(MlfsicError, match=r"disagrees with itself .* runs run-a and run-b"):
        summarise([run_a, copy], n_boot=N_BOOT)


def test_one_method_with_two_configs_is_shown_twice(tmp_path):
    run_a = make_run_dir(tmp_path, "run-a", {"alpha": 0.7}, config_hash={"alpha": "a" * 64})
    run_b = make_run_dir(tmp_path, "run-b", {"alpha": 0.6}, config_hash={"alpha": "b" * 64}, rng_seed=1)
    data = summarise([run_a, run_b], n_boot=N_BOOT)
    assert sorted(data.cells["method"].unique()) == ["alpha@aaaaaaaa", "alpha@bbbbbbbb"]
    assert sorted(data.label_ap["method"].unique()) == ["alpha@aaaaaaaa", "alpha@bbbbbbbb"]
    assert data.cells["n_episodes"].eq(24).all()


def test_reported_numbers_are_marked_and_never_ranked(tmp_path):
    run = make_run_dir(tmp_path / "runs", "run-a", {"alpha": 0.7, "beta": 0.6})
    refs = tmp_path / "refs"
    refs.mkdir()
    (refs / "papers.yaml").write_text(
        "entries:\n"
        "  - {method: PaperNet, dataset: coco-moji, setting: 1shot, map: 80.5, paper: 'Doe et al., X, 2020', table: 'Table 2'}\n"
        "  - {method: Elsewhere, dataset: voc, setting: 1shot, map: 50.0, paper: 'Doe', table: 'Table 3'}\n"
    )
    paths = build_leaderboard([run], tmp_path / "out", reference_dir=refs, n_boot=N_BOOT)
    table = pd.read_csv(paths["csv"], keep_default_na=False)
    reported = table[table["kind"] == "reported"]
    assert list(reported["method"]) == ["PaperNet (reported)"]  # voc is not on this leaderboard
    assert reported["map"].iloc[0] == pytest.approx(0.805) and reported["rank"].iloc[0] == ""
    assert "Doe et al., X, 2020, Table 2" in reported["citation"].iloc[0]
    ours = table[table["kind"] == "ours"]
    assert set(ours["best"]) == {"alpha"}  # the higher reported number does not become the best
    assert "PaperNet (reported)" in paths["md"].read_text() and "reported: Doe et al." in paths["html"].read_text()
    (refs / "bad.yaml").write_text("entries:\n  - {method: X, dataset: coco, setting: 1shot, paper: P, table: T}\n")
    with pytest.raises(MlfsicError, match=r"bad.yaml: entries\[0\]: missing field 'map'"):
        load_reported(refs)
    assert load_reported().columns.tolist()[:3] == ["kind", "dataset", "setting"]  # the shipped file parses


def test_bad_run_dirs_raise_one_line_errors(tmp_path):
    with pytest.raises(MlfsicError, match="missing .*run.json"):
        summarise([tmp_path / "nowhere"])
    run = make_run_dir(tmp_path, "run-a", {"alpha": 0.7})
    frame = pd.read_parquet(run / "records.parquet").drop(columns=["episode_set_id"])
    frame.to_parquet(run / "records.parquet", index=False)
    with pytest.raises(MlfsicError, match="records.parquet: missing column 'episode_set_id'"):
        summarise([run])


def test_a_run_without_successful_records_gives_an_empty_board(tmp_path):
    run = make_run_dir(tmp_path / "runs", "run-a", {"alpha": 0.7})
    for name in ("records.parquet", "label_ap.parquet"):
        pd.read_parquet(run / name).iloc[0:0].to_parquet(run / name, index=False)
    paths = build_leaderboard([run], tmp_path / "out", n_boot=N_BOOT)
    assert "No successful results." in paths["md"].read_text() and "FAILED broken" in paths["md"].read_text()
    assert "mlfsic-provenance" in paths["html"].read_text()
    assert paths["csv"].read_text().startswith("kind,dataset,setting")
