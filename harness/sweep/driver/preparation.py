"""Everything a sweep does before its method tasks: checks against a reference run, the dataset and its label
split, the leakage check, the episode sets, Ray, the backbone (a task: it may want the GPU), the features
(one task per shard of images not stored yet) and the label embeddings; then run.json's first write."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray

from mlfsic.harness.backbones.kinds import backbone_kind
from mlfsic.harness.io import file_lock
from mlfsic.harness.protocol.data import split_pool
from mlfsic.harness.protocol.episodes import materialise_episode_sets
from mlfsic.harness.sweep import against_run
from mlfsic.harness.sweep.benchmark import Benchmark
from mlfsic.harness.sweep.driver.collect import COLLECT_ROUND_S, get_or_raise
from mlfsic.harness.sweep.driver.planning import SweepWork
from mlfsic.harness.sweep.driver.progress import Progress, is_tty
from mlfsic.harness.sweep.driver.ray_setup import check_resources, init_ray, task_options, task_slots, warm_up_task
from mlfsic.harness.sweep.driver.run_record import new_run_info
from mlfsic.harness.sweep.driver.tasks import backbone_task, features_task
from mlfsic.harness.sweep.evaluate import MethodSpec, fit_splits, method_spec
from mlfsic.harness.sweep.prepare import load_dataset_and_split, make_benchmark
from mlfsic.harness.sweep.spec import Sweep

FEATURE_SHARD_IMAGES = 2048


@dataclass
class Prepared:
    """A sweep whose dataset, episode sets, backbone and features are ready: what its method tasks need."""

    work: SweepWork  # what planning reads: the sweep, its benchmark, method specs and episode sets
    run_info: dict[str, Any]  # run.json without the submission counts
    all_ids: np.ndarray  # every image of the base, val and test pools (their features are stored)
    started: float
    prepared: float  # dataset, backbone, features and episode sets ready; method tasks may start

    @property
    def sweep(self) -> Sweep:
        return self.work.sweep


def prepare_sweep(sweep: Sweep, progress: bool) -> Prepared:
    """Everything before the method tasks: checks against a reference, dataset, leakage check, episode sets,
    Ray, the backbone (a task: it may want the GPU), features and label embeddings; run.json's first write."""
    cache_root = sweep.cache_root
    options = task_options(sweep, "extract")  # the backbone task and the feature tasks
    started = time.time()
    reference = against_run.load_reference(sweep.against) if sweep.against is not None else None
    if reference is not None:  # nothing started or written yet
        against_run.check_before_work(sweep, reference)

    dataset, split = load_dataset(sweep, progress)
    from mlfsic.harness.protocol.leakage import check_no_leakage

    eval_split = sweep.eval_split
    pools = {name: split_pool(dataset, name, split[name]) for name in ("base", "val", "test")}
    leakage = check_no_leakage(dataset, pools["base"], [pools[eval_split]] if eval_split != "base" else [],
                               val_pool=pools["val"] if "val" in fit_splits(eval_split) else None)
    if sweep.fit_val:  # an ablation on val with the default run's model selection: stated, not hidden
        leakage.update(val={"images": len(pools["val"]), "labels": len(pools["val"].label_names)},
                       evaluated_split_reaches_fit="for model selection only (fit_val=true)",
                       model_selection_on_evaluated_split=True)
        leakage["fit_receives"].append("val (model selection only; the evaluated split, fit_val=true)")
    if reference is not None:
        against_run.check_dataset(dataset.annotation_sha256, split, reference)
    episode_sets = materialise_episode_sets(pools[eval_split], sweep.episode_plan, sweep.results_dir)
    prefix = (against_run.check_prefix_episode_sets(pools[eval_split], sweep.episode_plan, episode_sets, reference,
                                                    sweep.results_dir) if reference is not None else None)

    init_ray(sweep.ray)
    check_resources(sweep.resources)
    backbone_ref = ray.remote(backbone_task).options(**options).remote(sweep.dataset.as_dict(), str(cache_root))
    # The other task slots import the harness meanwhile: as many as evaluate tasks (the most numerous) run at
    # once. Not awaited (a dropped ref does not cancel a task); an import error fails the method tasks, which
    # say why.
    for _ in range(task_slots(sweep.resources.evaluate) - 1):
        ray.remote(warm_up_task).options(**task_options(sweep, "evaluate")).remote()
    weights, backbone_report = get_or_raise(backbone_ref)
    if progress:
        origin = ("pinned weights shipped with the package" if backbone_report.get("pinned")
                  else "weights file" if not backbone_kind(sweep.dataset.backbone.kind).trains_on_base
                  else "trained on the base split, cached")
        print(f"backbone: {sweep.dataset.backbone.kind} for {dataset.name} ({origin}: {weights})",
              file=sys.stderr, flush=True)
    benchmark = make_benchmark(sweep, dataset, split, weights)
    if reference is not None:  # before any feature, method task or record
        against_run.check_backbone(benchmark.backbone_id, reference)
    all_ids = np.unique(np.concatenate([pool.image_ids for pool in pools.values()]))
    extract_features(benchmark, all_ids, options, progress)
    with file_lock(Path(benchmark.embedding_cache) / ".lock"):  # computed by one sweep, read by the others
        for pool in pools.values():  # embeddings into the shared cache before tasks read them
            benchmark.label_embeddings(pool.label_names)

    specs = {name: method_spec(m.name, m.config, base=m.base) for name, m in sweep.methods.items()}
    if reference is not None:
        specs = new_methods(specs, reference, progress)

    run_info = new_run_info(sweep, dataset, split, specs, episode_sets, benchmark, weights, backbone_report, leakage,
                            reference, prefix)
    work = SweepWork(sweep=sweep, benchmark=benchmark, specs=specs, episode_sets=episode_sets)
    return Prepared(work=work, run_info=run_info, all_ids=all_ids, started=started, prepared=time.time())


