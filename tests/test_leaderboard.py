"""Leaderboard statistics, merging and files, on run dirs made by a small generator (below).

Means, CIs and the paired bootstrap are checked against a hand computation with scipy/numpy; rebuilds
must be byte-identical; rows of different episode sets must never be paired.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mlfsic.harness.cli import main
from mlfsic.harness.config import compose_config, to_container
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.report.leaderboard import build_leaderboard
from mlfsic.harness.report.papers import load_reported
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
    features: dict[str, str] | None = None,
    seed_offsets: dict[str, dict[int, float]] | None = None,
    only: dict[str, tuple[str, ...]] | None = None,
    noise: float = 0.05,
    run_info: dict | None = None,
) -> Path:
    """Per-label AP ~ method level + label offset + episode difficulty + noise; mAP = mean of the label APs.

    ``features``: protocol/backbone_id/embedding_id columns for the records (None: a run made before
    records had them). ``seed_offsets[method][seed]`` adds a per-seed level (a seed effect); ``only[method]``
    restricts a method to some settings (e.g. a zero-shot method). ``run_info``: run.json fields to set
    (status, failures, planned_cells, invocations, ...; by default one failed cell of a method "broken").
    """
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
                    if only and method in only and setting not in only[method]:
                        continue
                    level = methods[method] + ((seed_offsets or {}).get(method) or {}).get(seed, 0.0)
                    for episode in range(n_episodes):
                        ap = np.clip(level + difficulty[episode] + rng.normal(0.0, noise, size=len(LABELS))
                                     + np.linspace(-0.1, 0.1, len(LABELS)), 0.0, 1.0)
                        records.append({**(features or {}),
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
        **(run_info or {}),
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
    assert set(first) == {"csv", "md", "html", "missing"}  # its failed cell makes it incomplete
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
    run_b = make_run_dir(tmp_path, "run-b", {"gamma": 0.9}, settings=("1shot",), protocol="rest-of-pool", rng_seed=5)
    data = summarise([run_a, run_b], n_boot=N_BOOT)
    alpha, beta, gamma = (_ours(data, m) for m in ("alpha", "beta", "gamma"))
    assert alpha["group"] == beta["group"] != gamma["group"]
    assert gamma["group"] == group_tag(tuple(episode_set_id("coco-moji", "1shot", s, "rest-of-pool") for s in (0, 1)))
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


# ---------------------------------------------------------------- issue 13: seeds, comparable ranks, undefined metrics

FIVE_SEEDS = (0, 1, 2, 3, 4)
COMMON_SEED_EFFECT = {0: 0.10, 1: -0.10, 2: 0.05, 3: -0.05, 4: 0.0}
BETA_VS_ALPHA = {0: 0.06, 1: -0.10, 2: 0.04, 3: -0.08, 4: 0.02}  # mean -0.012, but it swings from seed to seed


def _seed_effect_run(root: Path, run_id: str, strong: bool) -> Path:
    offsets = {"alpha": dict(COMMON_SEED_EFFECT),
               "beta": {s: COMMON_SEED_EFFECT[s] + BETA_VS_ALPHA[s] for s in FIVE_SEEDS}} if strong else None
    return make_run_dir(root, run_id, {"alpha": 0.62, "beta": 0.62}, settings=("1shot",), seeds=FIVE_SEEDS,
                        n_episodes=100, seed_offsets=offsets)


def _by_seed(records: pd.DataFrame, method: str) -> list[np.ndarray]:
    rows = records[records["method"] == method].sort_values(["episode_set_id", "episode"])
    return [group["map"].to_numpy() for _, group in rows.groupby("episode_set_id", sort=True)]


def _loop_half_width(by_seed: list[np.ndarray], n_boot: int = 3000, seed: int = 7) -> float:
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(n_boot):
        drawn = [by_seed[s][rng.integers(0, by_seed[s].size, size=by_seed[s].size)]
                 for s in rng.integers(0, len(by_seed), size=len(by_seed))]
        means.append(np.concatenate(drawn).mean())
    low, high = np.percentile(means, [2.5, 97.5])
    return (high - low) / 2


def test_a_strong_seed_effect_widens_the_interval_and_decides_the_marks(tmp_path):
    from mlfsic.harness.report.intervals import paired_bootstrap

    stormy = _seed_effect_run(tmp_path, "stormy", strong=True)
    calm = _seed_effect_run(tmp_path, "calm", strong=False)
    widths = {}
    for run in (stormy, calm):
        data = summarise([run], n_boot=N_BOOT)
        records = pd.read_parquet(run / "records.parquet")
        alpha = _ours(data, "alpha")
        assert alpha["interval"] == "seeds+episodes" and alpha["n_seeds"] == 5
        values = records[records["method"] == "alpha"]["map"].to_numpy()
        naive = stats.t.ppf(0.975, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size)
        # the reported half-width is the seed-then-episode bootstrap's, checked against a plain loop
        assert alpha["map_ci95"] == pytest.approx(_loop_half_width(_by_seed(records, "alpha")), rel=0.12)
        widths[run.name] = (alpha["map_ci95"], naive)
        if run is stormy:
            a = np.concatenate(_by_seed(records, "alpha"))
            b = np.concatenate(_by_seed(records, "beta"))
            worse, better = (b, a) if a.mean() > b.mean() else (a, b)
            episode_level = paired_bootstrap(worse, better, n_boot=N_BOOT)
            assert not episode_level["ci_low"] <= 0 <= episode_level["ci_high"]  # naive pairing: significant
            loser = _ours(data, "beta" if a.mean() > b.mean() else "alpha")
            assert loser["diff_ci_low"] <= 0 <= loser["diff_ci_high"]  # across seeds: not
            assert loser["mark"] == "=" and loser["rank"] == 1
    (seed_stormy, naive_stormy), (seed_calm, naive_calm) = widths["stormy"], widths["calm"]
    assert seed_stormy > 4 * naive_stormy and seed_stormy > 4 * seed_calm
    assert seed_calm < 2.5 * naive_calm
    assert naive_stormy < 2 * naive_calm  # the naive interval barely notices the seed effect


def test_fewer_than_three_seeds_are_marked_episode_level_only(tmp_path):
    run = make_run_dir(tmp_path / "runs", "run-a", {"alpha": 0.7, "beta": 0.6}, settings=("1shot",))
    paths = build_leaderboard([run], tmp_path / "out", n_boot=N_BOOT)
    table = pd.read_csv(paths["csv"], keep_default_na=False)
    assert set(table["interval"]) == {"episodes"}
    assert "Intervals are episode-level only: 2 seeds" in paths["md"].read_text()
    assert ">episodes only<" in paths["html"].read_text()
    run3 = make_run_dir(tmp_path / "runs", "run-b", {"alpha": 0.7, "beta": 0.6}, settings=("1shot",), seeds=(0, 1, 2))
    paths = build_leaderboard([run3], tmp_path / "out3", n_boot=N_BOOT)
    assert set(pd.read_csv(paths["csv"], keep_default_na=False)["interval"]) == {"seeds+episodes"}
    assert "hierarchical bootstrap over the 3 seeds" in paths["md"].read_text()


def test_average_ranks_compare_like_with_like(tmp_path):
    only = {"zs": ("0shot",), "alpha": ("1shot", "5shot"), "beta": ("1shot", "5shot")}
    run = make_run_dir(tmp_path / "runs", "run-a", {"chance": 0.3, "zs": 0.5, "alpha": 0.8, "beta": 0.6},
                       settings=("0shot", "1shot", "5shot"), only=only)
    paths = build_leaderboard([run], tmp_path / "out", n_boot=N_BOOT)
    data = summarise([run], n_boot=N_BOOT)
    ranks = data.average_ranks
    few_shot = ranks[ranks["cells"] == "coco-moji/1shot, coco-moji/5shot"]
    zero_shot = ranks[ranks["cells"] == "coco-moji/0shot"]
    assert sorted(few_shot["method"]) == ["alpha", "beta", "chance"] and set(few_shot["n_cells"]) == {2}
    assert sorted(zero_shot["method"]) == ["chance", "zs"] and set(zero_shot["n_cells"]) == {1}
    assert len(ranks) == 5  # chance is averaged within each family, never across them
    expected = {m: np.mean([_ours(data, m, s)["rank"] for s in ("1shot", "5shot")])
                for m in ("alpha", "beta", "chance")}
    assert dict(zip(few_shot["method"], few_shot["avg_rank"])) == pytest.approx(expected)
    assert dict(zip(zero_shot["method"], zero_shot["avg_rank"])) == {"zs": 1.0, "chance": 2.0}
    assert few_shot["family"].iloc[0] == 1 and zero_shot["family"].iloc[0] == 2  # more cells first
    table = pd.read_csv(paths["csv"], keep_default_na=False)
    chance = table[table["method"] == "chance"].set_index("setting")["avg_rank"]
    assert chance["0shot"] == pytest.approx(2.0) and chance["1shot"] == pytest.approx(expected["chance"])
    md = paths["md"].read_text()
    assert "### Family 1: coco-moji/1shot, coco-moji/5shot" in md and "### Family 2: coco-moji/0shot" in md
    assert 'id="mlfsic-average-rank-2"' in paths["html"].read_text()


def test_f1_at_k_is_undefined_when_k_reaches_the_episode_labels(tmp_path):
    run = make_run_dir(tmp_path / "runs", "run-a", {"alpha": 0.7, "beta": 0.6}, settings=("1shot",))
    frame = pd.read_parquet(run / "records.parquet")
    frame.loc[frame["episode"] < 3, "n_labels"] = 3  # F1@3 predicts every label on these episodes
    frame.to_parquet(run / "records.parquet", index=False)
    paths = build_leaderboard([run], tmp_path / "out", n_boot=N_BOOT)
    data = summarise([run], n_boot=N_BOOT)
    for method in ("alpha", "beta"):
        row = _ours(data, method)
        assert math.isnan(row["f1_5"])  # 4 labels: top-5 is every label, on every episode
        rows = frame[(frame["method"] == method) & (frame["episode"] >= 3)]
        assert row["f1_3"] == pytest.approx(rows["f1_3"].mean(), abs=1e-12)
    table = pd.read_csv(paths["csv"], keep_default_na=False)
    assert set(table["f1_5"]) == {""}
    md = paths["md"].read_text()
    assert "| n/a |" in md and "F1@5 is missing: undefined on every episode (k = 5 >= the episode's 3-4 labels" in md
    assert "F1@3 is the mean over the 18 of 24 episodes where it is defined" in md
    assert ">n/a<" in paths["html"].read_text()


def test_an_episode_without_positives_is_counted_and_left_out(tmp_path):
    run = make_run_dir(tmp_path / "runs", "run-a", {"alpha": 0.7, "beta": 0.6}, settings=("1shot",), seeds=(0, 1, 2))
    frame = pd.read_parquet(run / "records.parquet")
    seed0 = frame["seed"] == 0
    no_positive = seed0 & (frame["episode"] == 3)
    frame.loc[no_positive, ["map"]] = np.nan
    frame.loc[no_positive, ["f1_3", "f1_5"]] = 0.0  # what f1_at_k returns without a positive
    frame.to_parquet(run / "records.parquet", index=False)
    labels = pd.read_parquet(run / "label_ap.parquet")
    labels.loc[(labels["seed"] == 0) & (labels["episode"] == 3), "ap"] = np.nan
    labels.to_parquet(run / "label_ap.parquet", index=False)
    paths = build_leaderboard([run], tmp_path / "out", n_boot=N_BOOT)
    data = summarise([run], n_boot=N_BOOT)
    for method in ("alpha", "beta"):
        row = _ours(data, method)
        rows = frame[frame["method"] == method]
        assert row["n_episodes"] == 36 and row["n_map_undefined"] == 1 and row["n_paired"] == 35
        assert row["map"] == pytest.approx(rows["map"].dropna().mean(), abs=1e-12)
        assert row["f1_3"] == pytest.approx(rows.loc[rows["map"].notna(), "f1_3"].mean(), abs=1e-12)
        assert np.isfinite(row["map_ci95"])
    assert "alpha: 1 of 36 episodes have no positive label (mAP undefined)" in paths["md"].read_text()
    assert set(pd.read_csv(paths["csv"], keep_default_na=False)["n_map_undefined"]) == {1}


def test_runs_on_different_features_are_never_paired_or_ranked_together(tmp_path):
    features = {"protocol": "episodic-v1", "embedding_id": "minilm-0123"}
    run_a = make_run_dir(tmp_path, "run-a", {"alpha": 0.7, "beta": 0.6}, settings=("1shot",),
                         features={**features, "backbone_id": "smallcnn-aaaa"})
    run_b = make_run_dir(tmp_path, "run-b", {"alpha": 0.5, "beta": 0.65}, settings=("1shot",), rng_seed=3,
                         features={**features, "backbone_id": "resnet50-bbbb"})
    data = summarise([run_a, run_b], n_boot=N_BOOT)  # same methods, same episodes: no "disagrees" error
    ours = data.cells[data.cells["kind"] == "ours"]
    assert len(ours) == 4 and ours["group"].nunique() == 2
    for backbone, best in (("smallcnn-aaaa", "alpha"), ("resnet50-bbbb", "beta")):
        rows = ours[ours["backbone_id"] == backbone]
        assert rows["group"].nunique() == 1 and set(rows["best"]) == {best}
        tag = rows["group"].iloc[0]
        assert data.group_features[tag] == {**features, "backbone_id": backbone}
        assert tag == group_tag(tuple(episode_set_id("coco-moji", "1shot", s) for s in (0, 1)),
                                backbone_id=backbone, **features)
    assert data.average_ranks["family"].nunique() == 2  # one family per feature set
    assert any("2 groups on different features or episode sets" in note for note in data.notes)
    assert not any("unknown" in note for note in data.notes)
    old = make_run_dir(tmp_path, "run-old", {"alpha": 0.7}, settings=("1shot",))
    mixed = summarise([run_a, old], n_boot=N_BOOT)
    assert set(mixed.cells["backbone_id"]) == {"smallcnn-aaaa", "unknown"}
    assert any("read as 'unknown'" in note for note in mixed.notes)


# ---------------------------------------------------------------- incomplete runs

def _drop_cell(run: Path, method: str, setting: str, seed: int) -> None:
    """Leave a cell out of a run dir's tables, as an interrupted or failed sweep does."""
    for name in ("records.parquet", "label_ap.parquet"):
        table = pd.read_parquet(run / name)
        keep = ~((table["method"] == method) & (table["setting"] == setting) & (table["seed"] == seed))
        table[keep].to_parquet(run / name, index=False)


