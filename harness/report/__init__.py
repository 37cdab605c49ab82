"""The reporting wing: ``leaderboard.{csv,md,html}`` from one or more run dirs (docs/architecture.md §4.1 ``mlfsic
leaderboard``, 10). Only the CLI enters it.

    stats       load run dirs, merge them, group cells, summarise (means, intervals, paired tests, ranks)
    intervals   mean_ci, paired_bootstrap, ranks_with_ties
    reference   paper-reported numbers (``configs/reference/*.yaml``)
    tables      csv and markdown
    page        the self-contained HTML page

``build_leaderboard`` writes the three files atomically. Every output is a pure function of the inputs
(sorted tables, fixed bootstrap seed, no build timestamp), so rebuilding gives byte-identical files.
"""

from __future__ import annotations

from pathlib import Path

from mlfsic.harness.io import write_text_atomic
from mlfsic.harness.report.page import render_page
from mlfsic.harness.report.reference import load_reported
from mlfsic.harness.report.stats import LeaderboardData, summarise
from mlfsic.harness.report.tables import leaderboard_csv, leaderboard_markdown

__all__ = ["LeaderboardData", "build_leaderboard", "load_reported", "summarise"]


def build_leaderboard(
    run_dirs: list[Path], out_dir: Path, reference_dir: Path | None = None, n_boot: int = 10000, seed: int = 0,
    progress: bool = False,
) -> dict[str, Path]:
    """Write leaderboard.csv, leaderboard.md and leaderboard.html into ``out_dir``; return their paths.

    ``reference_dir`` holds the reported-number YAML files (default: the packaged configs/reference).
    """
    data = summarise([Path(d) for d in run_dirs], load_reported(reference_dir), n_boot=n_boot, seed=seed,
                     progress=progress)
    out_dir = Path(out_dir)
    paths = {"csv": out_dir / "leaderboard.csv", "md": out_dir / "leaderboard.md", "html": out_dir / "leaderboard.html"}
    write_text_atomic(paths["csv"], leaderboard_csv(data))
    write_text_atomic(paths["md"], leaderboard_markdown(data))
    write_text_atomic(paths["html"], render_page(data))
    return paths
