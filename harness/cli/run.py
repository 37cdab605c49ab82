"""``mlfsic run [HYDRA OVERRIDES...]``: run (or resume) a sweep, print its leaderboard and run dir.

``mlfsic run +suite=NAME [OVERRIDES...]``: run (or resume) every sweep of a suite as one job
(``harness.sweep.suite``); each member's leaderboard goes into its run dir, the suite's leaderboard into the
suite dir and its site (``report.site``: overview pivot, per-benchmark pages, costs, method cards) into
``<suite dir>/site``.

Exit code 1 when a cell failed (the others are kept and the board shows them), 0 otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mlfsic.harness.report.leaderboard import build_leaderboard
from mlfsic.harness.report.site import build_site
from mlfsic.harness.sweep import runner  # looked up at call time, so tests can stand in for the sweep
from mlfsic.harness.sweep.load import load_sweep
from mlfsic.harness.sweep.suite import load_suite, run_suite, split_suite_override


def run_command(overrides: list[str]) -> int:
    suite_name, overrides = split_suite_override(list(overrides))
    if suite_name is not None:
        return _run_suite(suite_name, overrides)
    sweep = load_sweep(overrides)  # every key validated here, before Ray starts or anything is written
    outcome = runner.run_sweep(sweep)  # with against=: checked against the reference before any work
    paths = build_leaderboard([outcome.run_path], outcome.run_path, against=sweep.against)
    print(Path(paths["md"]).read_text())
    _print_counts(outcome.counts)
    _print_failures(outcome.failures)
    print(outcome.run_path)
    return 1 if outcome.failures else 0


def _run_suite(name: str, overrides: list[str]) -> int:
    suite = load_suite(name, overrides)  # every member validated before Ray starts or anything is written
    outcomes = run_suite(suite)
    for member, outcome in zip(suite.members, outcomes):
        build_leaderboard([outcome.run_path], outcome.run_path, against=member.sweep.against)
    paths = build_leaderboard([outcome.run_path for outcome in outcomes], suite.suite_dir)
    site = build_site([suite.suite_dir], suite.suite_dir / "site")
    print(Path(paths["md"]).read_text())
    totals = {key: sum(o.counts.get(key, 0) for o in outcomes) for key in outcomes[0].counts}
    _print_counts(totals)
    for outcome in outcomes:
        _print_failures(outcome.failures)
    for member, outcome in zip(suite.members, outcomes):
        print(f"{member.name}: {outcome.run_path}", file=sys.stderr)
    print(f"site: {site['index.html']}", file=sys.stderr)
    print(suite.suite_dir)
    return 1 if any(outcome.failures for outcome in outcomes) else 0


def _print_counts(counts: dict[str, int]) -> None:
    print(f"chunks: {counts['chunks_total']} planned, {counts['chunks_skipped']} already done, "
          f"{counts['chunks_submitted']} computed; fits: {counts['fits_trained']} trained, "
          f"{counts['fits_cached']} from checkpoints", file=sys.stderr)


def _print_failures(failures: list[dict]) -> None:
    for failure in failures:
        print(f"FAILED {failure['method']} {failure['setting']} seed{failure['seed']}: {failure['error']}", file=sys.stderr)