def test_a_run_stopped_before_its_first_records_is_an_incomplete_board(tmp_path, capsys):
    """A driver killed on its first invocation leaves run.json (status running) and no records.parquet: the
    board is INCOMPLETE with every planned cell missing and the resume command, not a missing-file error."""
    planned = sorted(f"{m}__1shot__seed0" for m in ("alpha", "beta"))
    run = make_run_dir(tmp_path / "runs", "run-b", {"alpha": 0.7, "beta": 0.5}, run_info={
        "status": "running", "planned_cells": planned, "dataset": {"name": "coco-moji"}, "failures": [],
        "invocations": [{"started": "2025-01-02T03:04:05+00:00", "argv": ["run", "method=[alpha,beta]"],
                         "cwd": "/work"}]})
    (run / "records.parquet").unlink()
    (run / "label_ap.parquet").unlink()
    assert main(["leaderboard", str(run), f"out={tmp_path / 'board'}"]) == 0
    md = (tmp_path / "board" / "leaderboard.md").read_text()
    assert md.startswith("# mlfsic leaderboard (INCOMPLETE)\n") and "2 of 2 planned cells missing" in md
    assert "Resume: `cd /work && mlfsic run 'method=[alpha,beta]'`" in md
    assert "resume: cd /work && mlfsic run" in capsys.readouterr().err


