"""The leaderboard site (docs/architecture.md §10): ``mlfsic leaderboard DIR... [out=DIR]`` over run and suite dirs.

A DIR is a run dir (``run.json``) or a suite dir (``suite.json``: its member run dirs, ``store.suite_run_dirs``).
The runs are gathered into *benchmarks*, one per (dataset, backbone): the backbone is
``config.dataset.backbone.kind``, and for the tiny teacher (open_clip, model tiny-teacher) its regime, e.g.
``small_cnn``, ``tiny-teacher (concept-seen)``, ``tiny-teacher (strict)``, ``resnet50``, ``open_clip <model>``.
Each benchmark is summarised on its own (``stats.summarise``), so runs on different features are never ranked
together. The site:

    index.html                   overview: method x (dataset, backbone, setting) pivot of mAP ± CI with the
                                 rank marks, a cost line and tooltip per cell (``costs``), filters (dataset,
                                 backbone, teacher regime, setting) and sorting (plain JS), the benchmarks and
                                 the method cards
    overview.{csv,json}          the pivot (json: the numbers and costs too); benchmarks.{csv,json}, costs.{csv,json}
    benchmarks/<slug>.html       one benchmark: the leaderboard page (``page.render_page``) plus its costs
    benchmarks/<slug>.<table>.{csv,json}   its results, average ranks and costs
    methods/<slug>.html          a method card: paper and links (its docstring, papers.yaml), what fit received
                                 (run.json ``leakage_check``), hyperparameters, config hash and git commit, the
                                 backbone it ran on; methods/<slug>.hyperparameters.{csv,json}
    assets/plotly.min.js         the one plotly.js (from the installed plotly package), loaded by relative
                                 ``<script src>`` from every page; no page inlines it

A run that lacks cells (interrupted, failed: ``store.run_gaps``) marks its benchmark page INCOMPLETE (missing
cells, why, the resume command) and is listed as INCOMPLETE at the top of the overview.

Every file is a pure function of the inputs (sorted tables, fixed bootstrap seed, no timestamps): a rebuild
is byte-identical.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.io import write_text_atomic
from mlfsic.harness.report.costs import COSTS_NOTE, cell_costs, cost_summary, cost_table_rows, seconds_text
from mlfsic.harness.report.leaderboard import run_gaps_of
from mlfsic.harness.report.page import SORT_JS, STYLE, esc, page_head, render_page, slug, td
from mlfsic.harness.report.papers import load_reported
from mlfsic.harness.report.stats import LeaderboardData, setting_order, summarise
from mlfsic.harness.report.tables import gaps_summary, leaderboard_csv, map_text, rank_text, resume_text
from mlfsic.harness.sweep.store import RunGaps, is_suite_dir, read_run_json, suite_run_dirs

PLOTLY_ASSET = "assets/plotly.min.js"
NO_TEACHER = "none"
FILTER_KEYS = ("dataset", "backbone", "regime", "setting")
SITE_STYLE = STYLE + """
nav { margin-bottom: 1em; } nav a { margin-right: 1em; }
fieldset { display: inline-block; margin: 0 1em 0.5em 0; font-size: 0.9em; }
td.best .v { font-weight: bold; } td small { color: #777; }
.data-links { font-size: 0.85em; }
"""
# Filters hide the overview's columns whose dataset/backbone/regime/setting is unchecked, then the rows left
# without a value; sorting is SORT_JS (page.py) on the data-v of the clicked column.
FILTER_JS = """
function mlfsicFilter() {
  var table = document.getElementById("mlfsic-overview");
  var allowed = {};
  document.querySelectorAll("input.mlfsic-filter").forEach(function (box) {
    allowed[box.name] = allowed[box.name] || {};
    if (box.checked) { allowed[box.name][box.value] = true; }
  });
  var shown = {};
  table.querySelectorAll("th[data-col]").forEach(function (th) {
    var keep = ["dataset", "backbone", "regime", "setting"].every(function (k) { return allowed[k][th.dataset[k]]; });
    shown[th.dataset.col] = keep;
    th.style.display = keep ? "" : "none";
  });
  Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
    var any = false;
    row.querySelectorAll("td[data-col]").forEach(function (cell) {
      cell.style.display = shown[cell.dataset.col] ? "" : "none";
      if (shown[cell.dataset.col] && cell.getAttribute("data-v") !== "") { any = true; }
    });
    row.style.display = any ? "" : "none";
  });
}
document.querySelectorAll("input.mlfsic-filter").forEach(function (box) { box.addEventListener("change", mlfsicFilter); });
"""


@dataclass(frozen=True)
class Benchmark:
    """The runs of one (dataset, backbone), shown on one page."""

    slug: str
    dataset: str
    backbone: str  # small_cnn, tiny-teacher (strict), open_clip ViT-B-16, ...
    regime: str  # the tiny teacher's regime, else NO_TEACHER
    backbone_id: str
    run_dirs: tuple[Path, ...]


def expand_dirs(dirs: list[Path]) -> list[Path]:
    """Run dirs as given, suite dirs as their member run dirs, in order, each once; anything else: one line."""
    out: list[Path] = []
    for directory in (Path(d) for d in dirs):
        if is_suite_dir(directory):
            members = [path for _, path in suite_run_dirs(directory)]
        elif (directory / "run.json").is_file():
            members = [directory]
        else:
            raise MlfsicError(f"{directory}: neither a run dir (no run.json) nor a suite dir (no suite.json)")
        out.extend(path for path in members if path not in out)
    if not out:
        raise MlfsicError("give at least one run dir or suite dir")
    return out


def default_site_dir(dirs: list[Path]) -> Path:
    """``<suite_dir>/site`` when the first DIR is a suite dir, else the first run dir (beside leaderboard.html)."""
    first = Path(dirs[0])
    return first / "site" if is_suite_dir(first) else first


def backbone_of(info: dict[str, Any]) -> tuple[str, str]:
    """(label, teacher regime) of a run from run.json ``config.dataset.backbone`` (``backbone`` for the regime)."""
    config = ((info.get("config") or {}).get("dataset") or {}).get("backbone") or {}
    block = info.get("backbone") or {}
    kind = str(config.get("kind") or block.get("kind") or "unknown")
    model = str(config.get("model") or block.get("model") or "unknown")
    if kind == "timm":  # any timm model: its name tells the columns apart (timm tf_efficientnet_lite0)
        return f"timm {model}", NO_TEACHER
    if kind != "open_clip":
        return kind, NO_TEACHER
    if model == "tiny-teacher":
        regime = str(block.get("regime") or config.get("regime") or "unknown")
        return f"tiny-teacher ({regime})", regime
    return f"open_clip {model}", NO_TEACHER


def group_benchmarks(run_dirs: list[Path]) -> list[Benchmark]:
    """One Benchmark per (dataset, backbone label, backbone id), sorted; slugs are unique."""
    groups: dict[tuple[str, str, str, str], list[Path]] = {}
    for run_dir in run_dirs:
        info = read_run_json(run_dir)
        dataset = str((info.get("dataset") or {}).get("name")
                      or ((info.get("config") or {}).get("dataset") or {}).get("name") or "unknown")
        label, regime = backbone_of(info)
        backbone_id = str((info.get("backbone") or {}).get("id", "unknown"))
        groups.setdefault((dataset, label, regime, backbone_id), []).append(run_dir)
    labels = [(d, b) for d, b, _, _ in groups]
    out = []
    for (dataset, label, regime, backbone_id), dirs in sorted(groups.items()):
        name = f"{dataset}-{label}" + (f"-{backbone_id[:8]}" if labels.count((dataset, label)) > 1 else "")
        out.append(Benchmark(slug(name), dataset, label, regime, backbone_id, tuple(dirs)))
    return out


# ----------------------------------------------------------------------------------------- tables as files
def _csv_text(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def _json_text(content: Any) -> str:
    return json.dumps(content, indent=1, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def _records_json(frame: pd.DataFrame) -> str:
    """A frame as a list of row objects; NaN as null."""
    rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            for row in json.loads(frame.to_json(orient="records", double_precision=15))]
    return _json_text(rows)


def _text_table(rows: list[list[str]]) -> tuple[str, str]:
    """csv and json (a list of header -> text objects) of a table given as texts, the header first."""
    header = rows[0]
    return _csv_text(rows), _json_text([dict(zip(header, row)) for row in rows[1:]])


def html_table(table_id: str, rows: list[list[str]]) -> str:
    """A sortable table of texts (header first); numeric texts sort as numbers."""
    out = [f'<table class="sortable" id="{esc(table_id)}"><thead><tr>']
    out += [f"<th>{esc(h)}</th>" for h in rows[0]]
    out.append("</tr></thead><tbody>")
    for row in rows[1:]:
        out.append("<tr>" + "".join(td(text, "" if text == "n/a" else text) for text in row) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _data_links(prefix: str, names: list[str]) -> str:
    links = " ".join(f'<a href="{esc(prefix)}{esc(n)}.csv">{esc(n)}.csv</a> <a href="{esc(prefix)}{esc(n)}.json">'
                     f"{esc(n)}.json</a>" for n in names)
    return f'<p class="data-links">Data: {links}</p>'


# ----------------------------------------------------------------------------------------- the overview
@dataclass(frozen=True)
class Column:
    benchmark: Benchmark
    dataset: str
    setting: str
    group: str
    label: str


def overview_columns(boards: list[tuple[Benchmark, LeaderboardData]]) -> list[Column]:
    columns = []
    for benchmark, data in boards:
        ours = data.cells[data.cells["kind"] == "ours"]
        keys = ours[["dataset", "setting", "group"]].drop_duplicates()
        several = keys.groupby(["dataset", "setting"])["group"].nunique().gt(1).to_dict()
        for key in sorted(keys.itertuples(index=False), key=lambda k: (k.dataset, setting_order(k.setting), k.group)):
            label = f"{key.dataset} · {benchmark.backbone} · {key.setting}"
            if several.get((key.dataset, key.setting)):
                label += f" [{key.group}]"
            columns.append(Column(benchmark, key.dataset, key.setting, key.group, label))
    return columns


def _cell_of(data: LeaderboardData, column: Column, method: str) -> Any | None:
    cells = data.cells
    ours = cells[(cells["kind"] == "ours") & (cells["dataset"] == column.dataset) & (cells["setting"] == column.setting)
                 & (cells["group"] == column.group) & (cells["method"] == method)]
    if not ours.empty:
        return next(ours.itertuples(index=False))
    reported = cells[(cells["kind"] != "ours") & (cells["dataset"] == column.dataset)
                     & (cells["setting"] == column.setting) & (cells["method"] == method)]
    return next(reported.itertuples(index=False)) if not reported.empty else None


COST_FIELDS = ("n_episodes", "n_fits", "fit_s", "predict_s", "episodes_per_s", "predict_cpu_s", "gpu_s", "num_gpus")


def _number(value: Any) -> int | float | None:
    """A JSON-ready number: ints stay ints, NaN is None."""
    if isinstance(value, (int, bool)) or (hasattr(value, "dtype") and value.dtype.kind in "iu"):
        return int(value)
    value = float(value)
    return None if math.isnan(value) else value


def cell_text(row: Any) -> str:
    """``44.4 ± 0.2 [1]``, ``43.6 ± 0.2 [3*]``; a paper's number: ``52.0 (reported)``."""
    return f"{map_text(row)} (reported)" if row.kind != "ours" else f"{map_text(row)} [{rank_text(row)}]"


