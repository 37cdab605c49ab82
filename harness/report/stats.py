"""Leaderboard statistics: load run dirs, merge them, and summarise every cell (DESIGN 5.4, 10).

Inputs are run dirs (DESIGN 4.2): ``run.json``, ``records.parquet`` (one row per method, dataset,
setting, seed, episode) and ``label_ap.parquet`` (one row per ..., episode, label). Only rows with
``status == "ok"`` count.

Merging runs. Rows are keyed by (method, dataset, setting, episode_set_id, episode). The same key in
two runs (a rerun or a resumed copy) is kept once, from the run whose ``run_id`` sorts first, provided the
two agree on mAP, F1@3 and F1@5 to 1e-6; if they disagree the method is not deterministic and the
build stops with an error naming the method, episode set, episode and both runs. A method name that
appears with several ``method_config_hash`` values (a changed config or code) is shown as one entry per
hash, named ``<method>@<hash[:8]>``, so different configurations are never averaged together.

Groups. A leaderboard cell is (dataset, setting, episode sets): a method's rows in a (dataset, setting)
carry one episode set per seed, and its *episode-set group* is the sorted tuple of those ids, tagged
``es-<sha256[:8]>``. Methods are compared only with methods of the same group, so rows from different
episode sets are never paired (DESIGN 5.3); a (dataset, setting) that ran on two protocols shows two
separately ranked groups. Within a group, the paired statistics use the (episode_set_id, episode)
pairs that every method of the group has (normally all of them; ``n_paired`` says how many).

Per (cell, method): mean mAP over all episodes and seeds with the 95% t-interval over episodes, mean
F1@3 / F1@5, episode and seed counts, the paired bootstrap of method - best (``intervals.paired_bootstrap``)
and the rank with ties (``intervals.ranks_with_ties``). Marks: ``=`` tied with the best (the difference's
95% CI contains 0), ``*`` significantly worse, empty for the best itself. Average rank per method is the
mean of its ranks over the cells it appears in (methods that cannot run a setting, e.g. zero-shot, are
averaged over fewer cells; ``n_cells`` says how many).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.io import sha256_text
from mlfsic.harness.report.intervals import mean_ci, ranks_with_ties

RECORD_NEEDED = ("run_id", "method", "method_config_hash", "dataset", "setting", "seed", "episode_set_id",
                 "episode", "map", "f1_3", "f1_5", "status")
LABEL_AP_NEEDED = ("run_id", "method", "dataset", "setting", "seed", "episode_set_id", "episode", "label", "ap")
EPISODE_KEY = ["method", "dataset", "setting", "episode_set_id", "episode"]
AGREEMENT_ATOL = 1e-6


@dataclass
class LeaderboardData:
    """Everything the csv, md and html writers show; every table is sorted deterministically."""

    cells: pd.DataFrame  # one row per (dataset, setting, group, method), ours and reported
    average_ranks: pd.DataFrame  # method, avg_rank, n_cells
    label_ap: pd.DataFrame  # dataset, setting, group, method, label, ap (mean over episodes)
    runs: list[dict[str, Any]] = field(default_factory=list)  # provenance per run, sorted by run_id
    groups: dict[str, list[str]] = field(default_factory=dict)  # group tag -> episode_set_ids


def setting_order(setting: str) -> tuple[int, str]:
    """``0shot`` < ``1shot`` < ``5shot`` < ``10shot``; unknown names after, alphabetically."""
    match = re.fullmatch(r"(\d+)shot", setting)
    return (int(match.group(1)), setting) if match else (1 << 30, setting)


def group_tag(episode_set_ids: tuple[str, ...]) -> str:
    return "es-" + sha256_text("\n".join(sorted(episode_set_ids)))[:8]


def _read_table(path: Path, needed: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise MlfsicError(f"missing {path}")
    try:
        frame = pd.read_parquet(path)
    except Exception as error:  # pyarrow raises several types for a corrupt file
        raise MlfsicError(f"cannot read {path}: {type(error).__name__}: {error}") from None
    missing = [column for column in needed if column not in frame.columns]
    if missing:
        raise MlfsicError(f"{path}: missing column {missing[0]!r}")
    return frame


def _read_run_json(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "run.json"
    if not path.is_file():
        raise MlfsicError(f"missing {path} (not a run dir?)")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise MlfsicError(f"{path}: invalid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(info, dict) or "run_id" not in info:
        raise MlfsicError(f"{path}: missing field 'run_id'")
    return info


def _provenance(info: dict[str, Any]) -> dict[str, Any]:
    git = info.get("git") or {}
    return {
        "run_id": str(info["run_id"]),
        "created": str(info.get("created", "unknown")),
        "git_commit": str(git.get("commit", "unknown")),
        "git_dirty": git.get("dirty"),
        "versions": dict(sorted((info.get("versions") or {}).items())),
        "hardware": info.get("hardware") or {},
        "episode_sets": dict(sorted((info.get("episode_sets") or {}).items())),
        "failures": sorted(info.get("failures") or [], key=lambda f: json.dumps(f, sort_keys=True)),
    }


def load_runs(run_dirs: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame, list[dict[str, Any]]]:
    """Records and label-AP rows of all runs (status ok), and each run's provenance, sorted by run_id."""
    if not run_dirs:
        raise MlfsicError("no run dirs given")
    records, label_ap, runs = [], [], {}
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        info = _read_run_json(run_dir)
        run_id = str(info["run_id"])
        if run_id in runs:
            continue  # the same run given twice
        runs[run_id] = _provenance(info)
        frame = _read_table(run_dir / "records.parquet", RECORD_NEEDED)
        records.append(frame.loc[frame["status"] == "ok", list(RECORD_NEEDED)])
        label_ap.append(_read_table(run_dir / "label_ap.parquet", LABEL_AP_NEEDED)[list(LABEL_AP_NEEDED)])
    records_all = pd.concat(records, ignore_index=True)
    return records_all, pd.concat(label_ap, ignore_index=True), [runs[key] for key in sorted(runs)]


