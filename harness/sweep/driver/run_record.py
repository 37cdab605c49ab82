"""run.json of a sweep's run dir: what the first write holds (config, provenance, dataset, backbone, leakage
check), the submission counts, the final record and the interrupted one. Every write keeps the invocations
another process of the same run id recorded meanwhile (``write_run_info``)."""

from __future__ import annotations

import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import ray

from mlfsic.harness.backbones.embeddings import embedding_id
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.io import canonical_json, file_lock
from mlfsic.harness.protocol.data import Dataset
from mlfsic.harness.protocol.episodes import EpisodeSetRef
from mlfsic.harness.protocol.metrics import METRIC_VERSION
from mlfsic.harness.provenance import git_state, hardware, package_versions
from mlfsic.harness.sweep import against_run
from mlfsic.harness.sweep.benchmark import Benchmark
from mlfsic.harness.sweep.driver.planning import Plan
from mlfsic.harness.sweep.evaluate import PRECISION, MethodSpec
from mlfsic.harness.sweep.spec import Sweep
from mlfsic.harness.sweep.store import assemble, assembled_cells, cell_of, predict_reports, read_run_json, write_run_json


def new_run_info(sweep: Sweep, dataset: Dataset, split: dict[str, list[str]], specs: dict[str, MethodSpec],
                 episode_sets: list[EpisodeSetRef], benchmark: Benchmark, weights: str | None,
                 backbone_report: dict[str, Any], leakage: dict[str, Any],
                 reference: against_run.Reference | None, prefix: dict[str, Any] | None) -> dict[str, Any]:
    """run.json as the prepared sweep writes it first (status ``running``), with this invocation appended to
    the earlier ones of the run (resume)."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    previous = previous_run_info(sweep.run_path)
    invocation = {"started": now, "host": socket.gethostname(), "pid": os.getpid(), "git": git_state(),
                  **command_line()}
    return {
        "run_id": sweep.run_id, "created": previous.get("created", now),
        "invocations": [*previous.get("invocations", []), invocation],
        "config": sweep.config,
        "methods": {n: {"method": s.method, "config": s.config, "config_hash": s.config_hash} for n, s in specs.items()},
        "git": git_state(), "versions": package_versions(), "hardware": hardware(),
        "ray": {"address": sweep.ray.address, "cluster_resources": ray.cluster_resources()},
        "stage_resources": sweep.resources.as_record(),  # what each stage's tasks asked Ray for
        "episode_sets": {ref.key: ref.episode_set_id for ref in episode_sets},
        "backbone": {"id": benchmark.backbone_id, "weights": weights, **backbone_report},
        "embedding_id": embedding_id(benchmark.embedding_encoder, benchmark.embedding_path),
        "dataset": {"name": dataset.name, "annotation_sha256": dataset.annotation_sha256,
                    "split_sha256": against_run.split_sha256(split)},
        "metric_version": METRIC_VERSION,
        **({"against": {"path": str(reference.path), "run_id": reference.run_id, "commit": reference.commit,
                        "published": reference.published, **({"prefix": prefix} if prefix else {})}}
           if reference is not None else {}),
        "leakage_check": leakage, "failures": [], "status": "running",
    }


def command_line() -> dict[str, Any]:
    """This process's ``mlfsic`` arguments (``argv``: ``["run", OVERRIDES...]``) and working directory, for
    run.json's invocation: the command that resumes the run (shown on the leaderboard of an incomplete run,
    ``store.resume_command``). {} when the process was not started as ``mlfsic run`` (a test or a script
    calling ``run_sweep``)."""
    if sys.argv[1:2] != ["run"]:
        return {}
    return {"argv": ["run", *sys.argv[2:]], "cwd": os.getcwd()}


def record_submission(run_info: dict[str, Any], plan: Plan) -> None:
    """What was submitted (counts on this invocation) and every cell the run is to hold."""
    run_info["invocations"][-1].update(chunks_submitted=plan.counts["chunks_submitted"],
                                       fits_submitted=plan.counts["fit_tasks"])
    # every (method, setting, seed) the sweep is to hold: a leaderboard names the cells a run lacks
    run_info["planned_cells"] = sorted({cell_of(name) for name in plan.planned_parts})


def record_interrupted(run_info: dict[str, Any], plan: Plan) -> None:
    """Ctrl-C: assemble the parts written so far and write run.json with status ``interrupted``."""
    assemble(plan.run_path, plan.planned_parts, set(plan.failures))
    run_info.update(status="interrupted", failures=list(plan.failures.values()))
    write_run_info(plan.run_path, run_info)


def finish_run(run_info: dict[str, Any], plan: Plan, benchmark: Benchmark, started: float, prepared: float,
               n_feature_images: int) -> None:
    """Assemble the run dir's tables and write the final run.json (``started``, ``prepared``: the times the
    sweep started and its method tasks could start)."""
    from mlfsic.harness.sweep.features import forward_passes

    run_path, failures = plan.run_path, plan.failures
    records = assemble(run_path, plan.planned_parts, set(failures))
    run_info.update(
        status="failed" if failures else "complete", failures=list(failures.values()), counts=plan.counts,
        fit_seconds=plan.fit_seconds, fit_reports=plan.fit_reports, wall_s=round(time.time() - started, 3),
        n_records=int(len(records)),
        phase_s={"prepare": round(prepared - started, 3),
                 "fit_and_evaluate": round(time.time() - prepared, 3)},
        evaluate_chunk_s={key: round(value, 3) for key, value in plan.chunk_seconds.items()},
        devices=devices_record(plan),
        predict_reports=predict_reports(run_path, [n for n in plan.planned_parts if cell_of(n) in assembled_cells(records)]),
        forward_passes=forward_passes(Path(benchmark.feature_root), benchmark.backbone_id, benchmark.annotation_sha256),
        n_feature_images=n_feature_images,
    )
    write_run_info(run_path, run_info)


def devices_record(plan: Plan) -> dict[str, Any]:
    """run.json's ``devices``: the device each fit computed on (``fits``: "<method>/seed<k>" -> "cpu" | "cuda"),
    per cell how many of the chunks computed by this invocation ran on each device (``evaluate_chunks``), and
    the arithmetic (``dtype`` float32, ``mixed_precision`` false: no method uses autocast or half precision)."""
    return {"fits": dict(sorted(plan.fit_devices.items())),
            "evaluate_chunks": {cell: dict(sorted(counts.items())) for cell, counts in sorted(plan.chunk_devices.items())},
            **PRECISION}


def write_run_info(run_path: Path, run_info: dict[str, Any]) -> None:
    """Write run.json, keeping the invocations another process of the same run id recorded meanwhile.

    Two ``mlfsic run`` of the same run id may run at once (users of a shared results dir); under a lock,
    each write merges the invocation list on disk into its own, so neither invocation is lost.
    """
    with file_lock(run_path / ".run.lock"):
        on_disk = previous_run_info(run_path)
        mine = {canonical_json(item) for item in run_info["invocations"]}
        others = [item for item in on_disk.get("invocations", []) if canonical_json(item) not in mine]
        if others:
            run_info["invocations"] = sorted([*run_info["invocations"], *others], key=lambda i: str(i.get("started")))
            run_info["created"] = min(str(run_info["created"]), str(on_disk.get("created", run_info["created"])))
        write_run_json(run_path, run_info)


def previous_run_info(run_path: Path) -> dict[str, Any]:
    """run.json of an earlier invocation of this run (resume), or {}."""
    try:
        return read_run_json(run_path, required=())
    except MlfsicError:  # none yet, or a half-written one from an interrupted write: start afresh
        return {}


def failure(method: str, dataset: str, setting: str, seed: int, error: str) -> dict[str, Any]:
    """A failed cell as run.json's ``failures`` lists it."""
    return {"method": method, "dataset": dataset, "setting": setting, "seed": seed, "error": error}
