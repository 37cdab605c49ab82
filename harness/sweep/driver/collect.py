"""Collecting the method tasks' results: a ``ray.wait`` loop over every plan's refs that files each finished
task into its plan (a chunk's part written at once, a failure recorded against its cells)."""

from __future__ import annotations

import sys
from typing import Any

import ray

from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.sweep.driver.planning import Plan, Task
from mlfsic.harness.sweep.driver.progress import Progress
from mlfsic.harness.sweep.driver.run_record import failure
from mlfsic.harness.sweep.driver.tasks import HARD_EXIT_GRACE_S
from mlfsic.harness.sweep.store import cell_key, write_chunk

COLLECT_ROUND_S = 0.25  # collect takes the results that are ready within this, per round


def collect(plans: list[Plan], progress: bool, desc: str = "sweep") -> None:
    """Write results as they arrive (``ray.wait`` loop over every plan's tasks, one progress display); a failed
    fit or chunk fails its cells only.

    The driver only waits and writes each finished chunk as a part; it does not re-assemble
    records.parquet while tasks run (that is done once, at the end or on Ctrl-C), so on a small machine
    the CPUs stay with the tasks. Off a terminal, a heartbeat line (tasks done, in flight, failed, elapsed)
    comes at least every ``progress.HEARTBEAT_S`` seconds, however long a task runs.
    """
    owner = {ref: plan for plan in plans for ref in plan.pending}
    bar = Progress(desc, len(owner), "tasks", progress)
    refs = list(owner)
    failed = 0
    while refs:
        # One round takes every result ready within COLLECT_ROUND_S: a round costs O(pending refs) in
        # ray.wait, so rounds are bounded by time, not one per finished task (that was O(tasks^2) over a
        # sweep of 10,000 tiny tasks); the pending list is what ray.wait leaves, never rebuilt.
        ready, refs = ray.wait(refs, num_returns=len(refs), timeout=COLLECT_ROUND_S)
        for ref in ready:
            plan = owner.pop(ref)
            task = plan.pending.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as error:  # retries exhausted: worker/node lost, OOM, ...
                result = ray_failure_text(error)
            bar.update(1)
            failed += isinstance(result, str)
            file_result(plan, task, result)
        bar.heartbeat(len(refs), failed)
    totals = {key: sum(plan.counts[key] for plan in plans) for key in plans[0].counts} if plans else {}
    if totals:
        bar.close(f"{totals['chunks_total']} chunks ({totals['chunks_skipped']} skipped, {totals['chunks_submitted']} "
                  f"computed), {totals['fit_tasks']} fits ({totals['fits_cached']} from checkpoints)")


def file_result(plan: Plan, task: Task, result: Any) -> None:
    """One finished task into its plan: a failure (a string) fails its cells, a fit its timings and device, a chunk
    its part and device."""
    if isinstance(result, str):  # a fit fails all its settings' cells, a chunk its own cell
        for setting in task.settings:
            plan.failures.setdefault(cell_key(task.method, setting, task.seed),
                                     failure(task.method, plan.dataset, setting, task.seed, result))
    elif task.kind == "fit":
        if result.note:  # a cached checkpoint was refused and refitted: say so
            print(result.note, file=sys.stderr, flush=True)
        plan.fit_seconds[f"{task.method}/seed{task.seed}"] = result.fit_s
        plan.fit_devices[f"{task.method}/seed{task.seed}"] = result.device
        if result.report:
            plan.fit_reports[f"{task.method}/seed{task.seed}"] = result.report
        plan.counts["fits_cached" if result.cached else "fits_trained"] += 1
    elif cell_key(task.method, task.settings[0], task.seed) not in plan.failures:
        assert task.part is not None
        write_chunk(plan.run_path, task.part, result)
        plan.chunk_seconds["n_chunks"] += 1
        plan.chunk_seconds["wall"] += result.task_s
        plan.chunk_seconds["cpu"] += result.task_cpu_s
        devices = plan.chunk_devices.setdefault(cell_key(task.method, task.settings[0], task.seed), {})
        devices[result.device] = devices.get(result.device, 0) + 1


def get_or_raise(ref: Any) -> Any:
    """``ray.get`` for harness tasks: an MlfsicError inside the task stays a one-line MlfsicError."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, MlfsicError):
            raise MlfsicError(str(error.cause)) from None
        raise


def ray_failure_text(error: Exception) -> str:
    """One line for a task Ray could not complete (after ``max_retries``): memory kills said as such."""
    first = (str(error).strip().splitlines() or [""])[0]
    if isinstance(error, ray.exceptions.OutOfMemoryError):
        return f"out of memory: Ray's memory monitor killed the worker ({first})"
    if isinstance(error, ray.exceptions.WorkerCrashedError):
        return (f"worker died (killed, out of memory outside Ray's monitor, or stuck past task_timeout_s + "
                f"{HARD_EXIT_GRACE_S:g} s in native code): {first}")
    return f"{type(error).__name__}: {first}"
