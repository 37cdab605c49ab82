"""The Ray sweep runner behind ``mlfsic run`` (docs/architecture.md §9): ``run_sweep`` / ``run_sweeps``.

Plain Ray tasks, no Tune: the driver resolves every job, skips what already exists and submits the rest.

    backbone   train the coco-moji CNN (or locate ResNet-50 weights)       once per dataset, cached
    warm-up    import the harness in every other task slot's worker        beside the backbone task
    features   one task per shard of images whose features are missing     once per (backbone, image)
    fit        one task per (method, seed)                                  checkpoint cached
    evaluate   one task per (method, setting, seed, chunk of ~100 episodes) parts/ in the run dir

Tasks receive a small ``Benchmark`` handle and read features from shared storage; they return small
results, which the driver writes as they arrive (``harness.sweep.store``). A method that raises or returns
bad scores fails its cell (error recorded in run.json), the sweep goes on, and the exit code says so.
Worker or node loss is retried by Ray (``max_retries``). Re-running the same command resumes.

With ``against`` (a reference run dir, ``harness.sweep.against_run``) the sweep is checked against the
reference before anything starts (config), after the dataset is read (annotations, split, episode sets;
before Ray starts) and after the backbone step (backbone id; before any feature, method task or record);
methods the reference holds with the same config and code are not computed.

This module is the entry; each job is a module of ``harness.sweep.driver``: Ray set-up (``ray_setup``), the
task bodies (``tasks``), preparation (``preparation``), the plan and its cost model (``planning``), the
collection loop (``collect``) and run.json (``run_record``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.sweep.driver.collect import collect
from mlfsic.harness.sweep.driver.planning import Plan, plan_and_submit
from mlfsic.harness.sweep.driver.preparation import Prepared, prepare_sweep
from mlfsic.harness.sweep.driver.ray_setup import task_device, task_options
from mlfsic.harness.sweep.driver.run_record import finish_run, record_interrupted, record_submission, write_run_info
from mlfsic.harness.sweep.spec import Sweep

__all__ = ["SweepOutcome", "run_sweep", "run_sweeps", "task_device", "task_options"]


@dataclass
class SweepOutcome:
    """A finished sweep: its run dir, the cells that failed (as run.json lists them) and the task counts."""

    run_path: Path
    failures: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def run_sweep(sweep: Sweep, progress: bool = True) -> SweepOutcome:
    """Run (or resume) ``sweep`` (see ``harness.sweep.resolve_sweep``); returns the run dir and any failed cells."""
    return run_sweeps([sweep], progress)[0]


def run_sweeps(sweeps: list[Sweep], progress: bool = True, desc: str = "sweep") -> list[SweepOutcome]:
    """Run (or resume) several sweeps as one Ray job graph (a suite, ``harness.sweep.suite``).

    Each sweep is prepared in turn (dataset, episode sets, backbone, features: sweeps on the same backbone
    and dataset find the features already stored), then the method tasks of all of them are submitted in
    one longest-first order and collected by one loop with one progress display. Each sweep keeps its own
    run dir, run.json and failures, exactly as when it runs alone. They must share Ray and task resources.
    """
    for other in sweeps[1:]:
        for key in ("ray", "resources", "max_retries"):
            if getattr(other, key) != getattr(sweeps[0], key):
                raise MlfsicError(f"{key}: every sweep of a suite runs on one Ray with the same task options; "
                                  f"run {other.run_id} has {getattr(other, key)}, run {sweeps[0].run_id} "
                                  f"{getattr(sweeps[0], key)}")
    prepared = [prepare_sweep(sweep, progress) for sweep in sweeps]
    plans = plan_and_submit([member.work for member in prepared], task_options(sweeps[0], "fit"),
                            task_options(sweeps[0], "evaluate"))
    for member, plan in zip(prepared, plans):
        record_submission(member.run_info, plan)
        write_run_info(member.sweep.run_path, member.run_info)
    try:
        collect(plans, progress, desc)
    except KeyboardInterrupt:
        for plan in plans:
            for ref in plan.pending:
                ray.cancel(ref, force=True)
        for member, plan in zip(prepared, plans):
            record_interrupted(member.run_info, plan)
        raise
    return [_finish(member, plan) for member, plan in zip(prepared, plans)]


def _finish(member: Prepared, plan: Plan) -> SweepOutcome:
    """Assemble the run dir's tables, write the final run.json, and say how the sweep ended."""
    finish_run(member.run_info, plan, member.work.benchmark, member.started, member.prepared, len(member.all_ids))
    return SweepOutcome(run_path=plan.run_path, failures=list(plan.failures.values()), counts=plan.counts)
