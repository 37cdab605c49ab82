"""The driver's per-task overhead on a local multi-node Ray cluster (issue 25, item 3), as a script.

Run by ``tests/test_bench_scale.py::test_bench_ray_per_task_overhead`` in a subprocess (the test session
already holds a Ray instance), or by hand: ``python tests/ray_overhead.py [N_TASKS]``. Prints one JSON
object.

``ray.cluster_utils.Cluster``: a head and two more nodes (separate raylets on localhost), one CPU each,
80 MB object stores, no dashboard, Ray temp dirs of its own (not /tmp/ray). Tasks are submitted the way
``harness.sweep.driver.planning.plan_and_submit`` submits chunks: one ``RemoteFunction`` per task kind, made once
(``ray.remote(fn).options(num_cpus=1, num_gpus=0, max_retries=3)``), called per task with the arguments of
an evaluate task (a real ``Benchmark`` handle and ``MethodSpec``, the setting, an episode-set path, 100
episode indices, the ref of an upstream fit task, the run id); the task body returns at once. They are
collected by the runner's own loop, ``driver.collect.collect`` (time-bounded ``ray.wait`` rounds, progress off).
A tiny task returns a string, which ``collect`` files as the cell's failure (a dict entry), so nothing is
written to disk and the figure is Ray's and the driver's cost, not a method's or the store's.

Variants, each on the same cluster after one warm-up round that starts every worker:
- ``runner``: as above, N tasks;
- ``runner_small``: the same with N/5 tasks, to see whether the per-task cost grows with N;
- ``remote_per_task``: N/5 tasks, each through a fresh ``ray.remote(fn)`` (the runner's style before it
  made its remote functions once), to show what that costs.
Per variant: submission wall and driver CPU, collection wall and driver CPU, per task and tasks/s.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import ray


def _fit(benchmark, spec, seed):  # stands in for driver.tasks.fit_task: returns a small result at once
    return "fit"


def _chunk(benchmark, spec, seed, setting, episode_set_path, indices, fit, run_id, save_scores):
    return "ok"  # a string: driver.collect.collect files it as the cell's failure (no disk writes)


def _handles():
    from mlfsic.harness.sweep.benchmark import Benchmark
    from mlfsic.harness.sweep.evaluate import method_spec

    benchmark = Benchmark(
        dataset_name="coco-moji", dataset_config=json.dumps({"name": "coco-moji", "root": "/tmp/none"}),
        annotation_sha256="0" * 64, split_labels={"base": ("a",) * 42, "val": ("b",) * 9, "test": ("c",) * 12},
        backbone_config={"kind": "small_cnn", "image_size": 96}, backbone_weights="/tmp/none.pt",
        backbone_id="1" * 64, feature_root="/tmp/features", embedding_encoder="minilm", embedding_path=None,
        embedding_cache="/tmp/embeddings",
    )
    return benchmark, method_spec("random", {})


def run_variant(n_tasks: int, hoisted: bool, benchmark, spec) -> dict:
    from mlfsic.harness.sweep.driver.collect import collect
    from mlfsic.harness.sweep.driver.planning import Plan, Task

    options = {"num_cpus": 1, "num_gpus": 0, "max_retries": 3}
    plan = Plan(run_path=Path("/tmp/unused-run-dir"), dataset="coco-moji",
                counts={"fit_tasks": 1, "fits_trained": 0, "fits_cached": 0,
                        "chunks_total": n_tasks, "chunks_skipped": 0, "chunks_submitted": n_tasks})
    remote_chunk = ray.remote(_chunk).options(**options) if hoisted else None
    wall0, cpu0 = time.perf_counter(), time.process_time()
    fit_ref = ray.remote(_fit).options(**options).remote(benchmark, spec, 0)
    plan.pending[fit_ref] = Task("fit", "random", 0, ("1shot",))
    for chunk in range(n_tasks):
        function = remote_chunk if hoisted else ray.remote(_chunk).options(**options)
        ref = function.remote(benchmark, spec, 0, "1shot", "/tmp/episodes/set.json",
                              list(range(chunk * 100, chunk * 100 + 100)), fit_ref, "overhead", False)
        plan.pending[ref] = Task("evaluate", "random", 0, ("1shot",), f"part-{chunk}")
    wall1, cpu1 = time.perf_counter(), time.process_time()
    collect([plan], progress=False)
    wall2, cpu2 = time.perf_counter(), time.process_time()
    assert not plan.pending
    total = n_tasks + 1
    return {
        "n_tasks": total, "hoisted": hoisted,
        "submit_wall_s": wall1 - wall0, "submit_cpu_s": cpu1 - cpu0,
        "collect_wall_s": wall2 - wall1, "collect_cpu_s": cpu2 - cpu1,
        "wall_s": wall2 - wall0, "driver_cpu_s": cpu2 - cpu0,
        "per_task_wall_ms": 1000 * (wall2 - wall0) / total,
        "per_task_submit_ms": 1000 * (wall1 - wall0) / total,
        "per_task_driver_cpu_ms": 1000 * (cpu2 - cpu0) / total,
        "tasks_per_s": total / (wall2 - wall0),
    }


def main(n_tasks: int) -> dict:
    from ray.cluster_utils import Cluster

    # Its own Ray temp dirs: a head in /tmp/ray would record itself in /tmp/ray/ray_current_cluster, where
    # any other user's address-less ray.init() (a local `mlfsic run`) on this machine would then connect.
    temp = tempfile.mkdtemp(prefix="r", dir="/tmp")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 80 * 2**20,
                                                            "include_dashboard": False, "temp_dir": f"{temp}/h"})
    for _ in range(2):
        cluster.add_node(num_cpus=1, object_store_memory=80 * 2**20, temp_dir=f"{temp}/n")
    try:
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        benchmark, spec = _handles()
        nodes = len([node for node in ray.nodes() if node.get("Alive")])
        run_variant(300, True, benchmark, spec)  # warm-up: every node starts its worker and imports the harness
        results = {"nodes": nodes, "cluster_cpus": ray.cluster_resources().get("CPU", 0), "host_cpus": os.cpu_count(),
                   "variants": {}}
        for name, count, hoisted in (("runner", n_tasks, True), ("runner_small", max(1, n_tasks // 5), True),
                                     ("remote_per_task", max(1, n_tasks // 5), False)):
            results["variants"][name] = run_variant(count, hoisted, benchmark, spec)
        return results
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)))
