"""GPU scheduling without a GPU: a Ray instance that declares two GPUs (``ray.init(num_gpus=2)``, in a subprocess
so it does not meet the tests' shared Ray) on this CPU-only machine.

- ``resources.num_gpus=0.5`` packs two tasks per GPU: four probe tasks submitted with the sweep's own task
  options run at once, two on each GPU id, each seeing only its GPU in ``CUDA_VISIBLE_DEVICES``;
- a task Ray gave a GPU, on a node where torch finds no CUDA, stops with one line (``task_device``), and a
  sweep asking for GPUs there ends before any feature or method task, with that line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import torch
from conftest import tiny_overrides

PROBE = textwrap.dedent("""
    import json, os, sys, time
    import ray
    from mlfsic.harness.errors import MlfsicError
    from mlfsic.harness.sweep.load import load_sweep
    from mlfsic.harness.sweep.runner import run_sweep, task_device, task_options

    overrides = json.loads(sys.argv[1])
    ray.init(address="local", num_cpus=4, num_gpus=2, object_store_memory=100_000_000, include_dashboard=False,
             log_to_driver=False)
    sweep = load_sweep(overrides)

    def probe():
        started = time.time()
        try:
            outcome = task_device()
        except MlfsicError as error:
            outcome = "error: " + str(error)
        time.sleep(3)
        return {"gpu_ids": [int(i) for i in ray.get_gpu_ids()], "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "started": started, "ended": time.time(), "device": outcome}

    probes = ray.get([ray.remote(probe).options(**task_options(sweep)).remote() for _ in range(4)])
    try:
        run_sweep(sweep, progress=False)
        sweep_error = None
    except MlfsicError as error:
        sweep_error = str(error)
    print(json.dumps({"probes": probes, "sweep_error": sweep_error}))
""")


def test_half_gpus_pack_two_tasks_per_gpu_and_a_gpu_without_cuda_stops_the_sweep(tiny_results_dir, tmp_path):
    overrides = tiny_overrides(tiny_results_dir, "resources.num_gpus=0.5", "resources.num_cpus=1", "method=[random]",
                               "setting=[1shot]", "seeds=[0]", "n_episodes=10", f"run_id=gpu-{tmp_path.name}")
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(overrides)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    probes = report["probes"]
    assert sorted(len(p["gpu_ids"]) for p in probes) == [1, 1, 1, 1]
    per_gpu = {}
    for p in probes:
        per_gpu.setdefault(p["gpu_ids"][0], []).append(p)
        assert p["visible"] == str(p["gpu_ids"][0])  # the task sees only the GPU Ray assigned it
    assert sorted(per_gpu) == [0, 1] and all(len(v) == 2 for v in per_gpu.values())
    assert max(p["started"] for p in probes) < min(p["ended"] for p in probes)  # all four ran at once
    if torch.cuda.is_available():
        assert all(p["device"] == "cuda" for p in probes)
        return
    for p in probes:
        assert p["device"].startswith(f"error: Ray assigned GPU {p['gpu_ids'][0]} to a task on ")
        assert "torch finds no CUDA device there" in p["device"] and "\n" not in p["device"]
    assert report["sweep_error"] is not None and report["sweep_error"].startswith("Ray assigned GPU ")
    assert "set resources.num_gpus=0" in report["sweep_error"]
