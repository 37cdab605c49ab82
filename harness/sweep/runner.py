"""The Ray sweep runner behind ``mlfsic run`` (docs/architecture.md §9).

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
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import ray
from tqdm import tqdm

from mlfsic.harness.backbones.kinds import backbone_kind, backbone_weights
from mlfsic.harness.sweep.benchmark import Benchmark
from mlfsic.harness.protocol.data import split_pool
from mlfsic.harness.protocol.metrics import METRIC_VERSION
from mlfsic.harness.protocol.episodes import EpisodeSetRef, materialise_episode_sets
from mlfsic.harness.backbones.embeddings import embedding_id
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.sweep.evaluate import (
    FitResult,
    MethodFailure,
    MethodSpec,
    evaluate_episodes,
    fit_method,
    fit_splits,
    method_spec,
)
from mlfsic.harness.io import canonical_json, file_lock
from mlfsic.harness.sweep.prepare import load_dataset_and_split, make_benchmark
from mlfsic.harness.provenance import git_state, hardware, package_versions
from mlfsic.harness.sweep import against_run
from mlfsic.harness.sweep.store import (
    ChunkResult, assemble, assembled_cells, cell_key, cell_of, chunk_done, chunk_name, predict_reports, write_chunk,
    read_run_json,
    write_run_json,
)
from mlfsic.harness.sweep.spec import RayOptions, Sweep, TaskResources
from mlfsic.methods.registry import get_method_class

FEATURE_SHARD_IMAGES = 2048
COLLECT_ROUND_S = 0.25  # _collect takes the results that are ready within this, per round
# Off a terminal, a progress line at least this often while tasks run (``_Progress.heartbeat``); the
# environment variable MLFSIC_HEARTBEAT_S sets another interval (tests: 0, a line every collection round).
HEARTBEAT_S = float(os.environ.get("MLFSIC_HEARTBEAT_S", "60"))


# ----------------------------------------------------------------------------------------- progress
class _Progress:
    """A tqdm bar on a terminal; elsewhere (a log file, a pipe) plain lines: one each time another tenth is
    done, a heartbeat when nothing was printed for ``heartbeat_s``, and a summary.

    A bar redraws itself with carriage returns, which a log file keeps as one endless line; so when
    stderr is not a TTY, ``update`` prints ``<desc>: <done>/<total> <unit> (<pct>%) <elapsed> s`` each
    time another tenth is done (with fewer than 10 tasks: each task but the last), ``heartbeat`` prints
    ``<desc>: <done>/<total> <unit> done, <n> in flight, <n> failed, <4m05s> elapsed`` when no line was
    printed for ``heartbeat_s`` (default ``HEARTBEAT_S``), and ``close(summary)`` prints
    ``<desc>: <summary> in <elapsed> s``.
    """

    def __init__(self, desc: str, total: int, unit: str, enabled: bool, stream: Any = None,
                 heartbeat_s: float | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.desc, self.total, self.unit, self.enabled = desc, total, unit, enabled
        self.heartbeat_s = HEARTBEAT_S if heartbeat_s is None else heartbeat_s
        self.tty = enabled and _is_tty(self.stream)
        self.done, self.started, self.next_line = 0, time.time(), 1
        self.last_line = self.started
        self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, disable=not self.tty or total == 0)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.tty:
            self.bar.update(n)
            return
        if not self.enabled or self.total == 0:
            return
        if self.done * 10 >= self.next_line * self.total and self.done < self.total:
            self.next_line = self.done * 10 // self.total + 1
            self.line(f"{self.done}/{self.total} {self.unit} ({100 * self.done // self.total}%) "
                      f"{self.elapsed():.1f} s")

    def heartbeat(self, in_flight: int, failed: int = 0) -> None:
        """Off a terminal, one line of where things stand if none was printed for ``heartbeat_s`` seconds.

        ``in_flight``: tasks submitted and not finished (running or queued); ``failed``: finished tasks that
        failed. Called after every collection round, so a log shows progress however long a task takes.
        """
        if self.tty or not self.enabled or time.time() - self.last_line < self.heartbeat_s:
            return
        self.line(f"{self.done}/{self.total} {self.unit} done, {in_flight} in flight, {failed} failed, "
                  f"{duration_text(self.elapsed())} elapsed")

    def close(self, summary: str) -> None:
        self.bar.close()
        if self.enabled:
            self.line(f"{summary} in {self.elapsed():.1f} s")

    def line(self, text: str) -> None:
        print(f"{self.desc}: {text}", file=self.stream, flush=True)
        self.last_line = time.time()

    def elapsed(self) -> float:
        return time.time() - self.started


def duration_text(seconds: float) -> str:
    """``42s``, ``4m05s``, ``1h02m05s``: a duration for a log line."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# ----------------------------------------------------------------------------------------- Ray set-up
