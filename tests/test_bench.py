"""Benchmarks (``make bench``): sweep figures on the default-size coco-moji, printed one per line.

Not part of the default suite (``@pytest.mark.slow``). Each sweep runs as a real ``mlfsic run``
subprocess with its own local Ray, so 1-CPU and 2-CPU timings do not share a Ray instance. The results
dir is fresh for every bench (``MLFSIC_BENCH_RESULTS`` overrides it), so the cold sweep is really cold.
Figures:
- backbone forward passes per unique image over a whole cold sweep (target 1.0);
- evaluation throughput (episodes/s of ``predict``) per method;
- wall time of the same warm sweep (fits and features cached, evaluation recomputed) on 1 vs 2 Ray CPUs,
  as interleaved pairs (``MLFSIC_BENCH_PAIRS``, default 3) and their median speed-up;
- the share of that wall time spent outside method code;
- random scoring's mAP against the analytic expectation of a random ranking on the same episodes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow

BENCH_OVERRIDES = ["n_episodes=100", "seeds=[0]", "setting=[0shot,1shot,5shot]"]
BENCH_PAIRS = int(os.environ.get("MLFSIC_BENCH_PAIRS", "3"))  # interleaved 1-CPU/2-CPU warm sweeps


def _mlfsic_run(results_dir: Path, *overrides: str) -> dict:
    command = [sys.executable, "-m", "mlfsic.harness.cli", "run", f"results_dir={results_dir}", *BENCH_OVERRIDES,
               *overrides]
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    return {"dir": run_dir, "run": json.loads((run_dir / "run.json").read_text()),
            "records": pd.read_parquet(run_dir / "records.parquet")}


def expected_random_ap(n: int, m: int) -> float:
    """E[AP] of a uniformly random ranking of n items with m positives: (H_n + (m-1)/(n-1) (n - H_n)) / n."""
    harmonic = float(np.sum(1.0 / np.arange(1, n + 1)))
    if n == 1:
        return 1.0
    return (harmonic + (m - 1) / (n - 1) * (n - harmonic)) / n


def test_bench_sweep_figures(tmp_path):
    results_dir = Path(os.environ.get("MLFSIC_BENCH_RESULTS", tmp_path)).resolve()
    cold = _mlfsic_run(results_dir, "run_id=bench-cold", "ray.num_cpus=2")
    forwards = cold["run"]["forward_passes"] / cold["run"]["n_feature_images"]
    print(f"\nbench: backbone_forward_passes_per_unique_image={forwards:.3f}"
          f" (images={cold['run']['n_feature_images']}, cold sweep wall_s={cold['run']['wall_s']:.1f})")

    # The same warm sweep (600 episodes; fits from the cold run's checkpoints, evaluation redone) on 1 and 2
    # Ray CPUs, interleaved 1, 2, 1, 2, ...: this VM's speed drifts by up to ~10% over minutes, so each 2-CPU
    # run is compared with the 1-CPU run just before it, and the median pair's speed-up is the figure.
    # Where the 2-CPU run loses against 2x, per pair: its chunks need more CPU-seconds for the same work
    # (``cpu_ratio``: cache and memory shared by both cores), and they wait while runnable (``waited``: wall -
    # CPU seconds of the chunks, the driver and Ray's own processes taking the cores).
    speedups: dict[str, list[float]] = {"whole sweep": [], "evaluate phase": []}
    for pair in range(BENCH_PAIRS):
        walls, task_walls, chunk_cpu = {}, {}, {}
        for cpus in (1, 2):
            warm = _mlfsic_run(results_dir, f"run_id=bench-warm-{cpus}cpu-{pair}", f"ray.num_cpus={cpus}",
                               "save_scores=true", "n_episodes=600")
            walls[cpus] = warm["run"]["wall_s"]
            task_walls[cpus] = warm["run"]["phase_s"]["fit_and_evaluate"]
            chunks = warm["run"]["evaluate_chunk_s"]
            chunk_cpu[cpus] = chunks["cpu"]
            method_s = float(warm["records"]["predict_s"].sum())
            outside = 1.0 - method_s / (task_walls[cpus] * cpus)
            print(f"bench: pair {pair}: warm_sweep_wall_s[{cpus}cpu]={walls[cpus]:.1f} (prepare "
                  f"{warm['run']['phase_s']['prepare']:.1f}, evaluate {task_walls[cpus]:.1f}; chunks: "
                  f"{chunks['n_chunks']} cpu_s={chunks['cpu']:.1f} waited_s={chunks['wall'] - chunks['cpu']:.1f})  "
                  f"share_of_evaluate_cpu_time_outside_method_code={outside:.2f}")
        speedups["whole sweep"].append(walls[1] / walls[2])
        speedups["evaluate phase"].append(task_walls[1] / task_walls[2])
        print(f"bench: pair {pair}: speedup_2cpu_vs_1cpu whole sweep={walls[1] / walls[2]:.2f}, "
              f"evaluate phase={task_walls[1] / task_walls[2]:.2f}; chunk cpu_ratio_2cpu_vs_1cpu="
              f"{chunk_cpu[2] / chunk_cpu[1]:.3f}")
    print(f"bench: speedup_2cpu_vs_1cpu (median of {BENCH_PAIRS} pairs) "
          + ", ".join(f"{phase}={np.median(values):.2f}" for phase, values in speedups.items()))

    for method, group in warm["records"].groupby("method"):
        print(f"bench: predict_episodes_per_s[{method}]={len(group) / group['predict_s'].sum():.1f}")

    scores = np.load(warm["dir"] / "scores" / "random__1shot__seed0.npz")
    expected = []
    for episode in np.unique(scores["episode"]):
        targets = scores["targets"][scores["episode"] == episode]
        expected.append(np.mean([expected_random_ap(len(targets), int(m)) for m in targets.sum(axis=0)]))
    random_rows = warm["records"].query("method == 'random' and setting == '1shot'")
    observed, analytic = float(random_rows["map"].mean()), float(np.mean(expected))
    print(f"bench: random_1shot_map={100 * observed:.2f} analytic_expectation={100 * analytic:.2f}")
    assert abs(observed - analytic) < 0.02
    assert forwards == pytest.approx(1.0)