def test_an_interrupted_run_is_marked_incomplete_with_its_missing_cells_and_resume_command(tmp_path, capsys):
    planned = sorted(f"{m}__{s}__seed{k}" for m in ("alpha", "beta", "gamma") for s in ("1shot", "5shot")
                     for k in (0, 1))
    argv = ["run", "method=[alpha,beta,gamma]", "seeds=[0,1]"]
    run = make_run_dir(tmp_path / "runs", "run-a", {"alpha": 0.7, "beta": 0.5, "gamma": 0.4}, run_info={
        "status": "interrupted", "planned_cells": planned, "dataset": {"name": "coco-moji"},
        "failures": [{"method": "gamma", "dataset": "coco-moji", "setting": "1shot", "seed": 0,
                      "error": "ValueError: boom | bad"}],
        "invocations": [{"started": "2025-01-02T03:04:05+00:00", "argv": argv, "cwd": "/work/my project"}]})
    _drop_cell(run, "beta", "5shot", 1)  # not finished when interrupted
    _drop_cell(run, "gamma", "1shot", 0)  # failed
    first = build_leaderboard([run], tmp_path / "one", n_boot=N_BOOT)
    second = build_leaderboard([run], tmp_path / "two", n_boot=N_BOOT)
    for kind in first:
        assert first[kind].read_bytes() == second[kind].read_bytes(), kind
    resume = "cd '/work/my project' && mlfsic run 'method=[alpha,beta,gamma]' 'seeds=[0,1]'"
    md = first["md"].read_text()
    assert md.startswith("# mlfsic leaderboard (INCOMPLETE)\n")
    assert "## INCOMPLETE: run `run-a`" in md
    assert "INCOMPLETE (status interrupted): 2 of 12 planned cells missing (1 failed)" in md
    assert "| beta | coco-moji | 5shot | 1 | not finished: the run was interrupted |" in md
    assert "| gamma | coco-moji | 1shot | 0 | failed: ValueError: boom \\| bad |" in md
    assert f"Resume: `{resume}`" in md
    assert ("episode sets, 1 failures, INCOMPLETE (status interrupted): 2 of 12 planned cells missing (1 failed)"
            in md)  # the Runs line: the failure count and what is missing
    page = first["html"].read_text()
    assert "<h1>mlfsic leaderboard (INCOMPLETE)</h1>" in page and "INCOMPLETE: run run-a" in page
    assert "not finished: the run was interrupted" in page and "failed: ValueError: boom | bad" in page
    assert f"<code>{html.escape(resume)}</code>" in page
    missing = pd.read_csv(first["missing"])
    assert list(zip(missing["method"], missing["setting"], missing["seed"])) == [("beta", "5shot", 1),
                                                                                 ("gamma", "1shot", 0)]
    assert set(missing["resume"]) == {resume} and set(missing["status"]) == {"interrupted"}
    # the CLI says so on stderr too, and its site marks the benchmark page and the overview
    assert main(["leaderboard", str(run), f"out={tmp_path / 'site'}"]) == 0
    err = capsys.readouterr().err
    assert ("mlfsic: run run-a: INCOMPLETE (status interrupted): 2 of 12 planned cells missing (1 failed); "
            f"resume: {resume}") in err
    assert "<h1>mlfsic leaderboard (INCOMPLETE)</h1>" in (tmp_path / "site" / "index.html").read_text()
    benchmark_page = next((tmp_path / "site" / "benchmarks").glob("*.html")).read_text()
    assert "INCOMPLETE: run run-a" in benchmark_page and "not finished: the run was interrupted" in benchmark_page

    # resumed to the end: complete, no mark, no stale list
    whole = make_run_dir(tmp_path / "resumed", "run-a", {"alpha": 0.7, "beta": 0.5, "gamma": 0.4}, run_info={
        "status": "complete", "planned_cells": planned, "failures": []})
    paths = build_leaderboard([whole], tmp_path / "one", n_boot=N_BOOT)
    assert set(paths) == {"csv", "md", "html"} and not (tmp_path / "one" / "missing_cells.csv").exists()
    page = paths["html"].read_text()  # (the inlined plotly.js says FRAMEBUFFER_INCOMPLETE...)
    assert "INCOMPLETE" not in paths["md"].read_text()
    assert "mlfsic-incomplete" not in page and "(INCOMPLETE)" not in page
    assert "episode sets, 0 failures\n" in paths["md"].read_text()


