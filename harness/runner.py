"""The Ray sweep runner behind ``mlfsic run`` (DESIGN 9).

Plain Ray tasks, no Tune: the driver resolves every job, skips what already exists and submits the rest.

    backbone   train the coco-moji CNN (or locate ResNet-50 weights)       once per dataset, cached
    features   one task per shard of images whose features are missing     once per (backbone, image)
    fit        one task per (method, seed)                                  checkpoint cached
    evaluate   one task per (method, setting, seed, chunk of ~100 episodes) parts/ in the run dir

Tasks receive a small ``Benchmark`` handle and read features from shared storage; they return small
results, which the driver writes as they arrive (``harness.store``). A method that raises or returns
bad scores fails its cell (error recorded in run.json), the sweep goes on, and the exit code says so.
Worker or node loss is retried by Ray (``max_retries``). Re-running the same command resumes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import ray
from omegaconf import DictConfig
from tqdm import tqdm

from mlfsic.harness.benchmark import Benchmark
from mlfsic.harness.config import as_list, method_config, method_names, plain, settings_of, split_name, to_container
from mlfsic.harness.data import split_pool
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.evaluate import (
    FitResult,
    MethodFailure,
    MethodSpec,
    evaluate_episodes,
    fit_method,
    fit_splits,
    method_spec,
)
from mlfsic.harness.io import sha256_json
from mlfsic.harness.prepare import backbone_weights, load_dataset_and_split, make_benchmark
from mlfsic.harness.provenance import git_state, hardware, package_versions
from mlfsic.harness.store import ChunkResult, assemble, cell_key, cell_of, chunk_done, chunk_name, write_chunk, write_run_json
from mlfsic.methods.api import parse_setting
from mlfsic.methods.registry import get_method_class

FEATURE_SHARD_IMAGES = 2048
RUN_ID_IGNORED_KEYS = ("ray", "resources", "results_dir", "run_id", "max_retries")


# ----------------------------------------------------------------------------------------- Ray set-up
def init_ray(cfg: DictConfig) -> None:
    """Local Ray with explicit CPUs and a capped object store, or connect to ``ray.address``."""
    if ray.is_initialized():
        return
    address = cfg.ray.get("address")
    if address:
        ray.init(address=str(address), log_to_driver=False)
        return
    ray.init(
        num_cpus=int(cfg.ray.num_cpus) if cfg.ray.get("num_cpus") else os.cpu_count(),
        object_store_memory=int(cfg.ray.object_store_memory),
        include_dashboard=False,
        log_to_driver=False,
    )


def check_resources(resources: dict[str, Any]) -> None:
    """Reject a per-task request no node of the cluster can satisfy, before anything is submitted."""
    need_cpus = float(resources.get("num_cpus") or 0)
    need_gpus = float(resources.get("num_gpus") or 0)
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    total = ray.cluster_resources()
    if need_gpus > 0 and not any(node.get("GPU", 0) >= need_gpus for node in nodes):
        raise MlfsicError(
            f"resources.num_gpus={need_gpus:g} requested, but no node of the Ray cluster has that many GPUs "
            f"(cluster GPUs: {total.get('GPU', 0):g}); set resources.num_gpus=0 or connect to a GPU cluster"
        )
    if need_cpus > 0 and not any(node.get("CPU", 0) >= need_cpus for node in nodes):
        raise MlfsicError(
            f"resources.num_cpus={need_cpus:g} requested, but no node of the Ray cluster has that many CPUs "
            f"(largest node: {max((n.get('CPU', 0) for n in nodes), default=0):g})"
        )


def _set_threads(num_cpus: float) -> None:
    import torch

    torch.set_num_threads(max(1, int(num_cpus)))


# ----------------------------------------------------------------------------------------- tasks
def _backbone_task(dataset_cfg: dict[str, Any], cache_root: str) -> tuple[str | None, dict[str, Any]]:
    from omegaconf import OmegaConf

    _set_threads(os.cpu_count() or 1)  # runs alone, before any other task of the sweep
    cfg = OmegaConf.create(dataset_cfg)
    dataset, split = load_dataset_and_split(cfg, progress=False)
    path, report = backbone_weights(dataset, split, plain(cfg.backbone), Path(cache_root), progress=False)
    return (str(path) if path else None), report


def _features_task(benchmark: Benchmark, image_ids: np.ndarray, num_cpus: float) -> int:
    from mlfsic.harness.backbones import load_backbone
    from mlfsic.harness.features import extract_shard

    _set_threads(num_cpus)
    backbone = load_backbone(benchmark.backbone_config, Path(benchmark.backbone_weights) if benchmark.backbone_weights else None)
    extract_shard(backbone, benchmark.dataset(), image_ids, Path(benchmark.feature_root), progress=False)
    return len(image_ids)


def _fit_task(benchmark: Benchmark, spec: MethodSpec, seed: int, cache_root: str, eval_split: str) -> FitResult | str:
    _set_threads(1)  # one thread: results do not depend on how many CPUs a task was given
    try:
        return fit_method(benchmark, spec, seed, Path(cache_root), eval_split)
    except Exception as error:  # any error fails this method's cells, never the sweep
        return _error_text(error)


def _evaluate_task(
    benchmark: Benchmark, spec: MethodSpec, seed: int, setting: str, episode_set_path: str, indices: list[int],
    fit: FitResult | str, run_id: str, save_scores: bool,
) -> ChunkResult | str:
    if isinstance(fit, str):
        return fit
    _set_threads(1)
    try:
        return evaluate_episodes(benchmark, spec, seed, setting, episode_set_path, indices, fit, run_id, save_scores)
    except Exception as error:
        return _error_text(error)


def _error_text(error: Exception) -> str:
    if isinstance(error, (MethodFailure, MlfsicError)):
        return str(error)
    return f"{type(error).__name__}: {error}"


# ----------------------------------------------------------------------------------------- the sweep
@dataclass
class SweepOutcome:
    run_path: Path
    failures: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def derive_run_id(cfg: DictConfig) -> str:
    if cfg.get("run_id"):
        return str(cfg.run_id)
    content = {k: v for k, v in to_container(cfg).items() if k not in RUN_ID_IGNORED_KEYS}
    return f"{cfg.dataset.name}-{sha256_json(content)[:12]}"


@dataclass
class _Plan:
    """What the driver submitted: pending task refs and the part names the run dir should end up with."""

    pending: dict[Any, tuple[str, str, int, str | None]]  # ref -> (kind, method, seed, part name)
    planned_parts: list[str]
    counts: dict[str, int]


def run_sweep(cfg: DictConfig, progress: bool = True) -> SweepOutcome:
    """Run (or resume) the sweep described by ``cfg``; returns the run dir and any failed cells."""
    results_dir = Path(str(cfg.results_dir)).resolve()
    cache_root = results_dir / "cache"
    settings = settings_of(cfg)
    seeds = [int(s) for s in ([cfg.seed] if cfg.get("seed") is not None else as_list(cfg.seeds))]
    names = method_names(cfg)
    resources = plain(cfg.resources)
    options = {"num_cpus": float(resources.get("num_cpus") or 1), "num_gpus": float(resources.get("num_gpus") or 0),
               "max_retries": int(cfg.max_retries)}
    run_id = derive_run_id(cfg)
    run_path = results_dir / "runs" / run_id
    started = time.time()

    init_ray(cfg)
    check_resources(resources)

    # Driver: dataset, split, leakage check. Then the backbone (a task: it may want the GPU) and features.
    dataset, split = load_dataset_and_split(cfg.dataset, progress=progress)
    from mlfsic.harness.features import forward_passes
    from mlfsic.harness.leakage import check_no_leakage

    eval_split = split_name(str(cfg.eval_split))
    pools = {name: split_pool(dataset, name, split[name]) for name in ("base", "val", "test")}
    leakage = check_no_leakage(dataset, pools["base"], [pools[eval_split]] if eval_split != "base" else [],
                               val_pool=pools["val"] if "val" in fit_splits(eval_split) else None)
    dataset_cfg = {**to_container(cfg.dataset), "root": str(Path(str(cfg.dataset.root)).resolve())}
    if progress:
        print(f"backbone: {cfg.dataset.backbone.kind} for {dataset.name} (trained once on the base split, then cached)",
              file=sys.stderr, flush=True)
    weights, backbone_report = _get_or_raise(
        ray.remote(_backbone_task).options(**options).remote(dataset_cfg, str(cache_root))
    )
    benchmark = make_benchmark(cfg, dataset, split, weights, cache_root)
    all_ids = np.unique(np.concatenate([pool.image_ids for pool in pools.values()]))
    _extract_features(benchmark, all_ids, options, progress)
    for pool in pools.values():  # embeddings into the shared cache before tasks read them
        benchmark.label_embeddings(pool.label_names)
    episode_paths = _episode_sets(cfg, pools[eval_split], settings, seeds, results_dir)

    specs = {name: method_spec(name, method_config(name, cfg)) for name in names}
    plan = _plan_and_submit(cfg, benchmark, specs, settings, seeds, episode_paths, run_id, run_path, cache_root, options)

    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    previous = _previous_run_info(run_path)
    invocation = {"started": now, "git": git_state(), "chunks_submitted": plan.counts["chunks_submitted"],
                  "fits_submitted": plan.counts["fit_tasks"]}
    run_info: dict[str, Any] = {
        "run_id": run_id, "created": previous.get("created", now),
        "invocations": [*previous.get("invocations", []), invocation],
        "config": to_container(cfg), "methods": {n: {"config": s.config, "config_hash": s.config_hash} for n, s in specs.items()},
        "git": git_state(), "versions": package_versions(), "hardware": hardware(),
        "ray": {"address": cfg.ray.get("address"), "cluster_resources": ray.cluster_resources()},
        "episode_sets": {f"{dataset.name}/{setting}/seed{seed}": path.stem for (setting, seed), path in episode_paths.items()},
        "backbone": {"id": benchmark.backbone_id, "weights": weights, **backbone_report},
        "leakage_check": leakage, "failures": [], "status": "running",
    }
    write_run_json(run_path, run_info)

    prepared = time.time()  # dataset, backbone, features, episode sets ready; method tasks start
    failures: dict[str, dict[str, Any]] = {}
    fit_seconds: dict[str, float] = {}
    fit_reports: dict[str, dict[str, Any]] = {}
    try:
        _collect(plan, run_path, dataset.name, settings, failures, fit_seconds, fit_reports, run_id, progress)
    except KeyboardInterrupt:
        for ref in plan.pending:
            ray.cancel(ref, force=True)
        assemble(run_path, plan.planned_parts, set(failures))
        run_info.update(status="interrupted", failures=list(failures.values()))
        write_run_json(run_path, run_info)
        raise

    records = assemble(run_path, plan.planned_parts, set(failures))
    run_info.update(
        status="failed" if failures else "complete", failures=list(failures.values()), counts=plan.counts,
        fit_seconds=fit_seconds, fit_reports=fit_reports, wall_s=round(time.time() - started, 3), n_records=int(len(records)),
        phase_s={"prepare": round(prepared - started, 3), "fit_and_evaluate": round(time.time() - prepared, 3)},
        forward_passes=forward_passes(Path(benchmark.feature_root), benchmark.backbone_id, benchmark.annotation_sha256),
        n_feature_images=int(len(all_ids)),
    )
    write_run_json(run_path, run_info)
    return SweepOutcome(run_path=run_path, failures=list(failures.values()), counts=plan.counts)


def _extract_features(benchmark: Benchmark, image_ids: np.ndarray, options: dict[str, Any], progress: bool) -> None:
    """One task per shard of images whose features are not stored yet."""
    from mlfsic.harness.features import missing_image_ids

    missing = missing_image_ids(Path(benchmark.feature_root), benchmark.backbone_id, benchmark.annotation_sha256,
                                image_ids)
    refs = [
        ray.remote(_features_task).options(**options).remote(benchmark, missing[i:i + FEATURE_SHARD_IMAGES],
                                                             options["num_cpus"])
        for i in range(0, len(missing), FEATURE_SHARD_IMAGES)
    ]
    for _ in tqdm(_as_completed(refs), total=len(refs), desc="features", disable=not progress or not refs):
        pass


def _episode_sets(
    cfg: DictConfig, pool: Any, settings: list[str], seeds: list[int], results_dir: Path
) -> dict[tuple[str, int], Path]:
    """Materialise (or reuse) the episode set of every (setting, seed); all methods share them."""
    from mlfsic.harness.episodes import build_episode_set, save_episode_set

    paths = {}
    for setting in settings:
        for seed in seeds:
            episode_set = build_episode_set(pool, str(cfg.protocol), parse_setting(setting), int(cfg.n_query),
                                            int(cfg.n_episodes), seed, n_way=cfg.get("n_way"))
            paths[(setting, seed)] = save_episode_set(episode_set, results_dir)
    return paths


def _plan_and_submit(
    cfg: DictConfig, benchmark: Benchmark, specs: dict[str, MethodSpec], settings: list[str], seeds: list[int],
    episode_paths: dict[tuple[str, int], Path], run_id: str, run_path: Path, cache_root: Path,
    options: dict[str, Any],
) -> _Plan:
    """Submit a fit per (method, seed) with unfinished chunks, and an evaluate task per unfinished chunk."""
    chunk_size = int(cfg.chunk_episodes)
    plan = _Plan(pending={}, planned_parts=[], counts={"fit_tasks": 0, "fits_trained": 0, "fits_cached": 0,
                                                       "chunks_total": 0, "chunks_skipped": 0, "chunks_submitted": 0})
    for name, spec in specs.items():
        cls = get_method_class(name)
        for seed in seeds:
            todo = []
            for setting in [s for s in settings if cls.supports(s)]:
                n_episodes = _n_episodes(episode_paths[(setting, seed)])
                for chunk, start in enumerate(range(0, n_episodes, chunk_size)):
                    part = chunk_name(name, setting, seed, spec.config_hash, chunk)
                    plan.planned_parts.append(part)
                    plan.counts["chunks_total"] += 1
                    if chunk_done(run_path, part):
                        plan.counts["chunks_skipped"] += 1
                        continue
                    todo.append((setting, part, list(range(start, min(start + chunk_size, n_episodes)))))
            if not todo:
                continue
            fit_ref = ray.remote(_fit_task).options(**options).remote(benchmark, spec, seed, str(cache_root),
                                                                            str(cfg.eval_split))
            plan.pending[fit_ref] = ("fit", name, seed, None)
            plan.counts["fit_tasks"] += 1
            for setting, part, indices in todo:
                ref = ray.remote(_evaluate_task).options(**options).remote(
                    benchmark, spec, seed, setting, str(episode_paths[(setting, seed)]), indices, fit_ref, run_id,
                    bool(cfg.save_scores),
                )
                plan.pending[ref] = ("evaluate", name, seed, part)
                plan.counts["chunks_submitted"] += 1
    return plan


def _collect(
    plan: _Plan, run_path: Path, dataset: str, settings: list[str], failures: dict[str, dict[str, Any]],
    fit_seconds: dict[str, float], fit_reports: dict[str, dict[str, Any]], run_id: str, progress: bool,
) -> None:
    """Write results as they arrive (``ray.wait`` loop); a failed fit or chunk fails its cells only."""
    last_assembly = 0.0
    with tqdm(total=len(plan.pending), desc=f"sweep {run_id}", disable=not progress) as bar:
        while plan.pending:
            ready, _ = ray.wait(list(plan.pending), num_returns=1, timeout=5.0)
            for ref in ready:
                kind, name, seed, part = plan.pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as error:  # retries exhausted: worker/node lost, OOM, ...
                    result = f"{type(error).__name__}: {str(error).strip().splitlines()[0]}"
                bar.update(1)
                if kind == "fit":
                    if isinstance(result, str):
                        for setting in settings:
                            if get_method_class(name).supports(setting):
                                failures.setdefault(cell_key(name, setting, seed),
                                                    _failure(name, dataset, setting, seed, result))
                    else:
                        fit_seconds[f"{name}/seed{seed}"] = result.fit_s
                        if result.report:
                            fit_reports[f"{name}/seed{seed}"] = result.report
                        plan.counts["fits_cached" if result.cached else "fits_trained"] += 1
                    continue
                assert part is not None
                cell = cell_of(part)
                if isinstance(result, str):
                    failures.setdefault(cell, _failure(name, dataset, cell.split("__")[1], seed, result))
                elif cell not in failures:
                    write_chunk(run_path, part, result)
            if time.time() - last_assembly > 10.0:
                assemble(run_path, plan.planned_parts, set(failures))
                last_assembly = time.time()


def _previous_run_info(run_path: Path) -> dict[str, Any]:
    """run.json of an earlier invocation of this run (resume), or {}."""
    path = run_path / "run.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}


def _get_or_raise(ref: Any) -> Any:
    """``ray.get`` for harness tasks: an MlfsicError inside the task stays a one-line MlfsicError."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, MlfsicError):
            raise MlfsicError(str(error.cause)) from None
        raise


def _as_completed(refs: list[Any]):
    remaining = list(refs)
    while remaining:
        ready, remaining = ray.wait(remaining, num_returns=1)
        _get_or_raise(ready[0])
        yield ready[0]


def _n_episodes(path: Path) -> int:
    from mlfsic.harness.evaluate import cached_episode_set

    return len(cached_episode_set(str(path))["episodes"])


def _failure(method: str, dataset: str, setting: str, seed: int, error: str) -> dict[str, Any]:
    return {"method": method, "dataset": dataset, "setting": setting, "seed": seed, "error": error}