def overview(boards: list[tuple[Benchmark, LeaderboardData]], costs: dict[str, pd.DataFrame]
             ) -> tuple[list[Column], list[dict[str, Any]]]:
    """The columns and, per method (ours by name, then reported), its cells: text, numbers, cost."""
    columns = overview_columns(boards)
    data_of = {b.slug: d for b, d in boards}
    methods: set[tuple[int, str]] = set()
    for _, data in boards:
        methods.update((0 if kind == "ours" else 1, m) for kind, m in zip(data.cells["kind"], data.cells["method"]))
    rows = []
    for kind, method in sorted(methods):
        cells = {}
        for column in columns:
            row = _cell_of(data_of[column.benchmark.slug], column, method)
            if row is None:
                continue
            entry: dict[str, Any] = {"text": cell_text(row), "kind": row.kind, "map": float(row.map),
                                     "map_ci95": None if pd.isna(row.map_ci95) else float(row.map_ci95),
                                     "rank": None if pd.isna(row.rank) else int(row.rank),
                                     "mark": "" if pd.isna(row.mark) else str(row.mark), "citation": str(row.citation or "")}
            if row.kind == "ours":
                table = costs[column.benchmark.slug]
                match = table[(table["dataset"] == column.dataset) & (table["setting"] == column.setting)
                              & (table["method"] == method) & (table["backbone_id"] == row.backbone_id)
                              & (table["protocol"] == row.protocol) & (table["embedding_id"] == row.embedding_id)]
                if not match.empty:
                    cost = next(match.itertuples(index=False))
                    entry["costs"] = {k: _number(getattr(cost, k)) for k in COST_FIELDS}
                    entry["cost_text"] = cost_summary(cost)
            cells[column.label] = entry
        rows.append({"method": method, "kind": "ours" if kind == 0 else "reported", "cells": cells})
    return columns, rows


