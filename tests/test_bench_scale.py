"""Benchmark (``make bench``): cost curves of a short sweep against the number of coco-moji images (issue 25, item 3).

For each size in ``MLFSIC_SCALE_SIZES`` (total generated images before the generator's ~5 % mixed scenes;
default ``10000,40000``, about 12 minutes on an idle 2-core box; the issue's full curve is
``10000,40000,120000``) and in a
fresh results dir per size (``MLFSIC_SCALE_RESULTS`` keeps them), three subprocesses, each with its own
local Ray, each watched by ``tests/proc_sampler.py``:

1. ``mlfsic data prepare coco-moji`` with ``n_base/n_val/n_test`` in the default's 6000:1500:2000 ratio
   -> **generation** seconds;
2. a cold ``mlfsic run`` of a short sweep (``SWEEP``: protonet, laso, lcm; 1/5-shot; 100 episodes; one
   seed). The pinned SmallCNN matches only the default size, so the run trains its CNN on the base split:
   one epoch (``dataset.backbone.epochs=1``), its own phase **backbone** (run.json's training seconds;
   a ResNet-50 run has no such phase).
   **extraction**: the feature step's wall time (the runner's ``features: ... in X s`` line).
   **fit**: seconds Ray workers spent in ``_fit_task`` (sampled; reading the base split from the store
   included), beside run.json's ``fit_seconds`` (``Method.fit`` alone). **evaluate**: the chunks' task
   seconds (run.json ``evaluate_chunk_s.wall``). **report**: from the runner's closing ``sweep:`` line
   to the CLI's ``chunks:`` line (parts assembled into records.parquet, run.json, leaderboard files);
3. the same sweep again (``run_id`` changed): fits come from checkpoints, so its workers run only
   evaluate tasks -> the **evaluate worker's** peak RSS, unpolluted by a fit in the same worker.

Also per size: store bytes (the feature store directory), image bytes, the driver's peak RSS (VmHWM of the
``mlfsic run`` process) and workers' peak RSS (VmHWM; per task kind the largest RSS, split into the
worker's own heap ``RssAnon`` and touched pages of memory-mapped files ``RssFile``, shared libraries
included). CPU seconds per phase beside the wall seconds, since on a shared box wall time measures the
neighbours too: generation from ``getrusage(RUSAGE_CHILDREN)``, evaluate from run.json's chunk CPU, the
other task phases from the workers' ``/proc`` CPU while they had that task's title. With two or more
sizes, the growth exponent b of each figure (least squares of log y = a + b log images). The figures go
to stdout and, with ``MLFSIC_SCALE_OUT=FILE``, to a JSON file (docs/scale.md quotes one).
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from proc_sampler import ProcSampler, tree_bytes

pytestmark = pytest.mark.slow

SIZES = [int(n) for n in os.environ.get("MLFSIC_SCALE_SIZES", "10000,40000").split(",") if n.strip()]
SWEEP = ["method=[protonet,laso,lcm]", "setting=[1shot,5shot]", "seeds=[0]", "n_episodes=100",
         "dataset.backbone.epochs=1", f"ray.num_cpus={os.environ.get('MLFSIC_SCALE_CPUS', '2')}"]
RATIO = {"n_base": 6000, "n_val": 1500, "n_test": 2000}  # configs/dataset/coco-moji.yaml


def split_counts(n_images: int) -> dict[str, int]:
    total = sum(RATIO.values())
    counts = {key: int(round(n_images * value / total)) for key, value in RATIO.items()}
    counts["n_base"] += n_images - sum(counts.values())
    return counts


def _watched(command: list[str], timeout: float) -> dict:
    """Run ``command``; its stdout, stderr lines with arrival times, wall seconds and the sampler."""
    started = time.perf_counter()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    # RAY_ADDRESS=local: a local Ray of its own even when a `ray start` / Cluster of someone else on this machine
    # is recorded in /tmp/ray/ray_current_cluster (ray.init() without an address would connect to it).
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "RAY_ADDRESS": "local"})
    lines: list[tuple[float, str]] = []
    out: list[str] = []
    readers = [threading.Thread(target=lambda: lines.extend((time.perf_counter(), line.rstrip("\n"))
                                                            for line in process.stderr), daemon=True),
               threading.Thread(target=lambda: out.extend(process.stdout), daemon=True)]
    with ProcSampler(process.pid) as sampler:
        for reader in readers:
            reader.start()
        process.wait(timeout=timeout)
        for reader in readers:
            reader.join()
    wall = time.perf_counter() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (children.ru_utime + children.ru_stime) - (children_before.ru_utime + children_before.ru_stime)
    stderr = "\n".join(line for _, line in lines)
    assert process.returncode == 0, stderr[-3000:]
    return {"wall": wall, "cpu": cpu, "lines": lines, "stdout": "".join(out), "sampler": sampler}


def _line_time(lines: list[tuple[float, str]], pattern: str) -> tuple[float, re.Match]:
    for moment, line in lines:
        match = re.search(pattern, line)
        if match:
            return moment, match
    raise AssertionError(f"no stderr line matches {pattern!r}:\n" + "\n".join(line for _, line in lines[-40:]))


def _run_command(results_dir: Path, counts: dict[str, int], run_id: str) -> list[str]:
    return [sys.executable, "-m", "mlfsic.harness.cli", "run", f"results_dir={results_dir}", f"run_id={run_id}",
            *(f"dataset.generate.{key}={value}" for key, value in counts.items()), *SWEEP]


def measure(n_images: int, results_dir: Path) -> dict:
    counts = split_counts(n_images)
    data_dir = results_dir / "data" / "coco-moji-seed0"  # configs/dataset/coco-moji.yaml's root, seed 0
    generated = _watched([sys.executable, "-m", "mlfsic.harness.cli", "data", "prepare", "coco-moji",
                          f"out={data_dir}", "seed=0", *(f"{key}={value}" for key, value in counts.items())], 7200)

    cold = _watched(_run_command(results_dir, counts, f"scale-{n_images}-cold"), 7200)
    run_dir = Path(cold["stdout"].strip().splitlines()[-1])
    run = json.loads((run_dir / "run.json").read_text())
    _, features = _line_time(cold["lines"], r"^features: .* in ([0-9.]+) s")
    _, dataset_line = _line_time(cold["lines"], r"^dataset: .*, ([0-9]+) images, ready in ([0-9.]+) s")
    sweep_closed, _ = _line_time(cold["lines"], r"^sweep: \d+ chunks \(")
    reported, _ = _line_time(cold["lines"], r"^chunks: ")
    training = run["backbone"].get("training") or run["backbone"]  # pinned: its record; trained: the report

    def task_seconds(sampler: ProcSampler, task: str, what: str) -> float:
        return sum(getattr(s, what) for t, s in sampler.titles.items() if t.startswith(f"ray::{task}"))

    warm = _watched(_run_command(results_dir, counts, f"scale-{n_images}-warm"), 7200)
    warm_run = json.loads((Path(warm["stdout"].strip().splitlines()[-1]) / "run.json").read_text())
    assert warm_run["counts"]["fits_cached"] == warm_run["counts"]["fit_tasks"]

    def kind(sampler: ProcSampler, task: str) -> dict:
        stats = [s for t, s in sampler.titles.items() if t.startswith(f"ray::{task}")]
        return {"rss": max((s.rss for s in stats), default=0), "anon": max((s.anon for s in stats), default=0),
                "file": max((s.file for s in stats), default=0)}

    n_total = int(dataset_line.group(1))
    assert run["forward_passes"] == run["n_feature_images"]
    return {
        "n_requested": n_images, "n_images": n_total, "counts": counts,
        "n_feature_images": run["n_feature_images"],
        "seconds": {
            "generation": generated["wall"],
            "backbone": float(training.get("seconds", 0.0)),
            "extraction": float(features.group(1)),
            "fit": task_seconds(cold["sampler"], "_fit_task", "seconds"),
            "evaluate": float(run["evaluate_chunk_s"]["wall"]),
            "report": reported - sweep_closed,
        },
        "cpu_seconds": {
            "generation": generated["cpu"],
            "backbone": task_seconds(cold["sampler"], "_backbone_task", "cpu"),
            "extraction": task_seconds(cold["sampler"], "_features_task", "cpu"),
            "fit": task_seconds(cold["sampler"], "_fit_task", "cpu"),
            "evaluate": float(run["evaluate_chunk_s"]["cpu"]),
        },
        "driver_cpu_s": cold["sampler"].root_cpu,
        "fit_method_s": {key: round(value, 3) for key, value in run["fit_seconds"].items()},
        "sweep_wall_s": run["wall_s"], "cold_process_wall_s": cold["wall"], "warm_process_wall_s": warm["wall"],
        "warm_evaluate_s": float(warm_run["evaluate_chunk_s"]["wall"]),
        "chunks": run["evaluate_chunk_s"]["n_chunks"],
        "bytes": {"store": tree_bytes(results_dir / "cache" / "features"), "images": tree_bytes(data_dir)},
        "rss": {
            "generation": generated["sampler"].root_hwm,
            "driver": cold["sampler"].root_hwm,
            "worker_peak": cold["sampler"].peak_worker(),
            "backbone_worker": kind(cold["sampler"], "_backbone_task"),
            "features_worker": kind(cold["sampler"], "_features_task"),
            "fit_worker": kind(cold["sampler"], "_fit_task"),
            "evaluate_worker_warm": kind(warm["sampler"], "_evaluate_task"),
            "warm_worker_peak": warm["sampler"].peak_worker(),
            "warm_driver": warm["sampler"].root_hwm,
        },
    }


def exponent(sizes: list[float], values: list[float]) -> float | None:
    """b of the least-squares line log(value) = a + b log(size); None with fewer than 2 usable points."""
    points = [(s, v) for s, v in zip(sizes, values) if v and v > 0]
    if len(points) < 2:
        return None
    x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    return float(np.polyfit(x, y, 1)[0])


def table(results: list[dict]) -> tuple[list[str], dict]:
    """The printed figures of ``results`` (one dict per size, as ``measure`` returns) and each row's exponent.

    Also for results of separate invocations: ``table(json.load(f1)["results"] + json.load(f2)["results"])``.
    """
    results = sorted(results, key=lambda r: r["n_images"])
    lines: list[str] = []
    sizes = [r["n_images"] for r in results]
    phases = list(results[0]["seconds"])
    rows = {}
    for phase in phases:
        rows[f"{phase} wall s"] = [r["seconds"][phase] for r in results]
        if phase in results[0]["cpu_seconds"]:
            rows[f"{phase} CPU s"] = [r["cpu_seconds"][phase] for r in results]
    rows["method fit s (Method.fit only)"] = [sum(r["fit_method_s"].values()) for r in results]
    rows["driver CPU s"] = [r["driver_cpu_s"] for r in results]
    rows["store MB"] = [r["bytes"]["store"] / 2**20 for r in results]
    rows["images MB"] = [r["bytes"]["images"] / 2**20 for r in results]
    rows["generator peak RSS MB"] = [r["rss"]["generation"] / 2**20 for r in results]
    rows["driver peak RSS MB"] = [r["rss"]["driver"] / 2**20 for r in results]
    rows["worker peak RSS MB (any task)"] = [r["rss"]["worker_peak"] / 2**20 for r in results]
    for task in ("backbone_worker", "features_worker", "fit_worker", "evaluate_worker_warm"):
        rows[f"{task} RSS MB"] = [r["rss"][task]["rss"] / 2**20 for r in results]
        rows[f"{task} anon MB"] = [r["rss"][task]["anon"] / 2**20 for r in results]
        rows[f"{task} mmap/file MB"] = [r["rss"][task]["file"] / 2**20 for r in results]

    lines.append(f"scale: sweep {' '.join(SWEEP)}; images (generated, incl. mixed scenes): {sizes}")
    lines.append("| figure | " + " | ".join(str(n) for n in sizes) + " | exponent |")
    lines.append("|---|" + "---|" * (len(sizes) + 1))
    exponents = {}
    for name, values in rows.items():
        b = exponent(sizes, values)
        exponents[name] = b
        lines.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in values) + f" | {'-' if b is None else f'{b:.2f}'} |")
    for r in results:
        lines.append(f"scale: {r['n_images']} images: sweep wall {r['sweep_wall_s']:.1f} s, "
                     f"cold process {r['cold_process_wall_s']:.1f} s,"
              f" warm process {r['warm_process_wall_s']:.1f} s (evaluate {r['warm_evaluate_s']:.1f} s),"
              f" fit_seconds {r['fit_method_s']}, chunks {r['chunks']}, feature images {r['n_feature_images']}")
    return lines, exponents


def test_bench_scale_cost_curves(tmp_path):
    base = Path(os.environ.get("MLFSIC_SCALE_RESULTS", tmp_path)).resolve()
    results = []
    for n_images in SIZES:
        started = time.perf_counter()
        results.append(measure(n_images, base / f"n{n_images}"))
        if os.environ.get("MLFSIC_SCALE_OUT"):  # kept as each size finishes
            Path(os.environ["MLFSIC_SCALE_OUT"]).write_text(json.dumps({"sweep": SWEEP, "results": results}, indent=1))
        print(f"\nscale: {n_images} images measured in {time.perf_counter() - started:.0f} s", flush=True)

    lines, exponents = table(results)
    print("\n" + "\n".join(lines))
    out = os.environ.get("MLFSIC_SCALE_OUT")
    if out:
        Path(out).write_text(json.dumps({"sweep": SWEEP, "results": results, "exponents": exponents}, indent=1) + "\n")
    for r in results:
        assert all(value > 0 for value in r["seconds"].values())


RAY_TASKS = int(os.environ.get("MLFSIC_RAY_TASKS", "10000"))


def test_bench_ray_per_task_overhead():
    """The driver's per-task overhead over >= 10,000 tiny tasks on a 3-node local cluster (tests/ray_overhead.py)."""
    script = Path(__file__).with_name("ray_overhead.py")
    result = subprocess.run([sys.executable, str(script), str(RAY_TASKS)], capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"\nray overhead: {figures['nodes']} nodes, {figures['cluster_cpus']:g} cluster CPUs on "
          f"{figures['host_cpus']} host cores")
    for name, v in figures["variants"].items():
        print(f"ray overhead [{name}]: {v['n_tasks']} tasks in {v['wall_s']:.1f} s = {v['tasks_per_s']:.0f} tasks/s; "
              f"per task: wall {v['per_task_wall_ms']:.2f} ms, submit {v['per_task_submit_ms']:.2f} ms, "
              f"driver CPU {v['per_task_driver_cpu_ms']:.2f} ms (submit {v['submit_wall_s']:.1f} s wall / "
              f"{v['submit_cpu_s']:.1f} s CPU, collect {v['collect_wall_s']:.1f} s wall / {v['collect_cpu_s']:.1f} s CPU)")
    out = os.environ.get("MLFSIC_RAY_OVERHEAD_OUT")
    if out:
        Path(out).write_text(json.dumps(figures, indent=1) + "\n")
    assert figures["nodes"] == 3 and figures["variants"]["runner"]["n_tasks"] > RAY_TASKS
