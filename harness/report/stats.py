"""Leaderboard statistics: load run dirs, merge them, and summarise every cell (docs/architecture.md §5.4, 10).

Inputs are run dirs (docs/architecture.md §4.2): ``run.json``, ``records.parquet`` (one row per method, dataset,
setting, seed, episode) and ``label_ap.parquet`` (one row per ..., episode, label); their columns are
``store.RECORD_COLUMNS`` and ``store.LABEL_AP_COLUMNS``. Only rows with ``status == "ok"`` count.
Runs made before records carried ``protocol``, ``backbone_id`` and ``embedding_id`` read them as
``"unknown"`` (and the board says so).

Merging runs. Rows are keyed by (method, dataset, setting, protocol, backbone_id, embedding_id,
episode_set_id, episode). The same key in two runs (a rerun or a resumed copy) is kept once, from the
run whose ``run_id`` sorts first, provided the two agree on mAP, F1@3 and F1@5 to 1e-6; if they disagree
the method is not deterministic and the build stops with an error naming the method, episode set,
episode and both runs. A method name that appears with several ``method_config_hash`` values (a changed
config or code) is shown as one entry per hash, named ``<method>@<hash[:8]>``, so different
configurations are never averaged together.

Groups. A leaderboard cell is (dataset, setting, group): a method's rows in a (dataset, setting) carry
one episode set per seed and one (protocol, backbone_id, embedding_id); its *group* is the sorted tuple
of episode set ids together with those three feature ids, tagged ``es-<sha256[:8]>``. Methods are
compared only with methods of the same group, so rows from different episode sets or different
features are never paired or ranked together (docs/architecture.md §5.3); a (dataset, setting) that ran on two
protocols or backbones shows separately ranked groups, and a note says why. Within a group, the paired
statistics use the (episode_set_id, episode) pairs on which every method of the group has a defined mAP
(normally all of them; ``n_paired`` says how many).

Per (cell, method): mean mAP over the episodes with a defined mAP, its 95% interval and the paired
comparison with the cell's best (``intervals.ranks_with_ties``). With >= 3 seeds (episode sets) both
intervals come from a hierarchical bootstrap: resample seeds, then episodes within each seed
(``interval = "seeds+episodes"``), so they cover a rerun on other seeds; with fewer seeds they are
episode-level only (t-interval over episodes, paired bootstrap over episodes; ``interval = "episodes"``).
Marks: ``*`` significantly worse than the cell's best, ``=`` not (tied), empty for the best itself. A cell
compares each of its other methods with the best, so the paired p-values are Holm-adjusted over those
comparisons (``p_adjusted``, ``intervals.holm_adjust``) and ``*`` means ``p_adjusted < 0.05``; ``p_value``
and the difference's 95% CI are the unadjusted ones.

Undefined metrics. An episode whose mAP is NaN (no label with a positive) is counted in ``n_episodes``
and ``n_map_undefined`` and left out of every mean and pairing. F1@k of an episode with k >= its number
of labels predicts every label, a constant no method can change: it is undefined there (and on an
episode without positives), F1@k is averaged over the episodes where it is defined, and a cell in which
it is undefined on every episode shows it as missing, with a note.

Average ranks compare like with like: the cells (one rank per method per (dataset, setting, group))
are gathered into *rank families*, the cells that hold exactly the same methods on the same features,
and a method's average rank is the mean of its ranks over the cells of one family. Every method of a
family ran in every one of its cells, so the averages within a family are comparable; a method that
ran only some settings (e.g. zero-shot) is ranked in the families of the cells it ran in, never
against a method averaged over other cells.

Against a reference run (``against``, see ``report.against``): the reference's rows are kept on the
episode sets the other runs used only, each row's ``source`` says ``now`` or ``reference``, and
``comparisons`` holds every new method's paired difference to every reference method of its cells.
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
from mlfsic.harness.report import against as against_reference
from mlfsic.harness.report.intervals import EPISODE_LEVEL, MIN_SEEDS, ranks_with_ties
from mlfsic.harness.sweep.store import LABEL_AP_COLUMNS, RECORD_COLUMNS, read_run_json

FEATURE_COLUMNS = ("protocol", "backbone_id", "embedding_id")  # "unknown" in runs made before records had them
UNKNOWN = "unknown"
RECORD_NEEDED = tuple(column for column in RECORD_COLUMNS if column not in FEATURE_COLUMNS)
LABEL_AP_NEEDED = LABEL_AP_COLUMNS
EPISODE_KEY = ["method", "dataset", "setting", *FEATURE_COLUMNS, "episode_set_id", "episode"]
LABEL_KEY = ["run_id", "method", "dataset", "setting", "episode_set_id", "episode"]  # one run: one feature set
F1_KS = {"f1_3": 3, "f1_5": 5}
AGREEMENT_ATOL = 1e-6
assert set(FEATURE_COLUMNS) <= set(RECORD_COLUMNS)


@dataclass
class LeaderboardData:
    """Everything the csv, md and html writers show; every table is sorted deterministically."""

    cells: pd.DataFrame  # one row per (dataset, setting, group, method), ours and reported
    average_ranks: pd.DataFrame  # method, avg_rank, n_cells, family, cells (one block per rank family)
    label_ap: pd.DataFrame  # dataset, setting, group, method, label, ap (mean over episodes)
    runs: list[dict[str, Any]] = field(default_factory=list)  # provenance per run, sorted by run_id
    groups: dict[str, list[str]] = field(default_factory=dict)  # group tag -> episode_set_ids
    group_features: dict[str, dict[str, str]] = field(default_factory=dict)  # group tag -> FEATURE_COLUMNS
    cell_notes: dict[tuple[str, str, str], list[str]] = field(default_factory=dict)  # (dataset, setting, group)
    rank_families: dict[tuple[str, str, str], int] = field(default_factory=dict)  # cell -> rank family
    notes: list[str] = field(default_factory=list)  # board-wide notes (features, separate groups)
    reference: dict[str, Any] | None = None  # the reference run of an ``against`` board (report.against)
    comparisons: pd.DataFrame | None = None  # against: new method - reference method, per cell


def setting_order(setting: str) -> tuple[int, str]:
    """``0shot`` < ``1shot`` < ``5shot`` < ``10shot``; unknown names after, alphabetically."""
    match = re.fullmatch(r"(\d+)shot", setting)
    return (int(match.group(1)), setting) if match else (1 << 30, setting)


def group_tag(episode_set_ids: tuple[str, ...], protocol: str = UNKNOWN, backbone_id: str = UNKNOWN,
              embedding_id: str = UNKNOWN) -> str:
    """``es-<8 hex>`` of the sorted episode set ids and the three feature ids."""
    features = f"protocol={protocol}\nbackbone_id={backbone_id}\nembedding_id={embedding_id}"
    return "es-" + sha256_text("\n".join(sorted(episode_set_ids)) + "\n" + features)[:8]


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
        "backbone_id": str((info.get("backbone") or {}).get("id", UNKNOWN)),
        "backbone": backbone_text(info.get("backbone") or {}),
    }


def backbone_text(block: dict[str, Any]) -> str:
    """What a cell says about an open_clip backbone: the model, the teacher's regime, and that it is no CLIP."""
    if block.get("kind") != "open_clip":
        return ""
    text = f"open_clip {block.get('model', 'unknown')}"
    if block.get("regime"):
        text += f", teacher regime {block['regime']}"
    if block.get("stand_in"):
        text += " (a stand-in for CLIP weights trained by mlfsic, not CLIP)"
    return text


