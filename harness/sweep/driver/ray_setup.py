"""Ray for a sweep: start a local Ray or join a cluster, check the tasks' requests against it, the options
every task is submitted with, and what a task does first in its worker (threads, device, warm-up)."""

from __future__ import annotations

import os
import socket
from typing import Any

import ray

from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.sweep.spec import STAGES, RayOptions, StageResources, Sweep, TaskResources


# Times a task killed by Ray's memory monitor is retried before it fails (Ray's default retries it forever: a
# chunk that needs more memory than the node has would loop; measured: lcm's 100-episode 5-shot chunk at 448 px,
# ~20 GB on a 24 GB box). Then its cells fail with "out of memory: ..." (``collect.ray_failure_text``) and the run
# ends; a smaller ``chunk_episodes`` is the remedy. Local Ray only: a cluster's is ``RAY_task_oom_retries`` at
# ``ray start``.
OOM_RETRIES = 3
# Set to "1" in a Ray node's environment: a task Ray gave a GPU that torch cannot see runs on the CPU instead of
# stopping (``task_device``). Only for rehearsing GPU scheduling on a CPU machine (GPUs declared to Ray).
DECLARED_GPUS_ON_CPU = "MLFSIC_DECLARED_GPUS_ON_CPU"


def init_ray(options: RayOptions) -> None:
    """Local Ray with explicit CPUs, a capped object store and ``OOM_RETRIES``, or connect to ``ray.address``.

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
        _system_config={"task_oom_retries": OOM_RETRIES},
    )


def check_resources(resources: StageResources) -> None:
    """Reject a stage's per-task request no node of the cluster can satisfy, before anything is submitted; the
    message names the key the request came from (``resources.fit.num_gpus``, or the default ``resources.num_gpus``)."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    total = ray.cluster_resources()
    for stage in STAGES:
        need_cpus = resources.of(stage).num_cpus
        need_gpus = resources.of(stage).num_gpus
        gpus_key, cpus_key = resources.key(stage, "num_gpus"), resources.key(stage, "num_cpus")
        if need_gpus > 0 and not any(node.get("GPU", 0) >= need_gpus for node in nodes):
            raise MlfsicError(
                f"{gpus_key}={need_gpus:g} requested, but no node of the Ray cluster has that many GPUs "
                f"(cluster GPUs: {total.get('GPU', 0):g}); set {gpus_key}=0 or connect to a GPU cluster"
            )
        if need_cpus > 0 and not any(node.get("CPU", 0) >= need_cpus for node in nodes):
            raise MlfsicError(
                f"{cpus_key}={need_cpus:g} requested, but no node of the Ray cluster has that many CPUs "
                f"(largest node: {max((n.get('CPU', 0) for n in nodes), default=0):g})"
            )


def task_slots(resources: TaskResources) -> int:
    """How many tasks of ``resources`` the cluster runs at once (at least 1)."""
    total = ray.cluster_resources()
    slots = [int(total.get(kind, 0) // need) for kind, need in (("CPU", resources.num_cpus), ("GPU", resources.num_gpus))
             if need > 0]
    return max(1, min(slots, default=1))


def task_options(sweep: Sweep, stage: str) -> dict[str, Any]:
    """The Ray options of the sweep's tasks of ``stage`` (``extract``: the backbone and feature tasks, ``fit``,
    ``evaluate``): that stage's ``resources`` per task (``num_gpus=0.5``: two tasks share a GPU) and
    ``max_retries``."""
    request = sweep.resources.of(stage)
    return {"num_cpus": request.num_cpus, "num_gpus": request.num_gpus, "max_retries": sweep.max_retries}


def warm_up_task() -> None:
    """Import the harness, torch and the registered methods in this worker.

    Ray starts idle workers with ``ray.init``, but a worker imports the harness (torch, pandas: about 3-5 s
    on 2 cores) only when its first task arrives. Unwarmed, every worker but the one that ran the backbone
    task paid that when the first method tasks arrived, idle while the others worked. One warm-up task per
    task slot but the backbone task's, submitted with it, overlaps those imports with the preparation.
    """
    from mlfsic.methods.registry import available_methods

    available_methods()


def set_threads(num_cpus: float) -> None:
    """Torch's thread count in this worker: ``num_cpus`` rounded down, at least 1."""
    import torch

    torch.set_num_threads(max(1, int(num_cpus)))


def task_device() -> str:
    """The torch device of the running Ray task: ``"cuda"`` when Ray assigned it GPUs (Ray sets
    ``CUDA_VISIBLE_DEVICES`` to them, so ``cuda`` is the assigned one; with ``resources.num_gpus=0.5`` two
    tasks share it), else ``"cpu"``. A task given a GPU on a node where torch finds no CUDA device stops with
    one line instead of running on the CPU unnoticed, unless ``DECLARED_GPUS_ON_CPU`` is set in its environment
    (rehearsals of GPU scheduling on a machine without CUDA: ``tests/gpu_check.py --rehearse``). Feature
    extraction runs on this device, and fit and
    evaluate tasks hand it to their method (``Method.use_device``): a method that declares ``uses_device`` (lcm,
    wvga, wvga-adapted, laso, protonet, mkt, clip-zeroshot) fits and predicts there, any other (linear-probe,
    tip-adapter, the baselines, plug-ins that ignore the device) on the CPU; run.json's ``devices`` records which.
    """
    gpu_ids = ray.get_gpu_ids()
    if not gpu_ids:
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        if os.environ.get(DECLARED_GPUS_ON_CPU) == "1":
            return "cpu"
        raise MlfsicError(
            f"Ray assigned GPU {','.join(str(i) for i in gpu_ids)} to a task on {socket.gethostname()}, but torch "
            f"finds no CUDA device there (torch {torch.__version__}, CUDA build {torch.version.cuda}); "
            "set resources.num_gpus=0 or install a CUDA build of torch on the GPU nodes"
        )
    return "cuda"
