"""The plan of a sweep's method tasks: a fit per (method, seed) with unfinished chunks and an evaluate task per
unfinished chunk, submitted longest first by their measured cost (``TaskCosts``); one ``Plan`` per sweep
holds the submitted refs and what their results add up to."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray

from mlfsic.harness.protocol.episodes import EpisodeSetRef
from mlfsic.harness.sweep.benchmark import Benchmark
from mlfsic.harness.sweep.driver.tasks import evaluate_task, fit_task
from mlfsic.harness.sweep.evaluate import MethodSpec
from mlfsic.harness.sweep.spec import Sweep
from mlfsic.harness.sweep.store import chunk_done, chunk_name, read_run_json
from mlfsic.methods.registry import get_method_class


@dataclass(frozen=True)
class SweepWork:
    """A prepared sweep as planning sees it: the sweep, its benchmark handle, its method specs and episode sets."""

    sweep: Sweep
    benchmark: Benchmark
    specs: dict[str, MethodSpec]  # sweep name (a method or a variant) -> spec
    episode_sets: list[EpisodeSetRef]


@dataclass(frozen=True)
class Task:
    """What a submitted task computes: a fit of (method, seed) or one chunk of a (method, setting, seed) cell."""

    kind: str  # "fit" or "evaluate"
    method: str  # the sweep's name (a registered method or a variant)
    seed: int
    settings: tuple[str, ...]  # fit: the settings its failure fails; evaluate: the chunk's setting
    part: str | None = None  # evaluate: the part name


@dataclass
class Plan:
    """One sweep's submitted work: pending task refs, the part names its run dir should end up with, and what
    its finished tasks reported (a suite collects several plans at once)."""

    run_path: Path
    dataset: str
    pending: dict[Any, Task] = field(default_factory=dict)
    planned_parts: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {
        "fit_tasks": 0, "fits_trained": 0, "fits_cached": 0, "chunks_total": 0, "chunks_skipped": 0,
        "chunks_submitted": 0})
    failures: dict[str, dict[str, Any]] = field(default_factory=dict)
    fit_seconds: dict[str, float] = field(default_factory=dict)
    fit_reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Summed over the chunks computed now: wall - cpu is time their processes were runnable but not running.
    chunk_seconds: dict[str, float] = field(default_factory=lambda: {"n_chunks": 0, "wall": 0.0, "cpu": 0.0})
    # The device each fit computed on ("<method>/seed<k>" -> "cpu" | "cuda"; a cached fit: the one it was made on)
    # and, per cell, how many of the chunks computed now ran on each device (cell key -> {device: chunks}).
    fit_devices: dict[str, str] = field(default_factory=dict)
    chunk_devices: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class ChunkJob:
    """An unfinished chunk: episodes ``indices`` of ``episode_set``, written as part ``part`` of the run dir."""

    episode_set: EpisodeSetRef
    part: str
    indices: tuple[int, ...]


@dataclass(frozen=True)
class FitJob:
    """A (method, seed) of one sweep with unfinished chunks: its fit and, after it, those chunks."""

    plan: Plan
    work: SweepWork
    name: str  # the sweep's name (a registered method or a variant)
    spec: MethodSpec
    seed: int
    settings: tuple[str, ...]  # the sweep's settings the method supports: a failed fit fails all of them
    chunks: tuple[ChunkJob, ...]


@dataclass(frozen=True)
class QueuedChunk:
    """A chunk waiting for submission, with the ref of its fit and its estimated seconds (the order key)."""

    estimate_s: float
    order: int  # position in the queue: ties keep submission order
    fit: FitJob
    fit_ref: Any  # ray.ObjectRef of the fit's result
    chunk: ChunkJob


@dataclass(frozen=True)
class TaskCosts:
    """Measured task seconds for scheduling: per registered method the mean fit, per (method, setting) the mean
    ``predict`` seconds of an episode. From the published run (results/published: the default sweep, measured on
    this project's reference machine); a method or setting it lacks gets the median of what it holds (or 1 s).
    Only the submission order depends on these figures, never a result."""

    fit: dict[str, float]
    episode: dict[tuple[str, str], float]

    @staticmethod
    def published() -> TaskCosts:
        import pandas as pd

        from mlfsic.harness.sweep.spec import PUBLISHED_DIR

        try:
            info = read_run_json(PUBLISHED_DIR)
            records = pd.read_parquet(PUBLISHED_DIR / "records.parquet", columns=["method", "setting", "predict_s"])
        except Exception:  # no published run next to this install: every task costs the same
            return TaskCosts({}, {})
        fit: dict[str, list[float]] = {}
        for key, seconds in (info.get("fit_seconds") or {}).items():
            fit.setdefault(key.split("/")[0], []).append(float(seconds))
        episode = records.groupby(["method", "setting"])["predict_s"].mean()
        return TaskCosts({name: float(np.mean(values)) for name, values in fit.items()},
                         {(str(m), str(s)): float(v) for (m, s), v in episode.items()})

    def fit_s(self, method: str) -> float:
        return self.fit.get(method, float(np.median(list(self.fit.values()))) if self.fit else 1.0)

    def episode_s(self, method: str, setting: str) -> float:
        default = float(np.median(list(self.episode.values()))) if self.episode else 1.0
        return self.episode.get((method, setting), default)


def plan_fits(works: list[SweepWork]) -> tuple[list[Plan], list[FitJob]]:
    """One plan per sweep (every part it should hold, counted) and the fits whose cells have unfinished chunks.

    A chunk whose part is already in the run dir is skipped (resume); chunk boundaries are ``chunk_episodes``.
    """
    plans, fits = [], []
    for work in works:
        sweep = work.sweep
        plan = Plan(run_path=sweep.run_path, dataset=sweep.dataset_name)
        plans.append(plan)
        chunk_size = sweep.chunk_episodes
        sets = {(ref.setting, ref.seed): ref for ref in work.episode_sets}
        for name, spec in work.specs.items():
            cls = get_method_class(spec.method)
            supported = tuple(s for s in sweep.settings if cls.supports(s))
            for seed in sweep.seeds:
                todo = []
                for setting in supported:
                    episode_set = sets[(setting, seed)]
                    for chunk, start in enumerate(range(0, episode_set.n_episodes, chunk_size)):
                        part = chunk_name(name, setting, seed, spec.config_hash, chunk)
                        plan.planned_parts.append(part)
                        plan.counts["chunks_total"] += 1
                        if chunk_done(sweep.run_path, part):
                            plan.counts["chunks_skipped"] += 1
                            continue
                        indices = tuple(range(start, min(start + chunk_size, episode_set.n_episodes)))
                        todo.append(ChunkJob(episode_set=episode_set, part=part, indices=indices))
                if todo:
                    fits.append(FitJob(plan=plan, work=work, name=name, spec=spec, seed=seed, settings=supported,
                                       chunks=tuple(todo)))
    return plans, fits


def plan_and_submit(works: list[SweepWork], fit_options: dict[str, Any], evaluate_options: dict[str, Any]) -> list[Plan]:
    """Submit, for each sweep, a fit per (method, seed) with unfinished chunks and an evaluate task per unfinished
    chunk, each with its stage's Ray options (``ray_setup.task_options``); one plan per sweep.

    Longest processing time first (``TaskCosts``), across all the sweeps: fits in order of their measured cost,
    then every chunk in order of its estimated seconds, so the tail is short chunks that fill the last free
    slots rather than one heavy chunk that keeps a single worker busy while the others idle. Order changes no
    result (each task is deterministic and single-threaded); chunk boundaries stay ``chunk_episodes``.
    """
    costs = TaskCosts.published()
    plans, fits = plan_fits(works)

    # One remote function each, made once: ``ray.remote`` per task cost the driver ~4x its submission time.
    fit_remote = ray.remote(fit_task).options(**fit_options)
    evaluate_remote = ray.remote(evaluate_task).options(**evaluate_options)
    queue: list[QueuedChunk] = []
    for fit in sorted(fits, key=lambda job: -costs.fit_s(job.spec.method)):
        sweep = fit.work.sweep
        fit_ref = fit_remote.remote(fit.work.benchmark, fit.spec, fit.seed, str(sweep.cache_root), sweep.eval_split,
                                    sweep.fit_val, sweep.task_timeout_s)
        fit.plan.pending[fit_ref] = Task("fit", fit.name, fit.seed, fit.settings)
        fit.plan.counts["fit_tasks"] += 1
        for chunk in fit.chunks:
            estimate = costs.episode_s(fit.spec.method, chunk.episode_set.setting) * len(chunk.indices)
            queue.append(QueuedChunk(estimate_s=estimate, order=len(queue), fit=fit, fit_ref=fit_ref, chunk=chunk))
    for queued in sorted(queue, key=lambda q: (-q.estimate_s, q.order)):
        fit, chunk, sweep = queued.fit, queued.chunk, queued.fit.work.sweep
        ref = evaluate_remote.remote(
            fit.work.benchmark, fit.spec, fit.seed, chunk.episode_set.setting, str(chunk.episode_set.path),
            list(chunk.indices), queued.fit_ref, sweep.run_id, sweep.save_scores, sweep.task_timeout_s,
        )
        fit.plan.pending[ref] = Task("evaluate", fit.name, fit.seed, (chunk.episode_set.setting,), chunk.part)
        fit.plan.counts["chunks_submitted"] += 1
    return plans