def test_a_complete_run_has_no_incomplete_mark(tmp_path):
    run = make_run_dir(tmp_path / "runs", "run-a", {"alpha": 0.7, "beta": 0.5},
                       run_info={"status": "complete", "failures": []})
    paths = build_leaderboard([run], tmp_path / "out", n_boot=N_BOOT)
    for kind in ("md", "csv"):
        assert "INCOMPLETE" not in paths[kind].read_text(), kind
    page = paths["html"].read_text()  # (the inlined plotly.js says FRAMEBUFFER_INCOMPLETE...)
    assert "mlfsic-incomplete" not in page and "(INCOMPLETE)" not in page and "<h1>mlfsic leaderboard</h1>" in page
    assert paths["md"].read_text().startswith("# mlfsic leaderboard\n") and "missing" not in paths


def test_a_run_without_recorded_cells_or_command_gets_them_from_its_config(tmp_path):
    """A run made before run.json recorded planned cells and arguments: its methods x settings x seeds, each
    method on the settings it supports (wordvec-zeroshot: 0shot only), and overrides that compose to its config."""
    overrides = ["method=[protonet,wordvec-zeroshot]", "seeds=[0]", "n_episodes=12"]
    config = to_container(compose_config(overrides))
    methods = {name: {"method": name, "config": {}, "config_hash": name} for name in ("protonet", "wordvec-zeroshot")}
    run = make_run_dir(tmp_path / "runs", "run-a", {"protonet": 0.6, "wordvec-zeroshot": 0.3},
                       settings=("0shot", "1shot", "5shot"), seeds=(0,),
                       only={"wordvec-zeroshot": ("0shot",), "protonet": ("1shot", "5shot")},
                       run_info={"status": "interrupted", "failures": [], "config": config, "methods": methods})
    _drop_cell(run, "protonet", "5shot", 0)
    md = build_leaderboard([run], tmp_path / "out", n_boot=N_BOOT)["md"].read_text()
    assert "INCOMPLETE (status interrupted): 1 of 3 planned cells missing (0 failed)" in md
    assert "| protonet | coco-moji | 5shot | 0 | not finished: the run was interrupted |" in md
    assert "Resume: `mlfsic run 'method=[protonet,wordvec-zeroshot]' 'seeds=[0]' n_episodes=12`" in md