def overview_table(columns: list[Column], rows: list[dict[str, Any]], cards: dict[str, str]) -> str:
    out = ['<table class="sortable" id="mlfsic-overview"><thead><tr><th>method</th>']
    for index, column in enumerate(columns):
        b = column.benchmark
        out.append(f'<th data-col="{index}" data-dataset="{esc(column.dataset)}" data-backbone="{esc(b.backbone)}" '
                   f'data-regime="{esc(b.regime)}" data-setting="{esc(column.setting)}">{esc(column.label)}</th>')
    out.append("</tr></thead><tbody>")
    for row in rows:
        name = row["method"]
        link = f'<a href="{esc(cards[name])}">{esc(name)}</a>' if name in cards else esc(name)
        out.append(f'<tr class="{row["kind"]}"><td data-v="{esc(name)}">{link}</td>')
        for index, column in enumerate(columns):
            cell = row["cells"].get(column.label)
            if cell is None:
                out.append(f'<td data-col="{index}" data-v=""></td>')
                continue
            css = ("best" if cell["rank"] == 1 and cell["mark"] == "" else
                   {"=": "mark-tied", "*": "mark-worse"}.get(cell["mark"], "")) if cell["kind"] == "ours" else "reported"
            title = cell.get("cost_text") or cell["citation"]
            small = (f"<br><small>{esc(seconds_text(cell['costs']['episodes_per_s']))} ep/s · fit "
                     f"{esc(seconds_text(cell['costs']['fit_s']))} s</small>" if "costs" in cell else "")
            out.append(f'<td data-col="{index}" data-v="{cell["map"]!r}" class="{css}" title="{esc(title)}">'
                       f'<span class="v">{esc(cell["text"])}</span>{small}</td>')
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def filters_block(columns: list[Column]) -> str:
    values: dict[str, set[str]] = {key: set() for key in FILTER_KEYS}
    for column in columns:
        values["dataset"].add(column.dataset)
        values["backbone"].add(column.benchmark.backbone)
        values["regime"].add(column.benchmark.regime)
        values["setting"].add(column.setting)
    titles = {"dataset": "dataset", "backbone": "backbone", "regime": "teacher regime", "setting": "setting"}
    out = ['<div id="mlfsic-filters">']
    for key in FILTER_KEYS:
        order = sorted(values[key], key=setting_order) if key == "setting" else sorted(values[key])
        boxes = "".join(f'<label><input type="checkbox" class="mlfsic-filter" name="{key}" value="{esc(v)}" checked> '
                        f'{esc("no teacher" if key == "regime" and v == NO_TEACHER else v)}</label> ' for v in order)
        out.append(f"<fieldset><legend>{titles[key]}</legend>{boxes}</fieldset>")
    out.append("</div>")
    return "".join(out)