def display_names(records: pd.DataFrame) -> pd.Series:
    """``method``, or ``method@hash8`` when the method name comes with several config hashes."""
    hashes = records.groupby("method")["method_config_hash"].nunique()
    several = set(hashes[hashes > 1].index)
    return pd.Series(
        [f"{m}@{h[:8]}" if m in several else m for m, h in zip(records["method"], records["method_config_hash"])],
        index=records.index,
    )


def merge_runs(records: pd.DataFrame, label_ap: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rename methods by config hash, drop duplicate episodes across runs (error when they disagree)."""
    records = records.copy()
    names = display_names(records)
    run_method = dict(zip(zip(records["run_id"], records["method"]), names))
    records["method"] = names
    records = records.sort_values(["run_id", *EPISODE_KEY], kind="stable").reset_index(drop=True)
    duplicated = records.duplicated(EPISODE_KEY, keep=False)
    if duplicated.any():
        for _, copies in records[duplicated].groupby(EPISODE_KEY, sort=True):
            values = copies[["map", "f1_3", "f1_5"]].to_numpy(dtype=np.float64)
            if not np.allclose(values, values[0], rtol=0.0, atol=AGREEMENT_ATOL):
                first, other = copies.iloc[0], copies.iloc[1]
                raise MlfsicError(
                    f"method {first['method']!r} disagrees with itself on episode set {first['episode_set_id'][:12]} "
                    f"episode {first['episode']}: runs {first['run_id']} and {other['run_id']} "
                    f"(mAP {first['map']:.6f} vs {other['map']:.6f})"
                )
    kept = records.drop_duplicates(EPISODE_KEY, keep="first")
    label_ap = label_ap.copy()
    label_ap["method"] = [run_method.get((r, m), m) for r, m in zip(label_ap["run_id"], label_ap["method"])]
    winners = kept[["run_id", *EPISODE_KEY]]
    label_ap = label_ap.merge(winners, on=["run_id", *EPISODE_KEY], how="inner")
    return kept.reset_index(drop=True), label_ap


def _assign_groups(records: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    sets = records.groupby(["dataset", "setting", "method"], sort=True)["episode_set_id"].agg(
        lambda ids: tuple(sorted(set(ids)))
    )
    tags = {key: group_tag(ids) for key, ids in sets.items()}
    groups = {group_tag(ids): list(ids) for ids in sets}
    records = records.copy()
    records["group"] = [tags[key] for key in zip(records["dataset"], records["setting"], records["method"])]
    return records, dict(sorted(groups.items()))


def _cell_rows(cell: pd.DataFrame, n_boot: int, seed: int) -> list[dict[str, Any]]:
    """Summary rows of one (dataset, setting, group): stats per method plus paired ranks."""
    per_method = {name: rows for name, rows in cell.groupby("method", sort=True)}
    keyed = {name: rows.set_index(["episode_set_id", "episode"])["map"] for name, rows in per_method.items()}
    shared = None
    for series in keyed.values():
        shared = series.index if shared is None else shared.intersection(series.index)
    assert shared is not None
    shared = shared.sort_values()
    if len(shared) == 0:
        dataset, setting = cell["dataset"].iloc[0], cell["setting"].iloc[0]
        raise MlfsicError(f"{dataset}/{setting}: methods share no episodes on their episode sets; cannot pair them")
    ranking = ranks_with_ties({name: series.loc[shared].to_numpy() for name, series in keyed.items()},
                              n_boot=n_boot, seed=seed)
    out = []
    for name, rows in per_method.items():
        mean, half = mean_ci(rows["map"].to_numpy())
        rank = ranking[name]
        comparison = rank["vs_best"] or {}
        mark = "" if name == rank["best"] else ("=" if rank["tied_with_best"] else "*")
        out.append({
            "kind": "ours", "dataset": rows["dataset"].iloc[0], "setting": rows["setting"].iloc[0],
            "group": rows["group"].iloc[0], "method": name, "map": mean, "map_ci95": half,
            "f1_3": float(rows["f1_3"].mean()), "f1_5": float(rows["f1_5"].mean()),
            "n_episodes": int(len(rows)), "n_seeds": int(rows["seed"].nunique()), "n_paired": int(len(shared)),
            "rank": int(rank["rank"]), "mark": mark, "best": rank["best"],
            "diff_vs_best": comparison.get("mean_diff", 0.0) if comparison else 0.0,
            "diff_ci_low": comparison.get("ci_low", np.nan), "diff_ci_high": comparison.get("ci_high", np.nan),
            "p_value": comparison.get("p_value", np.nan), "citation": "",
        })
    return out


CELL_COLUMNS = ["kind", "dataset", "setting", "group", "method", "map", "map_ci95", "f1_3", "f1_5", "n_episodes",
                "n_seeds", "n_paired", "rank", "mark", "best", "diff_vs_best", "diff_ci_low", "diff_ci_high",
                "p_value", "citation"]


def sort_cells(cells: pd.DataFrame) -> pd.DataFrame:
    """Dataset, setting (by shot count), group, ours before reported, rank, method."""
    if cells.empty:
        return cells.reindex(columns=CELL_COLUMNS)
    key = pd.DataFrame({
        "dataset": cells["dataset"],
        "shots": [setting_order(s)[0] for s in cells["setting"]],
        "setting": cells["setting"],
        "group": cells["group"],
        "kind": (cells["kind"] != "ours").astype(int),
        "rank": cells["rank"].fillna(1 << 30),
        "method": cells["method"],
    })
    order = key.sort_values(list(key.columns), kind="stable").index
    return cells.loc[order, CELL_COLUMNS].reset_index(drop=True)


def summarise(
    run_dirs: list[Path], reported: pd.DataFrame | None = None, n_boot: int = 10000, seed: int = 0,
    progress: bool = False,
) -> LeaderboardData:
    """Load, merge and summarise the runs; add reported rows for the datasets the runs cover."""
    records, label_ap, runs = load_runs([Path(d) for d in run_dirs])
    if records.empty:  # every cell failed: an empty board that still shows provenance and failures
        return LeaderboardData(
            cells=sort_cells(pd.DataFrame(columns=CELL_COLUMNS)),
            average_ranks=pd.DataFrame(columns=["method", "avg_rank", "n_cells"]),
            label_ap=pd.DataFrame(columns=["dataset", "setting", "group", "method", "label", "ap"]), runs=runs,
        )
    records, label_ap = merge_runs(records, label_ap)
    records, groups = _assign_groups(records)
    rows: list[dict[str, Any]] = []
    cells = list(records.groupby(["dataset", "setting", "group"], sort=True))
    for _, cell in tqdm(cells, desc="leaderboard cells", disable=not progress):
        rows.extend(_cell_rows(cell, n_boot, seed))
    ours = pd.DataFrame(rows, columns=CELL_COLUMNS)
    average = (ours.groupby("method", sort=True)["rank"].agg(["mean", "size"])
               .rename(columns={"mean": "avg_rank", "size": "n_cells"}).reset_index())
    average = average.sort_values(["avg_rank", "method"], kind="stable").reset_index(drop=True)
    frames = [ours]
    if reported is not None and not reported.empty:
        frames.append(reported[reported["dataset"].isin(set(ours["dataset"]))].reindex(columns=CELL_COLUMNS))
    cells_all = sort_cells(pd.concat([f for f in frames if not f.empty], ignore_index=True))
    label_ap = label_ap.merge(records[["run_id", *EPISODE_KEY, "group"]], on=["run_id", *EPISODE_KEY], how="inner")
    label_mean = (label_ap.groupby(["dataset", "setting", "group", "method", "label"], sort=True)["ap"]
                  .mean().reset_index())
    return LeaderboardData(cells=cells_all, average_ranks=average, label_ap=label_mean, runs=runs, groups=groups)
