"""Benchmark (``make bench``, about 7 minutes on 2 cores): rerun the default sweep from nothing and check every
cell against the committed published run (results/published/leaderboard.csv).

On the machine that produced it (same hardware record and host) every mAP must agree to 1e-6; on another
machine every mAP must fall inside the published 95% interval of its cell (the pinned backbone makes the
features the same up to floating-point differences between CPUs).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mlfsic.harness.provenance import hardware
from mlfsic.harness.report.leaderboard import build_leaderboard
from mlfsic.harness.sweep.runner import run_sweep
from mlfsic.harness.sweep.load import load_sweep

pytestmark = pytest.mark.slow
PUBLISHED = Path(__file__).resolve().parents[1] / "results" / "published"


def test_default_sweep_reproduces_the_published_run(ray_session, tmp_path):
    reference = json.loads((PUBLISHED / "run.json").read_text())
    sweep = load_sweep([f"results_dir={tmp_path / 'results'}", "method=[" + ",".join(reference["methods"]) + "]"])
    outcome = run_sweep(sweep, progress=True)
    assert not outcome.failures
    build_leaderboard([outcome.run_path], outcome.run_path)
    key = ["setting", "method"]
    ours = pd.read_csv(PUBLISHED / "leaderboard.csv").query("kind == 'ours'").set_index(key)
    now = pd.read_csv(outcome.run_path / "leaderboard.csv").query("kind == 'ours'").set_index(key)
    assert sorted(now.index) == sorted(ours.index)
    same_machine = hardware() == reference["hardware"]
    for cell, row in ours.iterrows():
        got = float(now.loc[cell, "map"])
        print(f"{cell}: published {row['map']:.6f} ± {row['map_ci95']:.6f}, now {got:.6f}")
        if same_machine:
            assert got == pytest.approx(float(row["map"]), abs=1e-6), cell
        else:
            assert float(row["map_ci_low"]) <= got <= float(row["map_ci_high"]), cell