def load_runs(run_dirs: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame, list[dict[str, Any]]]:
    """Records and label-AP rows of all runs (status ok), and each run's provenance, sorted by run_id."""
    if not run_dirs:
        raise MlfsicError("no run dirs given")
    records, label_ap, runs = [], [], {}
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        info = read_run_json(run_dir)
        run_id = str(info["run_id"])
        if run_id in runs:
            continue  # the same run given twice
        runs[run_id] = _provenance(info)
        if not (run_dir / "records.parquet").is_file() and info.get("status") != "complete":
            # stopped before its first assembly (killed on its first invocation): no cell to show yet; the
            # board is INCOMPLETE with every planned cell missing and the resume command (store.run_gaps)
            records.append(pd.DataFrame(columns=[*RECORD_NEEDED, *FEATURE_COLUMNS]))
            label_ap.append(pd.DataFrame(columns=list(LABEL_AP_NEEDED)))
            continue
        frame = _read_table(run_dir / "records.parquet", RECORD_NEEDED)
        frame = frame.loc[frame["status"] == "ok"].copy()
        for column in FEATURE_COLUMNS:
            frame[column] = frame[column].fillna(UNKNOWN).astype(str) if column in frame.columns else UNKNOWN
        records.append(frame[[*RECORD_NEEDED, *FEATURE_COLUMNS]])
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
    renames = pd.DataFrame({"run_id": records["run_id"], "method": records["method"], "display": names})
    renames = renames.drop_duplicates(["run_id", "method"])
    records["method"] = names
    records = records.sort_values(["run_id", *EPISODE_KEY], kind="stable").reset_index(drop=True)
    duplicated = records.duplicated(EPISODE_KEY, keep=False)
    if duplicated.any():
        for _, copies in records[duplicated].groupby(EPISODE_KEY, sort=True):
            values = copies[["map", "f1_3", "f1_5"]].to_numpy(dtype=np.float64)
            if not np.allclose(values, values[0], rtol=0.0, atol=AGREEMENT_ATOL, equal_nan=True):
                first, other = copies.iloc[0], copies.iloc[1]
                raise MlfsicError(
                    f"method {first['method']!r} disagrees with itself on episode set {first['episode_set_id'][:12]} "
                    f"episode {first['episode']}: runs {first['run_id']} and {other['run_id']} "
                    f"(mAP {first['map']:.6f} vs {other['map']:.6f})"
                )
    kept = records.drop_duplicates(EPISODE_KEY, keep="first")
    label_ap = label_ap.merge(renames, on=["run_id", "method"], how="left")
    label_ap["method"] = label_ap["display"].fillna(label_ap["method"])
    label_ap = label_ap.drop(columns="display")
    winners = kept[LABEL_KEY].drop_duplicates()
    label_ap = label_ap.merge(winners, on=LABEL_KEY, how="inner")
    return kept.reset_index(drop=True), label_ap