def init_ray(options: RayOptions) -> None:
    """Local Ray with explicit CPUs and a capped object store, or connect to ``ray.address``.

    ``address="local"``: a new local instance even where ``ray start`` ran on this machine before (Ray would
    otherwise join the cluster it recorded in /tmp/ray, or fail on a stopped one).
    """
    if ray.is_initialized():
        return
    if options.address:
        ray.init(address=options.address, log_to_driver=False)
        return
    ray.init(
        address="local",
        num_cpus=options.num_cpus or os.cpu_count(),
        object_store_memory=options.object_store_memory,
        include_dashboard=False,
        log_to_driver=False,
    )


def check_resources(resources: TaskResources) -> None:
    """Reject a per-task request no node of the cluster can satisfy, before anything is submitted."""
    need_cpus = resources.num_cpus
    need_gpus = resources.num_gpus
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


def _task_slots(resources: TaskResources) -> int:
    """How many tasks of ``resources`` the cluster runs at once (at least 1)."""
    total = ray.cluster_resources()
    slots = [int(total.get(kind, 0) // need) for kind, need in (("CPU", resources.num_cpus), ("GPU", resources.num_gpus))
             if need > 0]
    return max(1, min(slots, default=1))


def _warm_up_task() -> None:
    """Import the harness, torch and the registered methods in this worker.

    Ray starts idle workers with ``ray.init``, but a worker imports the harness (torch, pandas: about 3-5 s
    on 2 cores) only when its first task arrives. Unwarmed, every worker but the one that ran the backbone
    task paid that when the first method tasks arrived, idle while the others worked. One warm-up task per
    task slot but the backbone task's, submitted with it, overlaps those imports with the preparation.
    """
    from mlfsic.methods.registry import available_methods

    available_methods()


def _set_threads(num_cpus: float) -> None:
    import torch

    torch.set_num_threads(max(1, int(num_cpus)))


def task_device() -> str:
    """The torch device of the running Ray task: ``"cuda"`` when Ray assigned it GPUs (Ray sets
    ``CUDA_VISIBLE_DEVICES`` to them, so ``cuda`` is the assigned one; with ``resources.num_gpus=0.5`` two
    tasks share it), else ``"cpu"``. A task given a GPU on a node where torch finds no CUDA device stops with
    one line instead of running on the CPU unnoticed. Feature extraction runs on this device; the built-in
    methods fit and predict on the CPU whatever their task was given (their tasks check the device all the same).
    """
    gpu_ids = ray.get_gpu_ids()
    if not gpu_ids:
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        raise MlfsicError(
            f"Ray assigned GPU {','.join(str(i) for i in gpu_ids)} to a task on {socket.gethostname()}, but torch "
            f"finds no CUDA device there (torch {torch.__version__}, CUDA build {torch.version.cuda}); "
            "set resources.num_gpus=0 or install a CUDA build of torch on the GPU nodes"
        )
    return "cuda"


# ----------------------------------------------------------------------------------------- tasks
def _backbone_task(dataset_cfg: dict[str, Any], cache_root: str) -> tuple[str | None, dict[str, Any]]:
    task_device()  # a GPU the sweep cannot use stops it here, before any feature or method task
    _set_threads(os.cpu_count() or 1)  # runs alone, before any other task of the sweep
    dataset, split = load_dataset_and_split(dataset_cfg, progress=False)
    path, report = backbone_weights(dataset, split, dataset_cfg["backbone"], Path(cache_root), progress=False)
    return (str(path) if path else None), report


def _features_task(benchmark: Benchmark, image_ids: np.ndarray, num_cpus: float) -> int:
    """Extract one shard's features: the backbone on this task's device, ``num_cpus`` - 1 worker processes
    decoding the images (``batches.decode_workers``; none at 1 CPU) while the backbone runs on the batches
    before."""
    from mlfsic.harness.backbones.batches import decode_workers
    from mlfsic.harness.backbones.kinds import load_backbone
    from mlfsic.harness.sweep.features import extract_shard

    _set_threads(num_cpus)
    config = dict(benchmark.backbone_config)
    config["device"] = config.get("device") or task_device()
    backbone = load_backbone(config, Path(benchmark.backbone_weights) if benchmark.backbone_weights else None,
                             benchmark.backbone_id)
    extract_shard(backbone, benchmark.dataset(), image_ids, Path(benchmark.feature_root), progress=False,
                  decode_workers=decode_workers(num_cpus))
    return len(image_ids)


class TaskTimedOut(BaseException):
    """Raised in a fit or evaluate task that ran past ``task_timeout_s``.

    A BaseException (as KeyboardInterrupt is), so a method's own ``except Exception`` cannot swallow it.
    """


# Seconds past the limit after which a task that never returned to Python (a hang inside C code, where the
# alarm cannot be delivered) ends its worker process instead; Ray then reports the worker as lost.
HARD_EXIT_GRACE_S = 30.0


@contextmanager
def time_limit(seconds: float | None, what: str) -> Iterator[None]:
    """Bound the block to ``seconds`` (None: no bound): past it, ``TaskTimedOut`` is raised in the block.

    A SIGALRM timer interrupts the task where Python runs next (a sleep, a Python loop, between torch ops);
    a watchdog thread ends the process ``HARD_EXIT_GRACE_S`` later if that never happens. Ray runs a task on
    its worker's main thread, which is where signal handlers run; elsewhere (a threaded caller) only the
    watchdog applies.
    """
    if seconds is None:
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise TaskTimedOut(f"timed out: {what} ran past task_timeout_s={seconds:g}")

    on_main_thread = threading.current_thread() is threading.main_thread()
    if on_main_thread:
        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    watchdog = threading.Timer(seconds + HARD_EXIT_GRACE_S, os._exit, args=(70,))
    watchdog.daemon = True
    watchdog.start()
    try:
        yield
    finally:
        watchdog.cancel()
        if on_main_thread:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


def _fit_task(benchmark: Benchmark, spec: MethodSpec, seed: int, cache_root: str, eval_split: str,
              fit_val: bool = False, timeout_s: float | None = None) -> FitResult | str:
    _set_threads(1)  # one thread: results do not depend on how many CPUs a task was given
    try:
        task_device()
        with time_limit(timeout_s, f"the fit of {spec.method} seed {seed}"):
            return fit_method(benchmark, spec, seed, Path(cache_root), eval_split, fit_val)  # one writer per checkpoint
    except TaskTimedOut as error:
        return str(error)
    except Exception as error:  # any error fails this method's cells, never the sweep
        return _error_text(error)


def _evaluate_task(
    benchmark: Benchmark, spec: MethodSpec, seed: int, setting: str, episode_set_path: str, indices: list[int],
    fit: FitResult | str, run_id: str, save_scores: bool, timeout_s: float | None = None,
) -> ChunkResult | str:
    if isinstance(fit, str):
        return fit
    _set_threads(1)
    try:
        task_device()
        with time_limit(timeout_s, f"{spec.method} {setting} seed {seed}, episodes {indices[0]}-{indices[-1]}"):
            return evaluate_episodes(benchmark, spec, seed, setting, episode_set_path, indices, fit, run_id, save_scores)
    except TaskTimedOut as error:
        return str(error)
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


@dataclass(frozen=True)
class _Task:
    """What a submitted task computes: a fit of (method, seed) or one chunk of a (method, setting, seed) cell."""

    kind: str  # "fit" or "evaluate"
    method: str  # the sweep's name (a registered method or a variant)
    seed: int
    settings: tuple[str, ...]  # fit: the settings its failure fails; evaluate: the chunk's setting
    part: str | None = None  # evaluate: the part name


@dataclass
class _Plan:
    """One sweep's submitted work: pending task refs, the part names its run dir should end up with, and what
    its finished tasks reported (a suite collects several plans at once)."""

    run_path: Path
    dataset: str
    pending: dict[Any, _Task] = field(default_factory=dict)
    planned_parts: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {
        "fit_tasks": 0, "fits_trained": 0, "fits_cached": 0, "chunks_total": 0, "chunks_skipped": 0,
        "chunks_submitted": 0})
    failures: dict[str, dict[str, Any]] = field(default_factory=dict)
    fit_seconds: dict[str, float] = field(default_factory=dict)
    fit_reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Summed over the chunks computed now: wall - cpu is time their processes were runnable but not running.
    chunk_seconds: dict[str, float] = field(default_factory=lambda: {"n_chunks": 0, "wall": 0.0, "cpu": 0.0})


