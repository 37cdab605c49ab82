"""``mlfsic run [HYDRA OVERRIDES...]``: run (or resume) a sweep, print its leaderboard and run dir.

Exit code 1 when a cell failed (the others are kept and the board shows them), 0 otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mlfsic.harness.report.leaderboard import build_leaderboard
from mlfsic.harness.sweep import runner  # looked up at call time, so tests can stand in for the sweep
from mlfsic.harness.sweep.load import load_sweep


def run_command(overrides: list[str]) -> int:
    sweep = load_sweep(overrides)  # every key validated here, before Ray starts or anything is written
    outcome = runner.run_sweep(sweep)  # with against=: checked against the reference before any work
    paths = build_leaderboard([outcome.run_path], outcome.run_path, against=sweep.against)
    print(Path(paths["md"]).read_text())
    counts = outcome.counts
    print(f"chunks: {counts['chunks_total']} planned, {counts['chunks_skipped']} already done, "
          f"{counts['chunks_submitted']} computed; fits: {counts['fits_trained']} trained, "
          f"{counts['fits_cached']} from checkpoints", file=sys.stderr)
    for failure in outcome.failures:
        print(f"FAILED {failure['method']} {failure['setting']} seed{failure['seed']}: {failure['error']}", file=sys.stderr)
    print(outcome.run_path)
    return 1 if outcome.failures else 0