def _assign_groups(records: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, list[str]], dict[str, dict[str, str]]]:
    keys = ["dataset", "setting", "method", *FEATURE_COLUMNS]
    sets = records.groupby(keys, sort=True)["episode_set_id"].agg(lambda ids: tuple(sorted(set(ids))))
    tags, groups, features = [], {}, {}
    for key, ids in sets.items():
        feature = dict(zip(FEATURE_COLUMNS, key[3:]))
        tag = group_tag(ids, **feature)
        tags.append(tag)
        groups[tag], features[tag] = list(ids), feature
    tagged = sets.index.to_frame(index=False).assign(group=tags)
    records = records.merge(tagged, on=keys, how="left", validate="many_to_one")
    return records, dict(sorted(groups.items())), dict(sorted(features.items()))


def _f1_defined(rows: pd.DataFrame, column: str) -> np.ndarray:
    """F1@k is defined where k < the episode's number of labels and the episode has a positive (finite mAP)."""
    labels = pd.to_numeric(rows["n_labels"], errors="coerce").to_numpy(dtype=np.float64)
    return np.isfinite(rows[column].to_numpy(dtype=np.float64)) & np.isfinite(rows["map"].to_numpy(dtype=np.float64)) \
        & ~(labels <= F1_KS[column])


def _cell_notes(cell: pd.DataFrame, per_method: dict[str, pd.DataFrame], n_sets: int, interval: str) -> list[str]:
    notes = []
    if interval == EPISODE_LEVEL:
        notes.append(f"Intervals are episode-level only: {n_sets} seed{'s' if n_sets != 1 else ''} (episode "
                     f"set{'s' if n_sets != 1 else ''}), fewer than the {MIN_SEEDS} a seed-level interval needs; "
                     "a rerun on other seeds may fall outside them.")
    else:
        notes.append(f"Intervals: hierarchical bootstrap over the {n_sets} seeds (episode sets), then the "
                     "episodes within each seed.")
    for column, k in F1_KS.items():
        defined = _f1_defined(cell, column)
        labels = sorted({int(n) for n in pd.to_numeric(cell["n_labels"], errors="coerce").dropna()})
        label_text = "?" if not labels else str(labels[0]) if len(labels) == 1 else f"{labels[0]}-{labels[-1]}"
        if not defined.any():
            notes.append(f"F1@{k} is missing: undefined on every episode (k = {k} >= the episode's {label_text} "
                         "labels: every label is predicted, a constant no method can change).")
        elif not defined.all() and (cell["n_labels"] <= k).any():
            per_episode = pd.Series(defined, index=cell.index).groupby(
                [cell["episode_set_id"], cell["episode"]]).any()
            notes.append(f"F1@{k} is the mean over the {int(per_episode.sum())} of {per_episode.size} episodes where "
                         f"it is defined (k = {k} < the episode's labels, and a positive label).")
    for name, rows in per_method.items():
        undefined = int(rows["map"].isna().sum())
        if undefined:
            notes.append(f"{name}: {undefined} of {len(rows)} episodes have no positive label (mAP undefined): "
                         "counted in the episodes, left out of the mean and of the pairing.")
    return notes