@dataclass
class _Prepared:
    """A sweep whose dataset, episode sets, backbone and features are ready: what its method tasks need."""

    sweep: Sweep
    benchmark: Benchmark
    specs: dict[str, MethodSpec]
    episode_sets: list[EpisodeSetRef]
    run_info: dict[str, Any]  # run.json without the submission counts
    all_ids: np.ndarray
    started: float
    prepared: float  # dataset, backbone, features and episode sets ready; method tasks may start


def task_options(sweep: Sweep) -> dict[str, Any]:
    """The Ray options of every task of the sweep: ``resources`` per task (``num_gpus=0.5``: two tasks share a
    GPU) and ``max_retries``."""
    return {"num_cpus": sweep.resources.num_cpus, "num_gpus": sweep.resources.num_gpus,
            "max_retries": sweep.max_retries}


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
    prepared = [_prepare(sweep, progress) for sweep in sweeps]
    plans = _plan_and_submit([(p.sweep, p.benchmark, p.specs, p.episode_sets) for p in prepared],
                             task_options(sweeps[0]))
    for member, plan in zip(prepared, plans):
        member.run_info["invocations"][-1].update(chunks_submitted=plan.counts["chunks_submitted"],
                                                  fits_submitted=plan.counts["fit_tasks"])
        # every (method, setting, seed) the sweep is to hold: a leaderboard names the cells a run lacks
        member.run_info["planned_cells"] = sorted({cell_of(name) for name in plan.planned_parts})
        _write_run_info(member.sweep.run_path, member.run_info)
    try:
        _collect(plans, progress, desc)
    except KeyboardInterrupt:
        for plan in plans:
            for ref in plan.pending:
                ray.cancel(ref, force=True)
        for member, plan in zip(prepared, plans):
            assemble(plan.run_path, plan.planned_parts, set(plan.failures))
            member.run_info.update(status="interrupted", failures=list(plan.failures.values()))
            _write_run_info(plan.run_path, member.run_info)
        raise
    return [_finish(member, plan) for member, plan in zip(prepared, plans)]


