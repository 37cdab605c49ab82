"""What each leaderboard cell cost to compute (docs/architecture.md §10), from the run dirs alone.

One row per (dataset, setting, method, protocol, backbone_id, embedding_id), the keys a method's cell
group is made of (``stats``), over the episodes the board keeps after merging runs (``stats.merge_runs``):

    fit_s            sum over the method's fits (one per run and seed) of run.json ``fit_seconds["<method>/seed<k>"]``
                     (records ``fit_s`` where run.json lacks the key): wall seconds of ``Method.fit`` when the
                     checkpoint was made (a fit reused from the cache reports the seconds it took then). One fit
                     serves every setting of its method and seed, so each setting's row repeats it.
    predict_s        sum over episodes of records ``predict_s`` (its chunk's wall seconds of predict per episode)
    episodes_per_s   episodes / predict_s
    predict_cpu_s    predict_s x the run's CPU/wall ratio of its evaluation chunks (run.json ``evaluate_chunk_s``:
                     CPU and wall seconds summed over the chunks that invocation computed); an estimate, empty when
                     the run computed no chunk. The CPU time of fits is not recorded.
    gpu_s            fit_s x the GPUs a fit task asked for + predict_s x the GPUs an evaluate task asked for (run.json
                     ``stage_resources``; a run recorded before it: ``config.resources.num_gpus`` for both): the
                     GPU-seconds the tasks held (0 on a CPU run)
    num_gpus         the largest GPU share a fit or evaluate task of the rows' runs asked for

``COSTS_NOTE`` says the same on the pages that show the figures.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from mlfsic.harness.report.stats import FEATURE_COLUMNS, load_runs, merge_runs
from mlfsic.harness.sweep.store import read_run_json

COST_KEYS = ["dataset", "setting", "method", *FEATURE_COLUMNS]
COST_COLUMNS = [*COST_KEYS, "n_episodes", "n_fits", "fit_s", "predict_s", "episodes_per_s", "predict_cpu_s", "gpu_s",
                "num_gpus"]
COSTS_NOTE = (
    "Where the cost figures come from: fit s = run.json fit_seconds['<method>/seed<k>'] summed over the method's "
    "fits (records fit_s where run.json lacks the key), the wall seconds of Method.fit when its checkpoint was made "
    "(a reused checkpoint reports the seconds it took then); one fit serves every setting of its method and seed, "
    "so each setting repeats it. predict s = the sum over episodes of records predict_s (each chunk's predict wall "
    "seconds per episode); episodes/s = episodes / predict s. Predict CPU-s = predict s x the run's CPU/wall ratio "
    "of its evaluation chunks (run.json evaluate_chunk_s, summed over the chunks that invocation computed), an "
    "estimate; the CPU time of fits is not recorded. GPU-s = fit s x the GPUs a fit task asked for + predict s x "
    "the GPUs an evaluate task asked for (run.json stage_resources; config.resources.num_gpus for both in a run "
    "recorded before it), the GPU-seconds the tasks held: 0 on a CPU run (num_gpus 0)."
)


def _run_facts(info: dict[str, Any]) -> dict[str, Any]:
    resources = (info.get("config") or {}).get("resources") or {}
    every_task = float(resources.get("num_gpus") or 0.0)  # before stage_resources, every task asked for this
    stages = info.get("stage_resources") or {}
    fit_gpus = float((stages.get("fit") or {}).get("num_gpus", every_task))
    evaluate_gpus = float((stages.get("evaluate") or {}).get("num_gpus", every_task))
    chunks = info.get("evaluate_chunk_s") or {}
    wall, cpu = float(chunks.get("wall") or 0.0), float(chunks.get("cpu") or 0.0)
    return {"fit_seconds": info.get("fit_seconds") or {}, "fit_gpus": fit_gpus, "evaluate_gpus": evaluate_gpus,
            "num_gpus": max(fit_gpus, evaluate_gpus), "cpu_per_wall": cpu / wall if wall > 0.0 else math.nan}


def cell_costs(run_dirs: list[Path]) -> pd.DataFrame:
    """``COST_COLUMNS``, one row per method's cell, sorted by ``COST_KEYS``."""
    records, label_ap, _ = load_runs([Path(d) for d in run_dirs])
    facts = {}
    for run_dir in run_dirs:
        info = read_run_json(Path(run_dir))
        facts[str(info["run_id"])] = _run_facts(info)
    if records.empty:
        return pd.DataFrame(columns=COST_COLUMNS)
    records = records.assign(registered_name=records["method"])
    kept, _ = merge_runs(records, label_ap)
    rows = []
    for key, cell in kept.groupby(COST_KEYS, sort=True):
        fit_s = gpu_s = predict_cpu_s = 0.0
        fits = cell.groupby(["run_id", "registered_name", "seed"], sort=True)["fit_s"].first()
        for (run_id, name, seed), recorded in fits.items():
            run = facts[run_id]
            seconds = float(run["fit_seconds"].get(f"{name}/seed{seed}", recorded))
            fit_s += seconds
            gpu_s += seconds * run["fit_gpus"]
        for run_id, part in cell.groupby("run_id", sort=True):
            seconds = float(part["predict_s"].sum())
            predict_cpu_s += seconds * facts[run_id]["cpu_per_wall"]
            gpu_s += seconds * facts[run_id]["evaluate_gpus"]
        predict_s = float(cell["predict_s"].sum())
        rows.append({**dict(zip(COST_KEYS, key)), "n_episodes": int(len(cell)), "n_fits": int(len(fits)),
                     "fit_s": fit_s, "predict_s": predict_s,
                     "episodes_per_s": len(cell) / predict_s if predict_s > 0.0 else math.nan,
                     "predict_cpu_s": predict_cpu_s, "gpu_s": gpu_s,
                     "num_gpus": max(facts[r]["num_gpus"] for r in cell["run_id"].unique())})
    return pd.DataFrame(rows, columns=COST_COLUMNS)


def seconds_text(value: float) -> str:
    """``0.42``, ``36.4``, ``1234``: seconds with about three significant digits; ``n/a`` when unknown."""
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}" if abs(value) < 1000 else f"{value:.0f}"


def cost_summary(row: Any) -> str:
    """One line for a tooltip: fit, predict rate, predict CPU-s, GPU-s."""
    gpu = "0 (CPU run)" if row.num_gpus == 0 else f"{seconds_text(row.gpu_s)} (num_gpus {row.num_gpus:g})"
    return (f"fit {seconds_text(row.fit_s)} s ({row.n_fits} fits) · predict {seconds_text(row.episodes_per_s)} "
            f"episodes/s ({seconds_text(row.predict_s)} s) · predict CPU-s {seconds_text(row.predict_cpu_s)} (est.) "
            f"· GPU-s {gpu}")


def cost_table_rows(costs: pd.DataFrame) -> list[list[str]]:
    """The costs table as shown: one list of texts per row, the header first."""
    out = [["dataset", "setting", "method", "episodes", "fits", "fit s", "predict s", "episodes/s",
            "predict CPU-s (est.)", "GPU-s", "num_gpus"]]
    for row in costs.itertuples(index=False):
        out.append([row.dataset, row.setting, row.method, str(row.n_episodes), str(row.n_fits), seconds_text(row.fit_s),
                    seconds_text(row.predict_s), seconds_text(row.episodes_per_s), seconds_text(row.predict_cpu_s),
                    seconds_text(row.gpu_s), f"{row.num_gpus:g}"])
    return out
