"""The leaderboard page (docs/architecture.md §10): one HTML file per board, shared by ``leaderboard.html`` and
the site's per-benchmark pages (``report.site``).

Contents, top to bottom: a sortable table (mAP ± CI per method x setting x dataset, ranks with
significance marks, which interval, reported paper rows marked *reported*), the notes (intervals,
undefined metrics, groups on different features), the average ranks per rank family, one bar chart per dataset
(mAP per setting and method, 95% CI error bars; reported numbers as hatched bars without error bars),
one per-label AP heatmap (method x label) per cell, and a provenance block per run (git commit + dirty
flag, episode set ids, package versions, hardware, run date). A run that lacks cells (``store.run_gaps``)
puts an INCOMPLETE block under the title: its missing cells, why, and the resume command.
``render_page`` takes extra sections (the
site's costs table and links) and where plotly.js is: inlined once (``leaderboard.html``, self-contained,
no ``<script src>``) or one relative ``<script src>`` (the site's ``assets/plotly.min.js``).

Reproducibility: every figure has a fixed ``div_id`` derived from its content's names, tables are
sorted, and nothing depends on the build time, so the same inputs give a byte-identical page.
Tables sort on click by a ``data-v`` value per cell (``SORT_JS``, about 20 lines of inline JS; empty
values stay last).
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from mlfsic.harness.report.stats import LeaderboardData, setting_order
from mlfsic.harness.report.tables import INTERVALS_TEXT, gaps_summary, interval_text, reference_text, resume_text
from mlfsic.harness.sweep.store import RunGaps

PLOT_CONFIG = {"displaylogo": False, "responsive": True}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f0f0f0; cursor: pointer; user-select: none; }
th.sorted-asc::after { content: " \\25B2"; } th.sorted-desc::after { content: " \\25BC"; }
tr.reported td { font-style: italic; color: #666; }
.mark-worse { color: #b00; } .mark-tied { color: #06c; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 0.8em; }
"""

SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, column) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0];
      var ascending = !th.classList.contains("sorted-asc");
      table.querySelectorAll("th").forEach(function (h) { h.classList.remove("sorted-asc", "sorted-desc"); });
      th.classList.add(ascending ? "sorted-asc" : "sorted-desc");
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[column].getAttribute("data-v"), y = b.cells[column].getAttribute("data-v");
        if (x === "" || y === "") { return (x === "") - (y === ""); }  // empty values last, either way
        var nx = parseFloat(x), ny = parseFloat(y), cmp;
        if (!isNaN(nx) && !isNaN(ny)) { cmp = nx - ny; } else { cmp = String(x).localeCompare(String(y)); }
        return ascending ? cmp : -cmp;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def slug(text: str) -> str:
    """A div-id-safe name: lower case letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "x"


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _num(value: Any) -> str:
    return "" if value is None or pd.isna(value) else repr(float(value))


def _pct(value: Any) -> str:
    return "" if value is None or pd.isna(value) else f"{100.0 * float(value):.1f}"


def td(text: str, sort_value: Any, css: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    return f'<td data-v="{esc(sort_value)}"{cls}>{esc(text)}</td>'


def results_table(data: LeaderboardData) -> str:
    headers = ["dataset", "setting", "episode sets", "method", "mAP ± 95% CI", "rank", "Δ vs best [95% CI]", "p",
               "p adj.", "F1@3", "F1@5", "episodes", "seeds", "interval", "source"]
    out = ['<table class="sortable" id="mlfsic-results-table"><thead><tr>']
    out += [f"<th>{esc(h)}</th>" for h in headers]
    out.append("</tr></thead><tbody>")
    for row in data.cells.itertuples(index=False):
        ours = row.kind == "ours"
        ci = f" ± {_pct(row.map_ci95)}" if ours and not pd.isna(row.map_ci95) else ""
        ranked = ours and not pd.isna(row.rank)
        if ranked:
            rank = f"{int(row.rank)}{row.mark}"
            css = {"=": "mark-tied", "*": "mark-worse"}.get(row.mark, "")
            diff = "" if row.mark == "" else f"{_pct(row.diff_vs_best)} [{_pct(row.diff_ci_low)}, {_pct(row.diff_ci_high)}]"
            p_value = "" if row.mark == "" else f"{row.p_value:.3g}"
            p_adjusted = "" if row.mark == "" else f"{row.p_adjusted:.3g}"
        else:
            rank, css, diff, p_value, p_adjusted = "reported" if not ours else "-", "", "", "", ""
        cells = [
            td(row.dataset, row.dataset), td(row.setting, setting_order(row.setting)[0]),
            td(row.group, row.group), td(row.method, row.method), td(f"{_pct(row.map)}{ci}", _num(row.map)),
            td(rank, int(row.rank) if ranked else 10**6, css), td(diff, _num(row.diff_vs_best) if ranked else ""),
            td(p_value, _num(row.p_value) if ranked else ""),
            td(p_adjusted, _num(row.p_adjusted) if ranked else ""), td(_f1(row, row.f1_3), _num(row.f1_3)),
            td(_f1(row, row.f1_5), _num(row.f1_5)), td("" if not ours else int(row.n_episodes), row.n_episodes if ours else ""),
            td("" if not ours else int(row.n_seeds), row.n_seeds if ours else ""),
            td(interval_text(row.interval) if ours else "", row.interval if ours else ""),
            td(_source(data, row), row.kind if data.reference is None or not ours else row.source),
        ]
        out.append(f'<tr class="{"ours" if ours else "reported"}">' + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _source(data: LeaderboardData, row: Any) -> str:
    """``ours (reproduced)``; against a reference: ``now`` or ``reference <run_id> @ <commit>``."""
    if row.kind != "ours":
        return f"reported: {row.citation}"
    if data.reference is None:
        return "ours (reproduced)"
    if row.source == "reference":
        return f"reference {data.reference['run_id']} @ {data.reference['commit'][:12]}"
    return "now (this run)"


def against_table(data: LeaderboardData) -> str:
    """Every new method's paired difference to every reference method (``report.against``)."""
    comparisons = data.comparisons
    if comparisons is None or comparisons.empty:
        return ""
    headers = ["dataset", "setting", "method (now)", "vs (reference)", "Δ [95% CI]", "p", "paired episodes",
               "interval", "verdict"]
    out = ['<table class="sortable" id="mlfsic-against-table"><thead><tr>']
    out += [f"<th>{esc(h)}</th>" for h in headers]
    out.append("</tr></thead><tbody>")
    for row in comparisons.itertuples(index=False):
        out.append("<tr>" + "".join([
            td(row.dataset, row.dataset), td(row.setting, setting_order(row.setting)[0]), td(row.method, row.method),
            td(row.versus, row.versus),
            td(f"{_pct(row.diff)} [{_pct(row.diff_ci_low)}, {_pct(row.diff_ci_high)}]", _num(row.diff)),
            td(f"{row.p_value:.3g}", _num(row.p_value)), td(row.n_paired, row.n_paired),
            td(interval_text(row.interval), row.interval), td(row.verdict, row.verdict),
        ]) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _f1(row: Any, value: Any) -> str:
    return "n/a" if row.kind == "ours" and pd.isna(value) else _pct(value)


def notes_block(data: LeaderboardData) -> str:
    """The board's notes, then each cell's (intervals, undefined metrics), as lists."""
    out = ['<div id="mlfsic-notes">']
    if data.notes:
        out.append("<ul>" + "".join(f"<li>{esc(note)}</li>" for note in data.notes) + "</ul>")
    def order(item: Any) -> tuple[Any, ...]:
        (dataset, setting, group), _ = item
        return dataset, setting_order(setting), group

    for (dataset, setting, group), notes in sorted(data.cell_notes.items(), key=order):
        out.append(f"<h3>{esc(dataset)} / {esc(setting)} ({esc(group)})</h3><ul>"
                   + "".join(f"<li>{esc(note)}</li>" for note in notes) + "</ul>")
    out.append("</div>")
    return "".join(out)


def average_rank_table(data: LeaderboardData) -> str:
    """One sortable table per rank family (cells holding the same methods on the same features)."""
    out = ['<div id="mlfsic-average-rank"><p>Per rank family: the cells that hold exactly the same methods on the '
           "same features; every method of a family is ranked in each of its cells.</p>"]
    for family, block in data.average_ranks.groupby("family", sort=True):
        out.append(f"<h3>Family {esc(family)}: {esc(block['cells'].iloc[0])}</h3>"
                   f'<table class="sortable" id="mlfsic-average-rank-{esc(family)}"><thead><tr><th>method</th>'
                   "<th>average rank</th><th>cells</th></tr></thead><tbody>")
        for row in block.itertuples(index=False):
            out.append(f"<tr>{td(row.method, row.method)}{td(f'{row.avg_rank:.2f}', _num(row.avg_rank))}"
                       f"{td(row.n_cells, row.n_cells)}</tr>")
        out.append("</tbody></table>")
    out.append("</div>")
    return "".join(out)


def bar_figure(data: LeaderboardData, dataset: str) -> go.Figure:
    """mAP per setting (x) and method (one trace each), CI error bars; reported methods hatched."""
    cells = data.cells[data.cells["dataset"] == dataset]
    several_groups = cells[cells["kind"] == "ours"].groupby("setting")["group"].nunique().gt(1).to_dict()

    def x_of(row: Any) -> str:
        return f"{row.setting} [{row.group}]" if several_groups.get(row.setting) and row.kind == "ours" else row.setting

    x_order = sorted({x_of(r) for r in cells.itertuples(index=False)}, key=lambda x: (setting_order(x.split(" ")[0]), x))
    figure = go.Figure()
    for method in sorted(cells["method"].unique()):
        rows = list(cells[cells["method"] == method].itertuples(index=False))
        rows.sort(key=lambda r: x_order.index(x_of(r)))
        reported = rows[0].kind != "ours"
        figure.add_trace(go.Bar(
            name=method, x=[x_of(r) for r in rows], y=[round(100.0 * r.map, 4) for r in rows],
            error_y=None if reported else dict(
                type="data", array=[round(100.0 * r.map_ci95, 4) if not pd.isna(r.map_ci95) else 0.0 for r in rows]),
            marker_pattern_shape="/" if reported else "",
            hovertext=[r.citation if reported else ("not ranked" if pd.isna(r.rank) else f"rank {int(r.rank)}{r.mark}")
                       for r in rows],
        ))
    figure.update_layout(
        title=f"{dataset}: mAP (%) per setting, 95% CI", barmode="group", yaxis_title="mAP (%)",
        xaxis=dict(categoryorder="array", categoryarray=x_order), height=420, margin=dict(t=60, b=40),
        template="plotly_white",
    )
    return figure


def heatmap_figure(data: LeaderboardData, dataset: str, setting: str, group: str) -> go.Figure:
    """Mean AP (%) per method (rows) and label (columns) of one cell."""
    rows = data.label_ap[(data.label_ap["dataset"] == dataset) & (data.label_ap["setting"] == setting)
                         & (data.label_ap["group"] == group)]
    table = rows.pivot(index="method", columns="label", values="ap").sort_index().sort_index(axis=1)
    z = [[None if pd.isna(v) else round(100.0 * float(v), 3) for v in line] for line in table.to_numpy()]
    figure = go.Figure(go.Heatmap(z=z, x=list(table.columns), y=list(table.index), colorscale="Viridis",
                                  colorbar=dict(title="AP (%)"), zmin=0, zmax=100))
    figure.update_layout(title=f"{dataset} / {setting} ({group}): per-label AP (%)", template="plotly_white",
                         height=max(260, 60 + 28 * len(table.index)), margin=dict(t=60, b=80),
                         yaxis=dict(autorange="reversed"))
    return figure


def incomplete_block(gaps: Sequence[RunGaps]) -> str:
    """Per incomplete run: what is missing and why, and the resume command ("" when every run is complete).
    Styled inline, so the pages of complete runs stay byte for byte as they were."""
    out = []
    for run in (g for g in gaps if g.incomplete):
        out.append(f'<div class="mlfsic-incomplete" style="border: 2px solid #b00; padding: 0.2em 1em; margin: 1em 0">'
                   f'<h2 style="color: #b00">INCOMPLETE: run {esc(run.run_id)}</h2>'
                   f"<p>{esc(gaps_summary(run))}. This board leaves the missing cells out; resume the run (finished "
                   "cells are kept) and rebuild the board.</p>")
        if run.missing:
            out.append('<table class="sortable"><thead><tr><th>method</th><th>dataset</th><th>setting</th><th>seed</th>'
                       "<th>why</th></tr></thead><tbody>")
            out += [f"<tr>{td(c.method, c.method)}{td(c.dataset, c.dataset)}"
                    f"{td(c.setting, setting_order(c.setting)[0])}{td(str(c.seed), c.seed)}{td(c.reason, c.reason)}</tr>"
                    for c in run.missing]
            out.append("</tbody></table>")
        command = resume_text(run)
        out.append(f"<p>Resume: <code>{esc(command)}</code></p></div>" if run.resume is not None
                   else f"<p>Resume: {esc(command.replace('`', ''))}</p></div>")
    return '<div id="mlfsic-incomplete">' + "".join(out) + "</div>" if out else ""


def provenance_block(data: LeaderboardData, gaps: Sequence[RunGaps] = ()) -> str:
    gaps_of = {g.run_id: g for g in gaps if g.incomplete}
    out = ['<div id="mlfsic-provenance">']
    for run in data.runs:
        dirty = {True: "dirty", False: "clean", None: "unknown"}[run["git_dirty"]]
        incomplete = (f"<li>{esc(gaps_summary(gaps_of[run['run_id']]))}</li>" if run["run_id"] in gaps_of else "")
        out.append(f"<h3>run {esc(run['run_id'])}</h3><ul>"
                   f"<li>created: {esc(run['created'])}</li>"
                   f"<li>git commit: <code>{esc(run['git_commit'])}</code> ({dirty} working tree)</li>"
                   f"<li>failures: {len(run['failures'])}</li>{incomplete}</ul>")
        for title, key in (("episode sets", "episode_sets"), ("package versions", "versions"),
                           ("hardware", "hardware"), ("failures", "failures")):
            out.append(f"<details><summary>{title}</summary><pre>"
                       f"{esc(json.dumps(run[key], indent=1, sort_keys=True, default=str))}</pre></details>")
    out.append("</div>")
    return "".join(out)


def figure_embedder(plotly_src: str | None) -> Callable[[go.Figure, str], str]:
    """``embed(figure, div_id)`` -> an HTML fragment: plotly.js inlined in the first figure (``plotly_src`` None)
    or never (the page loads ``plotly_src``)."""
    first = plotly_src is None

    def embed(figure: go.Figure, div_id: str) -> str:
        nonlocal first
        fragment = figure.to_html(full_html=False, include_plotlyjs=first, div_id=div_id, config=PLOT_CONFIG)
        first = False
        return fragment

    return embed


def page_head(title: str, plotly_src: str | None = None, style: str = STYLE) -> str:
    """``<!DOCTYPE html>`` up to ``<body>``; with ``plotly_src`` the head loads plotly.js from there."""
    script = f'<script src="{esc(plotly_src)}" charset="utf-8"></script>' if plotly_src is not None else ""
    return "\n".join(["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{esc(title)}</title>",
                      f"<style>{style}</style>{script}</head><body>"])


def intro_text(data: LeaderboardData) -> list[str]:
    """What the numbers, marks and rows of a board mean (and the reference run of an ``against`` board)."""
    return ["<p>mAP in percent: mean over all episodes and seeds ± half-width of its 95% interval. "
            f"{esc(INTERVALS_TEXT)} (column <i>interval</i>: <i>seeds+episodes</i> or <i>episodes only</i>). "
            "Rank marks: <b>=</b> tied with the cell's best, "
            "<b>*</b> significantly worse (paired bootstrap, p Holm-adjusted over the cell's comparisons with its best "
            "below 0.05; column <i>p adj.</i>). Methods are paired and ranked only on identical episode sets and "
            "features: backbone, label embedding, protocol (column <i>episode sets</i>). n/a: undefined (see the "
            "notes). Rows marked <i>reported</i> are numbers printed in papers (with citation): "
            "different protocols and features, never ranked. Click a column header to sort.</p>",
            *([f"<p>{esc(reference_text(data.reference).replace('`', '').replace('*', ''))}</p>"]
              if data.reference is not None else [])]


def board_sections(data: LeaderboardData, embed: Callable[[go.Figure, str], str],
                   extra: Sequence[str] = (), gaps: Sequence[RunGaps] = ()) -> list[str]:
    """Results, against, notes, average ranks, ``extra`` (HTML fragments), bar charts, heatmaps, provenance
    (with what ``gaps`` says of incomplete runs)."""
    parts = ["<h2>Results</h2>", results_table(data),
             *(["<h2>Against the reference</h2>", "<p>Paired difference new − reference in mAP points over the "
                "episodes both scored (95% CI); better / worse: the interval excludes 0.</p>", against_table(data)]
               if data.comparisons is not None and not data.comparisons.empty else []),
             "<h2>Notes</h2>", notes_block(data),
             "<h2>Average rank</h2>", average_rank_table(data), *extra]
    parts.append("<h2>mAP per setting</h2>")
    for dataset in sorted(data.cells["dataset"].unique()):
        if (data.cells[data.cells["dataset"] == dataset]["kind"] == "ours").any():
            parts.append(embed(bar_figure(data, dataset), f"mlfsic-bar-{slug(dataset)}"))
    parts.append("<h2>Per-label AP</h2>")
    keys = data.label_ap[["dataset", "setting", "group"]].drop_duplicates()
    ordered = sorted(keys.itertuples(index=False), key=lambda k: (k.dataset, setting_order(k.setting), k.group))
    for key in ordered:
        div_id = f"mlfsic-heatmap-{slug(key.dataset)}-{slug(key.setting)}-{slug(key.group)}"
        parts.append(embed(heatmap_figure(data, key.dataset, key.setting, key.group), div_id))
    parts += ["<h2>Provenance</h2>", provenance_block(data, gaps)]
    return parts


def render_page(data: LeaderboardData, plotly_src: str | None = None, title: str = "mlfsic leaderboard",
                before: Sequence[str] = (), extra: Sequence[str] = (), gaps: Sequence[RunGaps] = ()) -> str:
    """The whole page as a string (deterministic for the same arguments).

    ``plotly_src``: None inlines plotly.js (a self-contained page), else the relative URL of the one plotly.js
    file. ``before``: HTML fragments after the title (the site's navigation); ``extra``: sections after the
    average ranks (the site's costs). ``gaps``: ``store.run_gaps`` of the board's runs; an incomplete one
    gets the INCOMPLETE block under the title (and " (INCOMPLETE)" in it).
    """
    incomplete = incomplete_block(gaps)
    heading = f"{title} (INCOMPLETE)" if incomplete else title
    parts = [page_head(heading, plotly_src), *before, f"<h1>{esc(heading)}</h1>", *([incomplete] if incomplete else []),
             *intro_text(data),
             *board_sections(data, figure_embedder(plotly_src), extra, gaps), f"<script>{SORT_JS}</script>",
             "</body></html>"]
    return "\n".join(parts) + "\n"