def _overview_files(columns: list[Column], rows: list[dict[str, Any]]) -> tuple[str, str]:
    table = [["method", *[c.label for c in columns]]]
    table += [[row["method"], *[row["cells"].get(c.label, {}).get("text", "") for c in columns]] for row in rows]
    described = [{"label": c.label, "dataset": c.dataset, "backbone": c.benchmark.backbone, "regime": c.benchmark.regime,
                  "setting": c.setting, "group": c.group, "benchmark": c.benchmark.slug} for c in columns]
    return _csv_text(table), _json_text({"columns": described, "rows": rows})


def _nav(prefix: str) -> str:
    return f'<nav><a href="{prefix}index.html">overview</a></nav>'


# ----------------------------------------------------------------------------------------- method cards
def _first_paragraph(text: str | None) -> str:
    return " ".join((text or "").strip().split("\n\n")[0].split())


def _links(text: str) -> list[str]:
    """The code and paper addresses a docstring names (github.com/..., arXiv ids), as URLs."""
    links = [f"https://{m.rstrip('.,;)')}" for m in re.findall(r"github\.com/[\w.-]+/[\w.-]+", text)]
    links += [f"https://arxiv.org/abs/{m}" for m in re.findall(r"arXiv[: ]?(\d{4}\.\d{4,5})", text, flags=re.I)]
    return list(dict.fromkeys(links))