def _cell_rows(cell: pd.DataFrame, n_boot: int, seed: int,
               reference_run_id: str | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Summary rows of one (dataset, setting, group): stats per method plus paired ranks; and its notes."""
    per_method = {name: rows for name, rows in cell.groupby("method", sort=True)}
    keyed = {name: rows.set_index(["episode_set_id", "episode"])["map"] for name, rows in per_method.items()}
    shared = None
    for series in keyed.values():
        shared = series.index if shared is None else shared.intersection(series.index)
    assert shared is not None
    dataset, setting = cell["dataset"].iloc[0], cell["setting"].iloc[0]
    if len(shared) == 0:
        raise MlfsicError(f"{dataset}/{setting}: methods share no episodes on their episode sets; cannot pair them")
    union = None
    for series in keyed.values():
        union = series.index if union is None else union.union(series.index)
    assert union is not None
    union = union.sort_values()
    values = {name: series.reindex(union).to_numpy(dtype=np.float64) for name, series in keyed.items()}
    clusters = union.get_level_values("episode_set_id").to_numpy()
    n_sets = int(pd.unique(clusters).size)
    defined_everywhere = np.logical_and.reduce([np.isfinite(v) for v in values.values()])
    ranking = ranks_with_ties(values, n_boot=n_boot, seed=seed, clusters=clusters) if defined_everywhere.any() else {}
    out = []
    for name, rows in per_method.items():
        rank = ranking.get(name)
        features = {column: rows[column].iloc[0] for column in FEATURE_COLUMNS}
        f1 = {column: (float(rows[column].to_numpy(dtype=np.float64)[_f1_defined(rows, column)].mean())
                       if _f1_defined(rows, column).any() else np.nan) for column in F1_KS}
        base = {
            "kind": "ours", "dataset": dataset, "setting": setting, "group": rows["group"].iloc[0], "method": name,
            **f1, "n_episodes": int(len(rows)), "n_seeds": int(rows["seed"].nunique()), "citation": "",
            "n_map_undefined": int(rows["map"].isna().sum()), **features,
            "source": against_reference.source_of(rows, reference_run_id),
        }
        if rank is None:  # no episode on which every method has a defined mAP: nothing to rank or pair
            finite = rows["map"].to_numpy(dtype=np.float64)
            finite = finite[np.isfinite(finite)]
            out.append({**base, "map": float(finite.mean()) if finite.size else np.nan, "map_ci95": np.nan,
                        "n_paired": 0, "rank": np.nan, "mark": "", "best": "", "diff_vs_best": np.nan,
                        "diff_ci_low": np.nan, "diff_ci_high": np.nan, "p_value": np.nan, "p_adjusted": np.nan,
                        "interval": "",
                        "map_ci_low": np.nan, "map_ci_high": np.nan})
            continue
        comparison = rank["vs_best"] or {}
        mark = "" if name == rank["best"] else ("=" if rank["tied_with_best"] else "*")
        interval = rank["mean_interval"]
        out.append({
            **base, "map": interval["mean"], "map_ci95": interval["half_width"], "n_paired": rank["n_paired"],
            "rank": int(rank["rank"]), "mark": mark, "best": rank["best"],
            "diff_vs_best": comparison.get("mean_diff", 0.0) if comparison else 0.0,
            "diff_ci_low": comparison.get("ci_low", np.nan), "diff_ci_high": comparison.get("ci_high", np.nan),
            "p_value": comparison.get("p_value", np.nan), "p_adjusted": comparison.get("p_adjusted", np.nan),
            "interval": rank["interval"],
            "map_ci_low": interval["ci_low"], "map_ci_high": interval["ci_high"],
        })
    interval_kind = next(iter(ranking.values()))["interval"] if ranking else EPISODE_LEVEL
    notes = _cell_notes(cell, per_method, n_sets, interval_kind)
    if not ranking:
        notes.append("No episode has a defined mAP for every method: nothing is ranked or paired.")
    return out, notes


# the csv columns, in order; those after "citation" were added with seed-level intervals and feature groups
CELL_COLUMNS = ["kind", "dataset", "setting", "group", "method", "map", "map_ci95", "f1_3", "f1_5", "n_episodes",
                "n_seeds", "n_paired", "rank", "mark", "best", "diff_vs_best", "diff_ci_low", "diff_ci_high",
                "p_value", "citation", "interval", "map_ci_low", "map_ci_high", "n_map_undefined", *FEATURE_COLUMNS,
                "source", "p_adjusted"]
AVERAGE_RANK_COLUMNS = ["method", "avg_rank", "n_cells", "family", "cells"]


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


def cell_label(dataset: str, setting: str, group: str, several_groups: bool) -> str:
    return f"{dataset}/{setting}" + (f" [{group}]" if several_groups else "")


def average_ranks(ours: pd.DataFrame) -> tuple[pd.DataFrame, dict[tuple[str, str, str], int]]:
    """Average rank per rank family (cells with the same methods on the same features); family per cell.

    Families are numbered 1, 2, ... by decreasing number of cells, then decreasing number of methods,
    then their cell labels.
    """
    ranked = ours[ours["rank"].notna()]
    if ranked.empty:
        return pd.DataFrame(columns=AVERAGE_RANK_COLUMNS), {}
    several = ranked.groupby(["dataset", "setting"])["group"].nunique().gt(1).to_dict()
    families: dict[tuple[Any, ...], list[tuple[str, str, str]]] = {}
    for (dataset, setting, group), cell in ranked.groupby(["dataset", "setting", "group"], sort=True):
        key = (tuple(cell[list(FEATURE_COLUMNS)].iloc[0]), tuple(sorted(cell["method"])))
        families.setdefault(key, []).append((dataset, setting, group))
    for members in families.values():
        members.sort(key=lambda c: (c[0], setting_order(c[1]), c[2]))

    def label(members: list[tuple[str, str, str]]) -> str:
        return ", ".join(cell_label(d, s, g, several.get((d, s), False)) for d, s, g in members)

    ordered = sorted(families.items(), key=lambda item: (-len(item[1]), -len(item[0][1]), label(item[1])))
    rows, family_of = [], {}
    for number, ((_, methods), members) in enumerate(ordered, start=1):
        in_family = ranked.set_index(["dataset", "setting", "group"]).loc[members].reset_index()
        means = in_family.groupby("method", sort=True)["rank"].mean()
        block = [{"method": m, "avg_rank": float(means[m]), "n_cells": len(members), "family": number,
                  "cells": label(members)} for m in methods]
        rows.extend(sorted(block, key=lambda r: (r["avg_rank"], r["method"])))
        family_of.update({cell: number for cell in members})
    return pd.DataFrame(rows, columns=AVERAGE_RANK_COLUMNS), family_of


def _prefix_note(reference: dict[str, Any] | None) -> list[str]:
    """The board's first note when it compares on a prefix of the reference's episode sets."""
    if reference is None or "prefix_episodes" not in reference:
        return []
    return [f"Prefix comparison: every method is compared on the first {reference['prefix_episodes']} of the "
            f"reference's {reference['reference_episodes']} episodes per episode set (episode i is the same "
            "whatever the set's size), paired; the reference's rows here are not its published means."]


def _board_notes(records: pd.DataFrame, groups: dict[str, list[str]], features: dict[str, dict[str, str]]) -> list[str]:
    notes = []
    missing = [c for c in FEATURE_COLUMNS if (records[c] == UNKNOWN).any()]
    if missing:
        notes.append(f"Some records carry no {', '.join(missing)} (runs made before records had them): read as "
                     f"'{UNKNOWN}', and grouped apart from records that have them.")
    for (dataset, setting), cell in records.groupby(["dataset", "setting"], sort=True):
        tags = sorted(set(cell["group"]))
        if len(tags) < 2:
            continue
        described = "; ".join(
            f"{tag}: " + ", ".join(f"{c} {features[tag][c]}" for c in FEATURE_COLUMNS)
            + f", {len(groups[tag])} episode sets" for tag in tags)
        notes.append(f"{dataset} / {setting}: {len(tags)} groups on different features or episode sets, never "
                     f"paired or ranked together ({described}).")
    return notes


def summarise(
    run_dirs: list[Path], reported: pd.DataFrame | None = None, n_boot: int = 10000, seed: int = 0,
    progress: bool = False, against: Path | None = None,
) -> LeaderboardData:
    """Load, merge and summarise the runs; add reported rows for the datasets the runs cover.

    ``against``: a reference run dir, summarised with the runs on their episode sets (``report.against``).
    """
    run_dirs = [Path(d) for d in run_dirs]
    reference = against_reference.reference_info(Path(against)) if against is not None else None
    records, label_ap, runs = load_runs(run_dirs + ([Path(against)] if against is not None else []))
    if reference is not None:
        prefix = against_reference.prefix_of(run_dirs)
        records, label_ap = against_reference.restrict_reference(
            records, label_ap, reference["run_id"], against_reference.episode_sets_of(run_dirs), prefix)
        if prefix is not None:
            reference = {**reference, "prefix_episodes": prefix["n_episodes"],
                         "reference_episodes": prefix["reference_n_episodes"]}
        if not (records["run_id"] == reference["run_id"]).any():
            raise MlfsicError(f"reference run {reference['run_id']} ({against}) has no records on the episode sets of "
                              f"{', '.join(str(d) for d in run_dirs)}: they were not run against it")
    if records.empty:  # every cell failed: an empty board that still shows provenance and failures
        return LeaderboardData(
            cells=sort_cells(pd.DataFrame(columns=CELL_COLUMNS)),
            average_ranks=pd.DataFrame(columns=AVERAGE_RANK_COLUMNS),
            label_ap=pd.DataFrame(columns=["dataset", "setting", "group", "method", "label", "ap"]), runs=runs,
            reference=reference,
        )
    records, label_ap = merge_runs(records, label_ap)
    records, groups, group_features = _assign_groups(records)
    rows: list[dict[str, Any]] = []
    cell_notes: dict[tuple[str, str, str], list[str]] = {}
    cells = list(records.groupby(["dataset", "setting", "group"], sort=True))
    backbones = {run["backbone_id"]: run["backbone"] for run in runs if run["backbone"]}
    for key, cell in tqdm(cells, desc="leaderboard cells", disable=not progress):
        cell_rows, notes = _cell_rows(cell, n_boot, seed, reference["run_id"] if reference else None)
        rows.extend(cell_rows)
        backbone = backbones.get(group_features.get(key[2], {}).get("backbone_id", ""))
        cell_notes[key] = ([f"Backbone: {backbone}."] if backbone else []) + notes
    ours = pd.DataFrame(rows, columns=CELL_COLUMNS)
    average, family_of = average_ranks(ours)
    frames = [ours]
    if reported is not None and not reported.empty:
        frames.append(reported[reported["dataset"].isin(set(ours["dataset"]))].reindex(columns=CELL_COLUMNS))
    cells_all = sort_cells(pd.concat([f for f in frames if not f.empty], ignore_index=True))
    label_ap = label_ap.merge(records[[*LABEL_KEY, "group"]], on=LABEL_KEY, how="inner")
    label_mean = (label_ap.groupby(["dataset", "setting", "group", "method", "label"], sort=True)["ap"]
                  .mean().reset_index())
    comparisons = (against_reference.compare_to_reference(records, reference["run_id"], n_boot, seed)
                   if reference is not None else None)
    return LeaderboardData(cells=cells_all, average_ranks=average, label_ap=label_mean, runs=runs, groups=groups,
                           group_features=group_features, cell_notes=cell_notes, rank_families=family_of,
                           notes=_prefix_note(reference) + _board_notes(records, groups, group_features),
                           reference=reference,
                           comparisons=comparisons)
