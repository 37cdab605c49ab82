"""The reporting wing: ``leaderboard.{csv,md,html}`` from one or more run dirs (docs/architecture.md §4.1 ``mlfsic
leaderboard``, 10). Only the CLI enters it.

    stats       load run dirs, merge them, group cells, summarise (means, intervals, paired tests, ranks)
    against     a board against a reference run: its rows on our episode sets, sources, paired differences
    intervals   mean_ci, paired_bootstrap, ranks_with_ties
    papers      paper-reported numbers (``configs/reference/*.yaml``)
    tables      csv and markdown
    page        the HTML page (self-contained, or one page of the site)
    costs       fit / predict seconds, episodes/s, CPU- and GPU-seconds per cell
    site        the static site of run and suite dirs: overview, per-benchmark pages, method cards

``build_leaderboard`` writes the three files atomically. Every output is a pure function of the inputs
(sorted tables, fixed bootstrap seed, no build timestamp), so rebuilding gives byte-identical files.
A run that lacks cells (interrupted, failed: ``store.run_gaps``) marks the board INCOMPLETE (md, html) with
its missing cells and resume command, also written as ``missing_cells.csv`` beside leaderboard.csv.
"""

from __future__ import annotations

from pathlib import Path

from mlfsic.harness.io import write_text_atomic
from mlfsic.harness.report.against import comparisons_csv
from mlfsic.harness.report.page import render_page
from mlfsic.harness.report.papers import load_reported
from mlfsic.harness.report.stats import LeaderboardData, summarise
from mlfsic.harness.report.tables import leaderboard_csv, leaderboard_markdown, missing_cells_csv
from mlfsic.harness.sweep.store import RunGaps, run_gaps

__all__ = ["LeaderboardData", "build_leaderboard", "load_reported", "run_gaps_of", "summarise"]

MISSING_CELLS_CSV = "missing_cells.csv"


def run_gaps_of(run_dirs: list[Path]) -> list[RunGaps]:
    """``store.run_gaps`` of each run dir, sorted by run id, a run given twice once."""
    gaps = {g.run_id: g for g in (run_gaps(Path(d)) for d in run_dirs)}
    return [gaps[key] for key in sorted(gaps)]


def build_leaderboard(
    run_dirs: list[Path], out_dir: Path, reference_dir: Path | None = None, n_boot: int = 10000, seed: int = 0,
    progress: bool = False, against: Path | None = None, formats: tuple[str, ...] = ("csv", "md", "html"),
) -> dict[str, Path]:
    """Write leaderboard.{csv,md,html} (those of ``formats``) into ``out_dir``; return their paths.

    ``reference_dir`` holds the reported-number YAML files (default: the packaged configs/reference).
    ``against``: a reference run dir ranked together with ``run_dirs`` on their episode sets
    (``report.against``); then against.csv holds the paired differences to its methods too.
    A run of ``run_dirs`` that lacks cells marks the md and html INCOMPLETE; with "csv" in ``formats``,
    ``missing_cells.csv`` lists the missing cells (removed when every run is complete).
    """
    data = summarise([Path(d) for d in run_dirs], load_reported(reference_dir), n_boot=n_boot, seed=seed,
                     progress=progress, against=Path(against) if against is not None else None)
    gaps = run_gaps_of([Path(d) for d in run_dirs])
    out_dir = Path(out_dir)
    writers = {"csv": leaderboard_csv, "md": lambda d: leaderboard_markdown(d, gaps),
               "html": lambda d: render_page(d, gaps=gaps)}
    paths = {}
    for kind in formats:
        paths[kind] = out_dir / f"leaderboard.{kind}"
        write_text_atomic(paths[kind], writers[kind](data))
    if "csv" in formats:
        if any(g.incomplete for g in gaps):
            paths["missing"] = out_dir / MISSING_CELLS_CSV
            write_text_atomic(paths["missing"], missing_cells_csv(gaps))
        else:  # a resumed run, now complete: no stale list
            (out_dir / MISSING_CELLS_CSV).unlink(missing_ok=True)
    if data.comparisons is not None:
        paths["against"] = out_dir / "against.csv"
        write_text_atomic(paths["against"], comparisons_csv(data.comparisons))
    return paths
