"""The bodies of the sweep's Ray tasks (backbone, features, fit, evaluate) and the time limit of a fit or an
evaluate chunk. Module-level functions: Ray pickles a remote function by reference (module and name).

A fit or evaluate task never raises: a method's error, a timeout or a GPU the node cannot use comes back as
a one-line string, which fails that task's cells only (``collect.file_result``). Both give the method the
task's device (``ray_setup.task_device``); an evaluate task's chunk names the device it computed on
(``ChunkResult.device``), which run.json records (``devices``).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from mlfsic.harness.backbones.kinds import backbone_weights
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.sweep.benchmark import Benchmark
from mlfsic.harness.sweep.driver.ray_setup import set_threads, task_device
from mlfsic.harness.sweep.evaluate import (
    FitResult,
    MethodFailure,
    MethodSpec,
    evaluate_episodes,
    fit_method,
)
from mlfsic.harness.sweep.prepare import load_dataset_and_split
from mlfsic.harness.sweep.store import ChunkResult


def backbone_task(dataset_cfg: dict[str, Any], cache_root: str) -> tuple[str | None, dict[str, Any]]:
    """The backbone's weights file (pinned, given, or trained on the base split and cached) and its report."""
    task_device()  # a GPU the sweep cannot use stops it here, before any feature or method task
    set_threads(os.cpu_count() or 1)  # runs alone, before any other task of the sweep
    dataset, split = load_dataset_and_split(dataset_cfg, progress=False)
    path, report = backbone_weights(dataset, split, dataset_cfg["backbone"], Path(cache_root), progress=False)
    return (str(path) if path else None), report


def features_task(benchmark: Benchmark, image_ids: np.ndarray, num_cpus: float) -> int:
    """Extract and store the features of one shard of images; returns how many. The backbone runs on this
    task's device while ``num_cpus`` - 1 worker processes decode the images (``batches.decode_workers``; none
    at 1 CPU)."""
    from mlfsic.harness.backbones.batches import decode_workers
    from mlfsic.harness.backbones.kinds import load_backbone
    from mlfsic.harness.sweep.features import extract_shard

    set_threads(num_cpus)
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


def fit_task(benchmark: Benchmark, spec: MethodSpec, seed: int, cache_root: str, eval_split: str,
             fit_val: bool = False, timeout_s: float | None = None) -> FitResult | str:
    """Fit (or load the cached checkpoint of) one method for one seed; a failure as one line."""
    set_threads(1)  # one thread: results do not depend on how many CPUs a task was given
    try:
        device = task_device()
        with time_limit(timeout_s, f"the fit of {spec.method} seed {seed}"):  # one writer per checkpoint
            return fit_method(benchmark, spec, seed, Path(cache_root), eval_split, fit_val, device)
    except TaskTimedOut as error:
        return str(error)
    except Exception as error:  # any error fails this method's cells, never the sweep
        return error_text(error)


def evaluate_task(
    benchmark: Benchmark, spec: MethodSpec, seed: int, setting: str, episode_set_path: str, indices: list[int],
    fit: FitResult | str, run_id: str, save_scores: bool, timeout_s: float | None = None,
) -> ChunkResult | str:
    """Score one chunk of episodes with the fitted method; a failure (of the fit or of this chunk) as one line."""
    if isinstance(fit, str):
        return fit
    set_threads(1)
    try:
        device = task_device()
        with time_limit(timeout_s, f"{spec.method} {setting} seed {seed}, episodes {indices[0]}-{indices[-1]}"):
            return evaluate_episodes(benchmark, spec, seed, setting, episode_set_path, indices, fit, run_id,
                                     save_scores, device)
    except TaskTimedOut as error:
        return str(error)
    except Exception as error:
        return error_text(error)


def error_text(error: Exception) -> str:
    """A method's error as one line: the message of a harness error, ``Type: message`` for any other."""
    if isinstance(error, (MethodFailure, MlfsicError)):
        return str(error)
    return f"{type(error).__name__}: {error}"