def method_doc(registered: str) -> dict[str, Any]:
    """A registered method's origin, the first paragraph of its class (else module) docstring, and its links."""
    import inspect

    from mlfsic.methods.registry import available_methods

    info = available_methods().get(registered)
    if info is None:
        return {"registered": False, "origin": "", "summary": "", "links": [], "source": "", "deviations": []}
    doc = info.cls.__doc__ if "__doc__" in vars(info.cls) and info.cls.__doc__ else inspect.getmodule(info.cls).__doc__
    summary = _first_paragraph(doc).replace("``", "")
    return {"registered": True, "origin": info.origin, "summary": summary, "links": _links(doc or ""),
            "source": f"{info.cls.__module__}.{info.cls.__qualname__}", "deviations": list(info.cls.deviations)}


def _card_entries(method: str, boards: list[tuple[Benchmark, LeaderboardData]]) -> list[dict[str, Any]]:
    """Per benchmark and run holding ``method``: its methods block, leakage check, git commit and backbone."""
    name, _, short_hash = method.partition("@")
    entries = []
    for benchmark, data in boards:
        if not (data.cells["method"] == method).any():
            continue
        for run_dir in benchmark.run_dirs:
            info = read_run_json(run_dir)
            block = (info.get("methods") or {}).get(name)
            if block is None or not str(block.get("config_hash", "")).startswith(short_hash):
                continue
            config = info.get("config") or {}
            entries.append({"benchmark": benchmark, "run_id": str(info["run_id"]), "block": block,
                            "commit": str((info.get("git") or {}).get("commit", "unknown")),
                            "dirty": (info.get("git") or {}).get("dirty"), "leakage": info.get("leakage_check") or {},
                            "eval_split": config.get("eval_split", "unknown"), "fit_val": config.get("fit_val"),
                            "backbone": info.get("backbone") or {},
                            "fit_report_fields": sorted({k for key, report in (info.get("fit_reports") or {}).items()
                                                         if key.split("/")[0] == name for k in report})})
    return entries


def _hyperparameter_rows(entries: list[dict[str, Any]]) -> list[list[str]]:
    rows = [["run", "registered method", "hyperparameter", "value"]]
    for entry in entries:
        config = entry["block"].get("config") or {}
        for key in sorted(config):
            rows.append([entry["run_id"], str(entry["block"].get("method", "")), key,
                         json.dumps(config[key], sort_keys=True)])
    return rows


