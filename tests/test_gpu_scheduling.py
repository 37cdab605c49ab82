"""GPU scheduling without a GPU: a Ray instance that declares GPUs (``ray.init(num_gpus=...)``, in a subprocess
so it does not meet the tests' shared Ray) on this CPU-only machine.

- ``resources.num_gpus=0.5`` packs two tasks per GPU: four probe tasks submitted with the sweep's own task
  options run at once, two on each GPU id, each seeing only its GPU in ``CUDA_VISIBLE_DEVICES``;
- a task Ray gave a GPU, on a node where torch finds no CUDA, stops with one line (``task_device``), and a
  sweep asking for GPUs there ends before any feature or method task, with that line;
- per-stage resources: with the one declared GPU held by fit-stage tasks (two halves, a third fit waiting),
  evaluate-stage tasks (CPUs only) run; and a sweep whose extraction and fits hold GPU shares writes the
  same records as the CPU-only sweep, with run.json recording what each stage asked for.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

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

    probes = ray.get([ray.remote(probe).options(**task_options(sweep, "extract")).remote() for _ in range(4)])
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


STAGES_PROBE = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import ray
    from mlfsic.harness.sweep.load import load_sweep
    from mlfsic.harness.sweep.runner import run_sweep, task_options

    def tasks_run_on_the_cpu():  # this machine has no CUDA: a task given a declared GPU runs on the CPU
        import mlfsic.harness.sweep.driver.tasks as tasks
        tasks.task_device = lambda: "cpu"

    common, per_stage, marks = json.loads(sys.argv[1]), json.loads(sys.argv[2]), Path(sys.argv[3])
    ray.init(address="local", num_cpus=4, num_gpus=1, object_store_memory=100_000_000, include_dashboard=False,
             log_to_driver=False, runtime_env={"worker_process_setup_hook": tasks_run_on_the_cpu})
    staged = load_sweep(common + per_stage + ["run_id=per-stage"])

    def probe(name, hold_s):
        started = time.time()
        (marks / name).touch()
        time.sleep(hold_s)
        return {"name": name, "gpu_ids": [int(i) for i in ray.get_gpu_ids()], "started": started, "ended": time.time()}

    # Four workers started first (one per CPU), as the runner's warm-up does: what is timed below is where Ray
    # schedules a task, not how long a worker process takes to start on a loaded machine.
    ray.get([ray.remote(probe).options(num_cpus=1).remote(f"warm{i}", 1.0) for i in range(4)])
    fit_probe = ray.remote(probe).options(**task_options(staged, "fit"))
    evaluate_probe = ray.remote(probe).options(**task_options(staged, "evaluate"))
    holders = [fit_probe.remote(f"fit{i}", 8.0) for i in range(3)]  # half a GPU each: the third waits
    while len(list(marks.glob("fit*"))) < 2:  # both halves of the GPU held
        time.sleep(0.05)
    evaluations = [evaluate_probe.remote(f"evaluate{i}", 0.5) for i in range(2)]
    probes = ray.get(holders + evaluations)
    outcomes = {name: run_sweep(sweep, progress=False).run_path
                for name, sweep in (("per_stage", staged), ("cpu_only", load_sweep(common + ["run_id=cpu-only"])))}
    print(json.dumps({"probes": probes, "runs": {name: str(path) for name, path in outcomes.items()}}))
""")


def test_evaluation_runs_on_cpus_while_fits_hold_every_gpu_share_and_records_match_a_cpu_run(tiny_results_dir,
                                                                                          tmp_path):
    import pandas as pd

    common = tiny_overrides(tiny_results_dir, "method=[random,wordvec-zeroshot]", "setting=[0shot,1shot]",
                            "seeds=[0]", "n_episodes=10", "chunk_episodes=5")
    per_stage = ["resources.num_gpus=0.5", "resources.extract.num_cpus=2"]
    marks = tmp_path / "marks"
    marks.mkdir()
    done = subprocess.run([sys.executable, "-c", STAGES_PROBE, json.dumps(common), json.dumps(per_stage), str(marks)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    probes = {p["name"]: p for p in report["probes"]}
    holders = sorted((probes[f"fit{i}"] for i in range(3)), key=lambda p: p["started"])
    running, waiting = holders[:2], holders[2]
    assert all(len(p["gpu_ids"]) == 1 for p in holders)
    held_from, held_until = max(p["started"] for p in running), min(p["ended"] for p in running)
    assert waiting["started"] >= held_until - 0.05  # the two halves were the whole GPU: the third fit waited
    for name in ("evaluate0", "evaluate1"):  # no GPU, and ran start to end while every GPU share was held
        assert probes[name]["gpu_ids"] == [] and held_from <= probes[name]["started"] < probes[name]["ended"] <= held_until

    def records(run_dir: str) -> pd.DataFrame:
        table = pd.read_parquet(Path(run_dir) / "records.parquet").drop(columns=["fit_s", "predict_s", "run_id"])
        return table.sort_values(["method", "setting", "seed", "episode"]).reset_index(drop=True)

    pd.testing.assert_frame_equal(records(report["runs"]["per_stage"]), records(report["runs"]["cpu_only"]))
    assert len(records(report["runs"]["cpu_only"])) >= 3 * 10  # random 0shot + 1shot, wordvec-zeroshot 0shot (+1shot)
    asked = {name: json.loads((Path(path) / "run.json").read_text())["stage_resources"]
             for name, path in report["runs"].items()}
    assert asked["cpu_only"] == {stage: {"num_cpus": 1.0, "num_gpus": 0.0} for stage in ("extract", "fit", "evaluate")}
    assert asked["per_stage"] == {"extract": {"num_cpus": 2.0, "num_gpus": 0.5}, "fit": {"num_cpus": 1.0, "num_gpus": 0.5},
                                  "evaluate": {"num_cpus": 1.0, "num_gpus": 0.0}}