def new_methods(specs: dict[str, MethodSpec], reference: against_run.Reference, progress: bool) -> dict[str, MethodSpec]:
    """The methods the reference does not hold with the same config and code (those are not recomputed)."""
    kept = {}
    for name, spec in specs.items():
        if against_run.in_reference(reference, name, spec.config_hash):
            if progress:
                print(f"{name}: in {reference.name} with the same config and code; "
                      "its rows come from there", file=sys.stderr, flush=True)
            continue
        kept[name] = spec
    return kept


def load_dataset(sweep: Sweep, progress: bool) -> tuple[Any, dict[str, list[str]]]:
    """Dataset and label split (a generated dataset made first, by one process at a time: its adapter locks)."""
    started = time.time()
    tty = is_tty(sys.stderr)
    dataset, split = load_dataset_and_split(sweep.dataset.as_dict(), progress=progress and tty)
    if progress and not tty:
        print(f"dataset: {dataset.name}, {len(dataset.image_ids)} images, ready in {time.time() - started:.1f} s",
              file=sys.stderr, flush=True)
    return dataset, split


def extract_features(benchmark: Benchmark, image_ids: np.ndarray, options: dict[str, Any], progress: bool) -> None:
    """One task per shard of images whose features are not stored yet.

    Under the store's extraction lock (``features.extraction_lock``): a second sweep sharing the results
    dir waits and finds nothing missing.
    """
    from mlfsic.harness.sweep.features import extraction_lock

    with extraction_lock(Path(benchmark.feature_root), benchmark.backbone_id, benchmark.annotation_sha256):
        _extract_missing_features(benchmark, image_ids, options, progress)


def _extract_missing_features(benchmark: Benchmark, image_ids: np.ndarray, options: dict[str, Any],
                              progress: bool) -> None:
    from mlfsic.harness.sweep.features import missing_image_ids

    missing = missing_image_ids(Path(benchmark.feature_root), benchmark.backbone_id, benchmark.annotation_sha256,
                                image_ids)
    features_remote = ray.remote(features_task).options(**options)
    refs = [
        features_remote.remote(benchmark, missing[i:i + FEATURE_SHARD_IMAGES], options["num_cpus"])
        for i in range(0, len(missing), FEATURE_SHARD_IMAGES)
    ]
    bar = Progress("features", len(refs), "shards", progress)
    remaining = list(refs)
    while remaining:
        ready, remaining = ray.wait(remaining, num_returns=len(remaining), timeout=COLLECT_ROUND_S)
        for ref in ready:
            get_or_raise(ref)
            bar.update(1)
        bar.heartbeat(len(remaining))
    n_stored = len(image_ids) - len(missing)
    bar.close(f"{len(missing)} images computed ({len(refs)} shards), {n_stored} already stored,")