def _backbone_items(block: dict[str, Any]) -> str:
    items = "".join(f"<li>{esc(k)}: <code>{esc(v)}</code></li>" for k, v in sorted(block.items())
                    if not isinstance(v, (dict, list)) and k != "weights")
    training = block.get("training")
    details = (f"<details><summary>what it was trained on (run.json backbone.training)</summary><pre>"
               f"{esc(json.dumps(training, indent=1, sort_keys=True))}</pre></details>" if training else "")
    return f"<ul>{items}</ul>{details}"


def method_card(method: str, entries: list[dict[str, Any]], reported: pd.DataFrame, stem: str) -> str:
    registered = str(entries[0]["block"].get("method", method)) if entries else method.partition("@")[0]
    doc = method_doc(registered)
    parts = [page_head(f"mlfsic method {method}", style=SITE_STYLE), _nav("../"), f"<h1>{esc(method)}</h1>"]
    if doc["registered"]:
        parts.append(f"<p>Registered method <code>{esc(registered)}</code> ({esc(doc['origin'])}; class "
                     f"<code>{esc(doc['source'])}</code>). From its docstring: {esc(doc['summary'])}</p>")
        if doc["links"]:
            parts.append("<p>Links named in the docstring: " + ", ".join(
                f'<a href="{esc(u)}">{esc(u)}</a>' for u in doc["links"]) + "</p>")
        parts.append(f"<h2>Deviations from its paper or released code ({len(doc['deviations'])} declared)</h2>")
        parts.append("<ol>" + "".join(
            f"<li>{esc(d.what)}<br>why: {esc(d.why)}<br>effect: {esc(d.effect)}"
            + (f" (measured on {esc(d.split)})" if d.split else "") + "</li>" for d in doc["deviations"])
            + "</ol>" if doc["deviations"] else "<p>None declared.</p>")
    else:
        parts.append(f"<p><code>{esc(registered)}</code> is not registered in this installation: no docstring.</p>")
    papers = reported[reported["method"].str.replace(" (reported)", "", regex=False).str.lower() == registered.lower()]
    parts.append("<p>Paper-reported numbers (configs/reference/papers.yaml): "
                 + ("; ".join(esc(c) for c in sorted(set(papers["citation"]))) if not papers.empty else "none entered")
                 + ".</p>")
    parts.append("<h2>Runs</h2>")
    for entry in entries:
        leakage = entry["leakage"]
        base, val = leakage.get("base") or {}, leakage.get("val") or {}
        receives = [str(r) for r in leakage.get("fit_receives", [])]
        val_text = (f"; val split {esc(val.get('images', '?'))} images, {esc(val.get('labels', '?'))} labels, for model "
                    "selection" if any(r.startswith("val") for r in receives) else "; no val split")
        dirty = {True: "dirty", False: "clean", None: "unknown"}[entry["dirty"]]
        parts.append(
            f"<h3>{esc(entry['run_id'])} ({esc(entry['benchmark'].dataset)} · {esc(entry['benchmark'].backbone)})</h3><ul>"
            f"<li>fit received (run.json leakage_check.fit_receives): {esc(', '.join(receives))}"
            f"; base split {esc(base.get('images', '?'))} images, {esc(base.get('labels', '?'))} labels{val_text}</li>"
            f"<li>evaluated split: {esc(entry['eval_split'])} (fit_val {esc(entry['fit_val'])}); evaluated split "
            f"reaches fit: {esc(leakage.get('evaluated_split_reaches_fit', 'unknown'))}</li>"
            f"<li>fit report fields: {esc(', '.join(entry['fit_report_fields']) or 'none')}</li>"
            f"<li>config hash (hyperparameters and code): <code>{esc(entry['block'].get('config_hash', 'unknown'))}</code></li>"
            f"<li>git commit: <code>{esc(entry['commit'])}</code> ({dirty} working tree)</li></ul>"
            f"<p>Backbone (run.json backbone):</p>{_backbone_items(entry['backbone'])}")
    parts += ["<h2>Hyperparameters</h2>", "<p>run.json methods.&lt;name&gt;.config, per run.</p>",
              html_table("mlfsic-hyperparameters", _hyperparameter_rows(entries)),
              _data_links("", [f"{stem}.hyperparameters"]), f"<script>{SORT_JS}</script>", "</body></html>"]
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------------------- the site
def incomplete_list(runs: list[tuple[Benchmark, RunGaps]]) -> str:
    """The overview's INCOMPLETE block: each run that lacks cells, its benchmark page and resume command
    ("" when every run is complete)."""
    items = [f'<li>run {esc(g.run_id)} (<a href="benchmarks/{esc(b.slug)}.html">{esc(b.dataset)} · {esc(b.backbone)}'
             f"</a>, the missing cells are listed there): {esc(gaps_summary(g))}; resume: "
             f"<code>{esc(resume_text(g))}</code></li>" for b, g in runs if g.incomplete]
    if not items:
        return ""
    return ('<div id="mlfsic-incomplete" style="border: 2px solid #b00; padding: 0.2em 1em; margin: 1em 0">'
            f'<h2 style="color: #b00">INCOMPLETE</h2><ul>{"".join(items)}</ul></div>')


