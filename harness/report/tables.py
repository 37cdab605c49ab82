"""The leaderboard's csv and markdown tables (docs/architecture.md §4.1 ``mlfsic leaderboard``, 10).

csv: one row per (dataset, setting, group, method); mAP, CI half-widths and differences as fractions;
``kind`` is ``ours`` or ``reported``; ``avg_rank`` repeats the method's average rank in the rank family of
the row's cell; ``interval`` says whether the intervals are ``seeds+episodes`` (hierarchical bootstrap)
or ``episodes`` (episode-level only, < 3 seeds); an undefined metric is an empty field.
md: one table per cell with mAP in percent and the cell's notes, then the average ranks per rank
family, the board's notes and the runs' provenance. Against a reference run (``report.against``) each
row's source (*now* / *reference*) is a column, and a section lists every new method's paired
difference to every reference method. A run that lacks cells (interrupted, failed; ``store.run_gaps``)
makes the board *INCOMPLETE*: a section at the top lists the missing cells and the resume command, and
``missing_cells_csv`` lists them as csv (``missing_cells.csv`` beside leaderboard.csv).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from mlfsic.harness.report.stats import CELL_COLUMNS, FEATURE_COLUMNS, LeaderboardData, setting_order
from mlfsic.harness.sweep.store import RunGaps

CSV_FLOATS = ("map", "map_ci95", "f1_3", "f1_5", "diff_vs_best", "diff_ci_low", "diff_ci_high", "p_value", "avg_rank",
              "map_ci_low", "map_ci_high", "p_adjusted")
CSV_INTS = ("rank", "n_episodes", "n_seeds", "n_paired", "n_map_undefined")
INTERVALS_TEXT = (
    "With >= 3 seeds the 95% intervals are a hierarchical bootstrap (resample seeds, then episodes within each "
    "seed), so they cover a rerun on other seeds; with fewer seeds they are episode-level only (t-interval over "
    "episodes, paired bootstrap over episodes) and the cell says so."
)


def _fmt(value: Any, digits: int = 6) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def leaderboard_csv(data: LeaderboardData) -> str:
    cells = data.cells.copy()
    ranks = {(f, m): r for f, m, r in zip(data.average_ranks["family"], data.average_ranks["method"],
                                          data.average_ranks["avg_rank"])}
    cells["avg_rank"] = [
        ranks.get((data.rank_families.get((d, s, g)), m), math.nan) if k == "ours" else math.nan
        for d, s, g, m, k in zip(cells["dataset"], cells["setting"], cells["group"], cells["method"], cells["kind"])
    ]
    cells["episode_sets"] = [";".join(data.groups.get(g, [])) for g in cells["group"]]
    # the columns of earlier versions first (through episode_sets), then those added since
    first = CELL_COLUMNS[:CELL_COLUMNS.index("citation") + 1] + ["avg_rank", "episode_sets"]
    cells = cells[first + [c for c in cells.columns if c not in first]]
    lines = [",".join(cells.columns)]
    for row in cells.itertuples(index=False):
        fields = []
        for name, value in zip(cells.columns, row):
            if name in CSV_FLOATS:
                fields.append(_fmt(float(value) if value is not None else math.nan))
            elif name in CSV_INTS:
                fields.append("" if pd.isna(value) else str(int(value)))
            else:
                fields.append(_csv_quote("" if pd.isna(value) else str(value)))
        lines.append(",".join(fields))
    return "\n".join(lines) + "\n"


def _csv_quote(text: str) -> str:
    if any(ch in text for ch in ',"\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _pct(value: float, digits: int = 1) -> str:
    return "" if pd.isna(value) else f"{100.0 * value:.{digits}f}"


def map_text(row: Any) -> str:
    """``62.3 ± 0.8`` (percent), or the bare number for a reported row."""
    if row.kind != "ours":
        return _pct(row.map)
    return f"{_pct(row.map)} ± {_pct(row.map_ci95)}" if not pd.isna(row.map_ci95) else _pct(row.map)


def rank_text(row: Any) -> str:
    """``1``, ``1=`` (tied with the best), ``3*`` (significantly worse), ``reported``; ``-``: not ranked."""
    if row.kind != "ours":
        return "reported"
    return "-" if pd.isna(row.rank) else f"{int(row.rank)}{row.mark}"


def f1_text(row: Any, value: float) -> str:
    """F1 in percent; ``n/a`` for one of ours that is undefined (see the cell's notes)."""
    return "n/a" if row.kind == "ours" and pd.isna(value) else _pct(value)


def interval_text(kind: str) -> str:
    return {"seeds+episodes": "seeds+episodes", "episodes": "episodes only"}.get(kind, "")


def diff_text(row: Any) -> str:
    if row.kind != "ours" or row.mark == "" or pd.isna(row.rank):
        return ""
    return f"{_pct(row.diff_vs_best)} [{_pct(row.diff_ci_low)}, {_pct(row.diff_ci_high)}], p={row.p_value:.3g}"


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def reference_text(reference: dict[str, Any]) -> str:
    """One sentence naming the reference run, its commit and what *now* / *reference* mean."""
    name = "the published run" if reference["published"] else "reference run"
    dirty = " (dirty working tree)" if reference["dirty"] else ""
    return (f"Ranked against {name} `{reference['run_id']}` (commit `{reference['commit']}`{dirty}, created "
            f"{reference['created']}): rows marked *reference* are its numbers, not recomputed; rows marked *now* "
            "were computed by this run on the same episode sets, backbone, label embeddings and metric version.")


def against_markdown(data: LeaderboardData) -> list[str]:
    """The paired differences of each new method to each reference method, one table per new method."""
    comparisons = data.comparisons
    if comparisons is None or comparisons.empty:
        return []
    lines = ["## Against the reference", "",
             "Paired difference new − reference in mAP points over the episodes both scored (95% CI; seeds+episodes "
             "bootstrap with >= 3 seeds, else episodes only); *better* / *worse*: the interval excludes 0.", ""]
    for method, block in comparisons.groupby("method", sort=True):
        lines += [f"### {_md_escape(method)}", "", "| setting | vs | Δ [95% CI] | p | paired episodes | verdict |",
                  "|---|---|---|---|---|---|"]
        block = block.assign(order=[setting_order(s) for s in block["setting"]])
        block = block.sort_values(["dataset", "order", "versus"])
        several_datasets = block["dataset"].nunique() > 1
        for row in block.itertuples(index=False):
            where = f"{row.dataset}/{row.setting}" if several_datasets else row.setting
            lines.append(f"| {where} | {_md_escape(row.versus)} | {_pct(row.diff)} [{_pct(row.diff_ci_low)}, "
                         f"{_pct(row.diff_ci_high)}] | {row.p_value:.3g} | {row.n_paired} | {row.verdict} |")
        lines.append("")
    return lines


def gaps_summary(gaps: RunGaps) -> str:
    """``INCOMPLETE (status interrupted): 1 of 12 planned cells missing (0 failed)`` for an incomplete run."""
    n = len(gaps.missing)
    cells = f"{n} of {gaps.n_planned} planned cells" if gaps.n_planned else f"{n} cell{'s' if n != 1 else ''}"
    return f"INCOMPLETE (status {gaps.status}): {cells} missing ({gaps.n_failed} failed)"


def resume_text(gaps: RunGaps) -> str:
    """The command that resumes the run, or what to do when it is not known."""
    if gaps.resume is not None:
        return gaps.resume
    return f"re-run the `mlfsic run` command that made run {gaps.run_id} (its arguments are not recorded)"


def incomplete_markdown(gaps: Sequence[RunGaps]) -> list[str]:
    """The INCOMPLETE section: per incomplete run, its missing cells and why, and the resume command."""
    lines: list[str] = []
    for run in (g for g in gaps if g.incomplete):
        lines += [f"## INCOMPLETE: run `{run.run_id}`", "",
                  f"{gaps_summary(run)}. This board leaves the missing cells out; resume the run (finished cells "
                  "are kept) and rebuild the board.", ""]
        if run.missing:
            lines += ["| method | dataset | setting | seed | why |", "|---|---|---|---|---|"]
            lines += [f"| {_md_escape(c.method)} | {_md_escape(c.dataset)} | {c.setting} | {c.seed} | "
                      f"{_md_escape(' '.join(c.reason.split()))} |" for c in run.missing]
            lines.append("")
        command = resume_text(run)
        lines += [f"Resume: `{command}`" if run.resume is not None else f"Resume: {command}", ""]
    return lines


def missing_cells_csv(gaps: Sequence[RunGaps]) -> str:
    """One row per missing cell of each incomplete run (a run incomplete by its status alone: one row without a
    cell): run_id, status, method, dataset, setting, seed, reason, resume."""
    lines = ["run_id,status,method,dataset,setting,seed,reason,resume"]
    for run in (g for g in gaps if g.incomplete):
        resume = _csv_quote(resume_text(run))
        for c in run.missing:
            lines.append(",".join([_csv_quote(run.run_id), run.status, _csv_quote(c.method), _csv_quote(c.dataset),
                                   _csv_quote(c.setting), str(c.seed), _csv_quote(" ".join(c.reason.split())), resume]))
        if not run.missing:
            lines.append(",".join([_csv_quote(run.run_id), run.status, "", "", "", "",
                                   f"the run did not finish (status {run.status})", resume]))
    return "\n".join(lines) + "\n"


def leaderboard_markdown(data: LeaderboardData, gaps: Sequence[RunGaps] = ()) -> str:
    """The markdown board; ``gaps`` (``store.run_gaps`` of its runs) marks it INCOMPLETE when a run lacks cells."""
    incomplete = incomplete_markdown(gaps)
    lines = ["# mlfsic leaderboard" + (" (INCOMPLETE)" if incomplete else ""), "",
             "mAP in percent, mean over all episodes and seeds ± half-width of its 95% interval. " + INTERVALS_TEXT
             + " Rank marks: `=` tied with the cell's best, "
             "`*` significantly worse (paired bootstrap p, Holm-adjusted over the cell's comparisons with its best, "
             "below 0.05; csv column p_adjusted). Δ = method − best over the shared episodes. Methods are paired and ranked "
             "only on the same episode sets and features (backbone, label embedding, protocol). "
             "*reported* rows are paper numbers, never ranked. Bootstrap p-values are at least 1/(B+1). "
             "n/a: undefined (see the cell's notes).", ""]
    lines += incomplete
    against = data.reference is not None
    if against:
        lines += [reference_text(data.reference), ""]
    if data.cells.empty:
        lines += ["No successful results.", ""]
    for (dataset, setting, group), cell in data.cells.groupby(["dataset", "setting", "group"], sort=False):
        if (cell["kind"] != "ours").all():
            continue  # reported rows are listed under the ours-cells of the same dataset/setting below
        features = data.group_features.get(group, {})
        lines += [f"## {dataset} / {setting} (episode sets {group})", "",
                  "Features: " + ", ".join(f"{c} `{features.get(c, 'unknown')}`" for c in FEATURE_COLUMNS) + ".", "",
                  "| rank | method | mAP | F1@3 | F1@5 | episodes | seeds | Δ vs best [95% CI] |"
                  + (" source |" if against else ""),
                  "|---|---|---|---|---|---|---|---|" + ("---|" if against else "")]
        for row in cell.itertuples(index=False):
            if row.kind != "ours":
                continue
            lines.append(f"| {rank_text(row)} | {_md_escape(row.method)} | {map_text(row)} | "
                         f"{f1_text(row, row.f1_3)} | {f1_text(row, row.f1_5)} | {row.n_episodes} | {row.n_seeds} | "
                         f"{diff_text(row)} |" + (f" {row.source} |" if against else ""))
        reported = data.cells[(data.cells["kind"] != "ours") & (data.cells["dataset"] == dataset)
                              & (data.cells["setting"] == setting)]
        for row in reported.itertuples(index=False):
            lines.append(f"| reported | {_md_escape(row.method)} | {_pct(row.map)} |  |  |  |  | "
                         f"{_md_escape(row.citation)} |" + (" reported |" if against else ""))
        lines.append("")
        for note in data.cell_notes.get((dataset, setting, group), []):
            lines.append(f"- {_md_escape(note)}")
        lines.append("")
    lines += against_markdown(data)
    lines += ["## Average rank", "",
              "Per rank family: the cells that hold exactly the same methods on the same features; every method "
              "of a family is ranked in each of its cells, so its averages are comparable.", ""]
    for family, block in data.average_ranks.groupby("family", sort=True):
        lines += [f"### Family {family}: {_md_escape(block['cells'].iloc[0])}", "",
                  "| method | average rank | cells |", "|---|---|---|"]
        for row in block.itertuples(index=False):
            lines.append(f"| {_md_escape(row.method)} | {row.avg_rank:.2f} | {row.n_cells} |")
        lines.append("")
    if data.notes:
        lines += ["## Notes", ""] + [f"- {_md_escape(note)}" for note in data.notes] + [""]
    lines += ["## Runs", ""]
    gaps_of = {g.run_id: g for g in gaps if g.incomplete}
    for run in data.runs:
        dirty = {True: " (dirty)", False: "", None: " (dirty: unknown)"}[run["git_dirty"]]
        role = (" (the reference)" if data.reference is not None and run["run_id"] == data.reference["run_id"]
                else " (computed now)" if data.reference is not None else "")
        missing = f", {gaps_summary(gaps_of[run['run_id']])}" if run["run_id"] in gaps_of else ""
        lines.append(f"- `{run['run_id']}`{role} created {run['created']}, commit `{run['git_commit']}`{dirty}, "
                     f"{len(run['episode_sets'])} episode sets, {len(run['failures'])} failures{missing}")
        for failure in run["failures"]:
            lines.append(f"  - FAILED {failure.get('method')} {failure.get('dataset')} {failure.get('setting')} "
                         f"seed{failure.get('seed')}: {failure.get('error')}")
    return "\n".join(lines) + "\n"