def _prepare(sweep: Sweep, progress: bool) -> _Prepared:
    """Everything before the method tasks: checks against a reference, dataset, leakage check, episode sets,
    Ray, the backbone (a task: it may want the GPU), features and label embeddings; run.json's first write."""
    cache_root = sweep.cache_root
    options = task_options(sweep)
    started = time.time()
    reference = against_run.load_reference(sweep.against) if sweep.against is not None else None
    if reference is not None:  # nothing started or written yet
        against_run.check_before_work(sweep, reference)

    dataset, split = _load_dataset(sweep, progress)
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
    backbone_ref = ray.remote(_backbone_task).options(**options).remote(sweep.dataset.as_dict(), str(cache_root))
    # The other task slots import the harness meanwhile. Not awaited (a dropped ref does not cancel a task); an
    # import error fails the method tasks, which say why.
    for _ in range(_task_slots(sweep.resources) - 1):
        ray.remote(_warm_up_task).options(**options).remote()
    weights, backbone_report = _get_or_raise(backbone_ref)
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
    _extract_features(benchmark, all_ids, options, progress)
    with file_lock(Path(benchmark.embedding_cache) / ".lock"):  # computed by one sweep, read by the others
        for pool in pools.values():  # embeddings into the shared cache before tasks read them
            benchmark.label_embeddings(pool.label_names)

    specs = {name: method_spec(m.name, m.config, base=m.base) for name, m in sweep.methods.items()}
    if reference is not None:
        specs = _new_methods(specs, reference, progress)

    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    previous = _previous_run_info(sweep.run_path)
    invocation = {"started": now, "host": socket.gethostname(), "pid": os.getpid(), "git": git_state(),
                  **_command_line()}
    run_info: dict[str, Any] = {
        "run_id": sweep.run_id, "created": previous.get("created", now),
        "invocations": [*previous.get("invocations", []), invocation],
        "config": sweep.config,
        "methods": {n: {"method": s.method, "config": s.config, "config_hash": s.config_hash} for n, s in specs.items()},
        "git": git_state(), "versions": package_versions(), "hardware": hardware(),
        "ray": {"address": sweep.ray.address, "cluster_resources": ray.cluster_resources()},
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
    return _Prepared(sweep=sweep, benchmark=benchmark, specs=specs, episode_sets=episode_sets, run_info=run_info,
                     all_ids=all_ids, started=started, prepared=time.time())


def _command_line() -> dict[str, Any]:
    """This process's ``mlfsic`` arguments (``argv``: ``["run", OVERRIDES...]``) and working directory, for
    run.json's invocation: the command that resumes the run (shown on the leaderboard of an incomplete run,
    ``store.resume_command``). {} when the process was not started as ``mlfsic run`` (a test or a script
    calling ``run_sweep``)."""
    if sys.argv[1:2] != ["run"]:
        return {}
    return {"argv": ["run", *sys.argv[2:]], "cwd": os.getcwd()}


def _finish(member: _Prepared, plan: _Plan) -> SweepOutcome:
    """Assemble the run dir's tables and write the final run.json."""
    from mlfsic.harness.sweep.features import forward_passes

    benchmark, run_path, failures = member.benchmark, plan.run_path, plan.failures
    records = assemble(run_path, plan.planned_parts, set(failures))
    member.run_info.update(
        status="failed" if failures else "complete", failures=list(failures.values()), counts=plan.counts,
        fit_seconds=plan.fit_seconds, fit_reports=plan.fit_reports, wall_s=round(time.time() - member.started, 3),
        n_records=int(len(records)),
        phase_s={"prepare": round(member.prepared - member.started, 3),
                 "fit_and_evaluate": round(time.time() - member.prepared, 3)},
        evaluate_chunk_s={key: round(value, 3) for key, value in plan.chunk_seconds.items()},
        predict_reports=predict_reports(run_path, [n for n in plan.planned_parts if cell_of(n) in assembled_cells(records)]),
        forward_passes=forward_passes(Path(benchmark.feature_root), benchmark.backbone_id, benchmark.annotation_sha256),
        n_feature_images=int(len(member.all_ids)),
    )
    _write_run_info(run_path, member.run_info)
    return SweepOutcome(run_path=run_path, failures=list(failures.values()), counts=plan.counts)


def _new_methods(specs: dict[str, MethodSpec], reference: against_run.Reference, progress: bool) -> dict[str, MethodSpec]:
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


def _load_dataset(sweep: Sweep, progress: bool) -> tuple[Any, dict[str, list[str]]]:
    """Dataset and label split (a generated dataset made first, by one process at a time: its adapter locks)."""
    started = time.time()
    tty = _is_tty(sys.stderr)
    dataset, split = load_dataset_and_split(sweep.dataset.as_dict(), progress=progress and tty)
    if progress and not tty:
        print(f"dataset: {dataset.name}, {len(dataset.image_ids)} images, ready in {time.time() - started:.1f} s",
              file=sys.stderr, flush=True)
    return dataset, split


def _extract_features(benchmark: Benchmark, image_ids: np.ndarray, options: dict[str, Any], progress: bool) -> None:
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
    features_task = ray.remote(_features_task).options(**options)
    refs = [
        features_task.remote(benchmark, missing[i:i + FEATURE_SHARD_IMAGES], options["num_cpus"])
        for i in range(0, len(missing), FEATURE_SHARD_IMAGES)
    ]
    bar = _Progress("features", len(refs), "shards", progress)
    remaining = list(refs)
    while remaining:
        ready, remaining = ray.wait(remaining, num_returns=len(remaining), timeout=COLLECT_ROUND_S)
        for ref in ready:
            _get_or_raise(ref)
            bar.update(1)
        bar.heartbeat(len(remaining))
    n_stored = len(image_ids) - len(missing)
    bar.close(f"{len(missing)} images computed ({len(refs)} shards), {n_stored} already stored,")


def _plan_and_submit(
    sweeps: list[tuple[Sweep, Benchmark, dict[str, MethodSpec], list[EpisodeSetRef]]], options: dict[str, Any],
) -> list[_Plan]:
    """Submit, for each sweep, a fit per (method, seed) with unfinished chunks and an evaluate task per unfinished
    chunk; one plan per sweep.

    Longest processing time first (``TaskCosts``), across all the sweeps: fits in order of their measured cost,
    then every chunk in order of its estimated seconds, so the tail is short chunks that fill the last free
    slots rather than one heavy chunk that keeps a single worker busy while the others idle. Order changes no
    result (each task is deterministic and single-threaded); chunk boundaries stay ``chunk_episodes``.
    """
    costs = TaskCosts.published()
    plans = []
    fits = []  # (plan, sweep, benchmark, name, spec, seed, supported settings, unfinished chunks)
    for sweep, benchmark, specs, episode_sets in sweeps:
        plan = _Plan(run_path=sweep.run_path, dataset=sweep.dataset_name)
        plans.append(plan)
        chunk_size = sweep.chunk_episodes
        sets = {(ref.setting, ref.seed): ref for ref in episode_sets}
        for name, spec in specs.items():
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
                        todo.append((episode_set, part,
                                     list(range(start, min(start + chunk_size, episode_set.n_episodes)))))
                if todo:
                    fits.append((plan, sweep, benchmark, name, spec, seed, supported, todo))

    # One remote function each, made once: ``ray.remote`` per task cost the driver ~4x its submission time.
    fit_task = ray.remote(_fit_task).options(**options)
    evaluate_task = ray.remote(_evaluate_task).options(**options)
    chunks = []  # (estimated seconds, submission index, plan, sweep, benchmark, name, spec, seed, fit ref, set, part, indices)
    for plan, sweep, benchmark, name, spec, seed, supported, todo in sorted(fits, key=lambda f: -costs.fit_s(f[4].method)):
        fit_ref = fit_task.remote(benchmark, spec, seed, str(sweep.cache_root), sweep.eval_split, sweep.fit_val,
                                  sweep.task_timeout_s)
        plan.pending[fit_ref] = _Task("fit", name, seed, supported)
        plan.counts["fit_tasks"] += 1
        for episode_set, part, indices in todo:
            estimate = costs.episode_s(spec.method, episode_set.setting) * len(indices)
            chunks.append((estimate, len(chunks), plan, sweep, benchmark, name, spec, seed, fit_ref, episode_set,
                           part, indices))
    for _, _, plan, sweep, benchmark, name, spec, seed, fit_ref, episode_set, part, indices in sorted(
            chunks, key=lambda c: (-c[0], c[1])):
        ref = evaluate_task.remote(
            benchmark, spec, seed, episode_set.setting, str(episode_set.path), indices, fit_ref, sweep.run_id,
            sweep.save_scores, sweep.task_timeout_s,
        )
        plan.pending[ref] = _Task("evaluate", name, seed, (episode_set.setting,), part)
        plan.counts["chunks_submitted"] += 1
    return plans


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


def _collect(plans: list[_Plan], progress: bool, desc: str = "sweep") -> None:
    """Write results as they arrive (``ray.wait`` loop over every plan's tasks, one progress display); a failed
    fit or chunk fails its cells only.

    The driver only waits and writes each finished chunk as a part; it does not re-assemble
    records.parquet while tasks run (that is done once, at the end or on Ctrl-C), so on a small machine
    the CPUs stay with the tasks. Off a terminal, a heartbeat line (tasks done, in flight, failed, elapsed)
    comes at least every ``HEARTBEAT_S`` seconds, however long a task runs.
    """
    owner = {ref: plan for plan in plans for ref in plan.pending}
    bar = _Progress(desc, len(owner), "tasks", progress)
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
            _file_result(plan, task, result)
        bar.heartbeat(len(refs), failed)
    totals = {key: sum(plan.counts[key] for plan in plans) for key in plans[0].counts} if plans else {}
    if totals:
        bar.close(f"{totals['chunks_total']} chunks ({totals['chunks_skipped']} skipped, {totals['chunks_submitted']} "
                  f"computed), {totals['fit_tasks']} fits ({totals['fits_cached']} from checkpoints)")


def _file_result(plan: _Plan, task: _Task, result: Any) -> None:
    """One finished task into its plan: a failure (a string) fails its cells, a fit its timings, a chunk its part."""
    if isinstance(result, str):  # a fit fails all its settings' cells, a chunk its own cell
        for setting in task.settings:
            plan.failures.setdefault(cell_key(task.method, setting, task.seed),
                                     _failure(task.method, plan.dataset, setting, task.seed, result))
    elif task.kind == "fit":
        if result.note:  # a cached checkpoint was refused and refitted: say so
            print(result.note, file=sys.stderr, flush=True)
        plan.fit_seconds[f"{task.method}/seed{task.seed}"] = result.fit_s
        if result.report:
            plan.fit_reports[f"{task.method}/seed{task.seed}"] = result.report
        plan.counts["fits_cached" if result.cached else "fits_trained"] += 1
    elif cell_key(task.method, task.settings[0], task.seed) not in plan.failures:
        assert task.part is not None
        write_chunk(plan.run_path, task.part, result)
        plan.chunk_seconds["n_chunks"] += 1
        plan.chunk_seconds["wall"] += result.task_s
        plan.chunk_seconds["cpu"] += result.task_cpu_s


def _write_run_info(run_path: Path, run_info: dict[str, Any]) -> None:
    """Write run.json, keeping the invocations another process of the same run id recorded meanwhile.

    Two ``mlfsic run`` of the same run id may run at once (users of a shared results dir); under a lock,
    each write merges the invocation list on disk into its own, so neither invocation is lost.
    """
    with file_lock(run_path / ".run.lock"):
        on_disk = _previous_run_info(run_path)
        mine = {canonical_json(item) for item in run_info["invocations"]}
        others = [item for item in on_disk.get("invocations", []) if canonical_json(item) not in mine]
        if others:
            run_info["invocations"] = sorted([*run_info["invocations"], *others], key=lambda i: str(i.get("started")))
            run_info["created"] = min(str(run_info["created"]), str(on_disk.get("created", run_info["created"])))
        write_run_json(run_path, run_info)


def _previous_run_info(run_path: Path) -> dict[str, Any]:
    """run.json of an earlier invocation of this run (resume), or {}."""
    try:
        return read_run_json(run_path, required=())
    except MlfsicError:  # none yet, or a half-written one from an interrupted write: start afresh
        return {}


def _get_or_raise(ref: Any) -> Any:
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


def _failure(method: str, dataset: str, setting: str, seed: int, error: str) -> dict[str, Any]:
    return {"method": method, "dataset": dataset, "setting": setting, "seed": seed, "error": error}