def _sorted_costs(costs: pd.DataFrame) -> pd.DataFrame:
    order = costs.assign(_s=[setting_order(s) for s in costs["setting"]])
    return order.sort_values(["dataset", "_s", "method", "backbone_id"], kind="stable").drop(columns="_s").reset_index(drop=True)


def build_site(dirs: list[Path], out: Path, reference_dir: Path | None = None, n_boot: int = 10000, seed: int = 0,
               progress: bool = False) -> dict[str, Path]:
    """Write the site of ``dirs`` (run or suite dirs) into ``out``; return {name: path} of what it wrote."""
    out = Path(out)
    run_dirs = expand_dirs(dirs)
    reported = load_reported(reference_dir)
    benchmarks = group_benchmarks(run_dirs)
    boards = [(b, summarise(list(b.run_dirs), reported, n_boot=n_boot, seed=seed, progress=progress)) for b in benchmarks]
    costs = {b.slug: _sorted_costs(cell_costs(list(b.run_dirs))) for b in benchmarks}
    gaps = {b.slug: run_gaps_of(list(b.run_dirs)) for b in benchmarks}
    methods = sorted({m for _, d in boards for m in d.cells.loc[d.cells["kind"] == "ours", "method"]})
    card_of = {m: f"methods/{slug(m)}.html" for m in methods}
    files: dict[str, str] = {}

    import plotly.offline

    files[PLOTLY_ASSET] = plotly.offline.get_plotlyjs()
    for benchmark, data in boards:
        stem = f"benchmarks/{benchmark.slug}"
        table = cost_table_rows(costs[benchmark.slug])
        files[f"{stem}.results.csv"] = leaderboard_csv(data)
        files[f"{stem}.results.json"] = _records_json(data.cells)
        files[f"{stem}.ranks.csv"] = data.average_ranks.to_csv(index=False, lineterminator="\n")
        files[f"{stem}.ranks.json"] = _records_json(data.average_ranks)
        files[f"{stem}.costs.csv"] = costs[benchmark.slug].to_csv(index=False, lineterminator="\n")
        files[f"{stem}.costs.json"] = _records_json(costs[benchmark.slug])
        cards = "".join(f'<a href="../{esc(card_of[m])}">{esc(m)}</a> ' for m in methods
                        if (data.cells["method"] == m).any())
        extra = ["<h2>Costs</h2>", f"<p>{esc(COSTS_NOTE)}</p>", html_table("mlfsic-costs", table),
                 _data_links(f"{benchmark.slug}.", ["costs"]), f"<h2>Method cards</h2><p>{cards}</p>"]
        before = [_nav("../"), f"<p>Runs: {esc(', '.join(p.name for p in benchmark.run_dirs))}; backbone "
                  f"<code>{esc(benchmark.backbone_id)}</code>.</p>",
                  _data_links(f"{benchmark.slug}.", ["results", "ranks"])]
        files[f"{stem}.html"] = render_page(data, plotly_src=f"../{PLOTLY_ASSET}",
                                            title=f"mlfsic: {benchmark.dataset} · {benchmark.backbone}",
                                            before=before, extra=extra, gaps=gaps[benchmark.slug])
    for method in methods:
        stem = card_of[method].removesuffix(".html")
        entries = _card_entries(method, boards)
        files[f"{stem}.hyperparameters.csv"], files[f"{stem}.hyperparameters.json"] = _text_table(
            _hyperparameter_rows(entries))
        files[card_of[method]] = method_card(method, entries, reported, Path(stem).name)
    columns, rows = overview(boards, costs)
    files["overview.csv"], files["overview.json"] = _overview_files(columns, rows)
    benchmark_rows = [["benchmark", "dataset", "backbone", "teacher regime", "backbone id", "runs", "methods", "settings"]]
    for benchmark, data in boards:
        ours = data.cells[data.cells["kind"] == "ours"]
        benchmark_rows.append([benchmark.slug, benchmark.dataset, benchmark.backbone, benchmark.regime,
                               benchmark.backbone_id[:12], " ".join(p.name for p in benchmark.run_dirs),
                               str(ours["method"].nunique()),
                               " ".join(sorted(set(ours["setting"]), key=setting_order))])
    files["benchmarks.csv"], files["benchmarks.json"] = _text_table(benchmark_rows)
    all_costs = pd.concat([costs[b.slug].assign(benchmark=b.slug) for b in benchmarks], ignore_index=True)
    files["costs.csv"] = all_costs.to_csv(index=False, lineterminator="\n")
    files["costs.json"] = _records_json(all_costs)
    benchmark_links = "".join(f'<li><a href="benchmarks/{esc(b.slug)}.html">{esc(b.dataset)} · {esc(b.backbone)}</a> '
                              f"({len(b.run_dirs)} run{'s' if len(b.run_dirs) != 1 else ''})</li>" for b in benchmarks)
    incomplete = incomplete_list([(b, g) for b in benchmarks for g in gaps[b.slug]])
    index = [
        page_head("mlfsic leaderboard site", style=SITE_STYLE),
        "<h1>mlfsic leaderboard (INCOMPLETE)</h1>" if incomplete else "<h1>mlfsic leaderboard</h1>",
        *([incomplete] if incomplete else []),
        "<p>mAP in percent ± half-width of its 95% interval, [rank] with marks: <b>=</b> tied with the column's best "
        "<b>*</b> significantly worse (paired bootstrap p, Holm-adjusted over the column's comparisons with its "
        "best, below 0.05), bold the best. A column "
        "is one (dataset, backbone, setting): methods are ranked only within a column (same episode sets and "
        "features), never across backbones. Rows marked <i>(reported)</i> are numbers printed in papers, never "
        "ranked. Each cell's small line and tooltip give its costs (below). Filter the columns with the boxes; click "
        "a header to sort.</p>",
        filters_block(columns), overview_table(columns, rows, card_of), _data_links("", ["overview"]),
        f"<p>Costs: {esc(COSTS_NOTE)}</p>", _data_links("", ["costs"]),
        f"<h2>Benchmarks</h2><ul>{benchmark_links}</ul>", html_table("mlfsic-benchmarks", benchmark_rows),
        _data_links("", ["benchmarks"]),
        "<h2>Method cards</h2><p>" + "".join(f'<a href="{esc(card_of[m])}">{esc(m)}</a> ' for m in methods) + "</p>",
        f"<script>{SORT_JS}</script>", f"<script>{FILTER_JS}</script>", "</body></html>",
    ]
    files["index.html"] = "\n".join(index) + "\n"
    paths = {}
    for name, text in sorted(files.items()):
        paths[name] = out / name
        write_text_atomic(paths[name], text)
    for folder in ("benchmarks", "methods"):  # pages of benchmarks or methods an earlier build had, now gone
        for stale in sorted((out / folder).glob("*")):
            if stale.is_file() and f"{folder}/{stale.name}" not in files:
                stale.unlink()
    return paths
