"""A leaderboard against a reference run (``mlfsic run ... against=published``; ``harness.sweep.against_run``).

The board of the union of the new run(s) and the reference holds the reference's rows only on the episode
sets the new run(s) used (``restrict_reference``: the settings and seeds the sweep asked for), so every
method of a cell shares the same episode sets and group, and new methods are ranked among the reference's
as usual (``stats``). Each row says where it comes from (``source``: ``now`` or ``reference``), and
``compare_to_reference`` adds, per cell, the paired difference of every new method against every
reference method over their shared episodes: mean of new - reference, its 95% interval and a p-value
(hierarchical seed-then-episode bootstrap with >= 3 seeds, else episode-level; ``intervals``), and a
verdict (``better`` / ``worse``: the interval excludes 0; ``tied``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.report.intervals import paired_difference
from mlfsic.harness.sweep.store import read_run_json

NOW, REFERENCE = "now", "reference"
COMPARISON_COLUMNS = ["dataset", "setting", "group", "method", "versus", "n_paired", "diff", "diff_ci_low",
                      "diff_ci_high", "p_value", "interval", "verdict"]


def reference_info(reference_dir: Path) -> dict[str, Any]:
    """run_id, commit, dirty flag and creation date of the reference run, and whether it is the published one."""
    from mlfsic.harness.sweep.spec import PUBLISHED_DIR

    info = read_run_json(Path(reference_dir))
    git = info.get("git") or {}
    return {"run_id": str(info.get("run_id")), "commit": str(git.get("commit", "unknown")), "dirty": git.get("dirty"),
            "created": str(info.get("created", "unknown")),
            "published": Path(reference_dir).resolve() == PUBLISHED_DIR.resolve()}


def episode_sets_of(run_dirs: list[Path]) -> set[str]:
    """Every episode set id the runs' run.json files list (all settings and seeds they asked for)."""
    ids: set[str] = set()
    for run_dir in run_dirs:
        info = read_run_json(Path(run_dir))
        ids.update(str(value) for value in (info.get("episode_sets") or {}).values())
    return ids


def prefix_of(run_dirs: list[Path]) -> dict[str, Any] | None:
    """The runs' prefix comparison (``against=... n_episodes=N`` below the reference's count; run.json's
    ``against.prefix``, written by ``sweep.against_run.check_prefix_episode_sets``), merged; None if none is.
    Runs compared on prefixes of different lengths are refused (one board per ``n_episodes``)."""
    merged: dict[str, Any] | None = None
    for run_dir in run_dirs:
        prefix = (read_run_json(Path(run_dir)).get("against") or {}).get("prefix")
        if not prefix:
            continue
        if merged is not None and merged["n_episodes"] != int(prefix["n_episodes"]):
            raise MlfsicError(f"runs compared on different prefixes of the reference ({merged['n_episodes']} and "
                              f"{prefix['n_episodes']} episodes): build one board per n_episodes")
        merged = merged or {"n_episodes": int(prefix["n_episodes"]),
                            "reference_n_episodes": int(prefix["reference_n_episodes"]), "episode_sets": {}}
        merged["episode_sets"].update(prefix["episode_sets"])
    return merged


def restrict_reference(records: pd.DataFrame, label_ap: pd.DataFrame, reference_run_id: str,
                       episode_sets: set[str], prefix: dict[str, Any] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Drop the reference's rows on episode sets the new runs did not use.

    With a ``prefix`` (``prefix_of``), the reference's rows on a set the new runs drew a prefix of are kept
    for its first episodes only, and carry the prefix set's id, so both are paired on the same episodes.
    """
    def restricted(table: pd.DataFrame) -> pd.DataFrame:
        theirs = table["run_id"] == reference_run_id
        keep = ~theirs | table["episode_set_id"].isin(episode_sets)
        if prefix is not None:
            table = table.copy()
            for ours, reference_set in prefix["episode_sets"].items():
                rows = theirs & (table["episode_set_id"] == reference_set) & (table["episode"] < prefix["n_episodes"])
                table.loc[rows, "episode_set_id"] = ours
                keep |= rows
        return table.loc[keep].reset_index(drop=True)

    return restricted(records), restricted(label_ap)


def source_of(rows: pd.DataFrame, reference_run_id: str | None) -> str:
    """``reference`` when every row of a method's cell comes from the reference run, else ``now``."""
    if reference_run_id is None:
        return ""
    return REFERENCE if (rows["run_id"] == reference_run_id).all() else NOW


def compare_to_reference(records: pd.DataFrame, reference_run_id: str, n_boot: int, seed: int) -> pd.DataFrame:
    """Paired new - reference mAP per (cell, new method, reference method); ``records`` carry ``group``."""
    rows = []
    for (dataset, setting, group), cell in records.groupby(["dataset", "setting", "group"], sort=True):
        by_method = {name: part for name, part in cell.groupby("method", sort=True)}
        sources = {name: source_of(part, reference_run_id) for name, part in by_method.items()}
        new = [name for name, source in sources.items() if source == NOW]
        old = [name for name, source in sources.items() if source == REFERENCE]
        keyed = {name: part.set_index(["episode_set_id", "episode"])["map"] for name, part in by_method.items()}
        for method in new:
            for versus in old:
                pair = pd.concat([keyed[method].rename("a"), keyed[versus].rename("b")], axis=1, join="inner")
                pair = pair[np.isfinite(pair["a"]) & np.isfinite(pair["b"])].sort_index()
                if pair.empty:
                    continue
                clusters = pair.index.get_level_values("episode_set_id").to_numpy()
                a, b = pair["a"].to_numpy(np.float64), pair["b"].to_numpy(np.float64)
                result = paired_difference(a, b, clusters, n_boot=n_boot, seed=seed)
                low, high = result["ci_low"], result["ci_high"]
                verdict = "better" if low > 0.0 else "worse" if high < 0.0 else "tied"
                rows.append({"dataset": dataset, "setting": setting, "group": group, "method": method,
                             "versus": versus, "n_paired": int(len(pair)), "diff": result["mean_diff"],
                             "diff_ci_low": low, "diff_ci_high": high, "p_value": result["p_value"],
                             "interval": result["interval"], "verdict": verdict})
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def comparisons_csv(comparisons: pd.DataFrame) -> str:
    """One row per (cell, new method, reference method); differences as fractions."""
    return comparisons.to_csv(index=False, float_format="%.6f", na_rep="", lineterminator="\n")
