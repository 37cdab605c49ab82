"""Benchmark (``make bench``; a few CPU-minutes and ~4.5 GB of temporary disk): the peak heap of fit workers on a
ResNet-50-sized feature store (issue 37, item 4: "fits without copies").

A synthetic store (``synthetic_store.write_store``) of ``N_BASE`` base images (and ``N_VAL`` val images) with
ResNet-50's features, global (2048) float32 and local (49 x 2048) float16, is written on disk a block at a time
(the base split's grids alone are ~4 GB; as the float32 copy ``split_data`` made before, 8 GB). Then lcm, laso
and protonet each fit in their own subprocess (one torch thread, a Ray task's ``num_cpus=1``) through the
harness's own path, ``harness.sweep.evaluate.fit_method`` (``split_data`` of base and val, ``fit``, the
checkpoint), with their ``configs/methods`` values and few training steps (``FEW_STEPS``: the memory a fit holds
does not grow with its steps).

While a worker runs, this process reads its ``/proc/<pid>/status`` every ``SAMPLE_S`` seconds: **peak heap** is
the largest ``RssAnon`` seen (anonymous memory: the arrays a worker allocates, its interpreter and torch), **peak
RSS** the kernel's ``VmHWM`` (which also counts the pages of the memory-mapped store the worker touched; the
kernel drops those under pressure, so they need no memory of the node's own; ``ru_maxrss`` is not used: after
``fork`` + ``exec`` it keeps the forking pytest process's peak). The test prints one line per method and asserts
peak heap < ``HEAP_LIMIT_BYTES`` (2 GB).
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

N_BASE = 20_000
N_VAL = 2_000
POSITIONS, DIM = 49, 2048  # ResNet-50's last feature map (7 x 7 x 2048)
EMBEDDING_DIM = 384  # minilm
LABELS = {"base": 42, "val": 9, "test": 12}
FEW_STEPS = {
    "lcm": {"steps": 20, "eval_every": 10, "n_val_episodes": 5},
    "laso": {"steps": 20, "classifier_epochs": 1},
    "protonet": {"n_episodes": 20},
}
HEAP_LIMIT_BYTES = 2 * 10**9
SAMPLE_S = 0.02
FIT_TIMEOUT_S = 1800


def _status(pid: int | str) -> dict[str, int]:
    """The memory lines of /proc/<pid>/status, in bytes (empty once the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {line.split(":")[0]: int(line.split()[1]) * 1024 for line in text.splitlines()
            if line.startswith(("RssAnon:", "RssFile:", "VmHWM:", "VmRSS:"))}


def write_benchmark(out: Path) -> Path:
    """The store under ``out / "store"``; the pickled ``StoreBenchmark`` over it (what a worker loads)."""
    from synthetic_data import make_world
    from synthetic_store import split_specs, write_store

    world = make_world(n_base_labels=LABELS["base"] + LABELS["val"], n_novel_labels=LABELS["test"], dim=DIM,
                       emb_dim=EMBEDDING_DIM, seed=1234)
    sizes = {"base": N_BASE, "val": N_VAL}
    benchmark = write_store(out / "store", world, split_specs(world, sizes, LABELS["val"]), POSITIONS, n_shards=4)
    path = out / "benchmark.pkl"
    path.write_bytes(pickle.dumps(benchmark))
    return path


def fit_worker(name: str, benchmark_path: Path, cache_root: Path) -> dict:
    """Fit ``name`` as a sweep's fit task does (``fit_method``), in this process; what it measured of itself."""
    import torch

    from mlfsic.harness.config import method_yaml
    from mlfsic.harness.sweep.evaluate import fit_method, method_spec
    from mlfsic.methods.registry import get_method_class

    torch.set_num_threads(1)
    benchmark = pickle.loads(benchmark_path.read_bytes())
    before = _status("self")
    spec = method_spec(name, {**method_yaml(name), **FEW_STEPS[name]})
    started = time.perf_counter()
    fit = fit_method(benchmark, spec, 0, cache_root, eval_split="test")
    return {"method": name, "fit_s": time.perf_counter() - started, "cached": fit.cached,
            "heap_before_fit": before.get("RssAnon", 0), "local_rows": get_method_class(name).local_rows}


def measure(name: str, benchmark_path: Path, cache_root: Path) -> dict:
    """Run ``fit_worker`` in a subprocess, sampling its memory; its report with the sampled peaks."""
    command = [sys.executable, str(Path(__file__).resolve()), "fit", name, str(benchmark_path), str(cache_root)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_heap = peak_rss = peak_file = 0
    deadline = time.monotonic() + FIT_TIMEOUT_S
    while process.poll() is None:
        status = _status(process.pid)
        peak_heap = max(peak_heap, status.get("RssAnon", 0))
        peak_file = max(peak_file, status.get("RssFile", 0))
        peak_rss = max(peak_rss, status.get("VmHWM", 0))
        if time.monotonic() > deadline:
            process.kill()
        time.sleep(SAMPLE_S)
    stdout, stderr = process.communicate()
    assert process.returncode == 0, f"{name}: exit {process.returncode}: {stderr[-3000:]}"
    report = json.loads(stdout.strip().splitlines()[-1])
    return {**report, "peak_heap": peak_heap, "peak_rss": peak_rss, "peak_file": peak_file}


def test_fit_workers_heap_stays_small_on_a_resnet50_sized_store(tmp_path):
    started = time.perf_counter()
    benchmark_path = write_benchmark(tmp_path)
    store_bytes = sum(path.stat().st_size for path in (tmp_path / "store").rglob("local.npy"))
    copy_bytes = N_BASE * POSITIONS * DIM * 4
    print(f"\nfit memory: store of {N_BASE} base + {N_VAL} val images x {POSITIONS} x {DIM} float16 written in "
          f"{time.perf_counter() - started:.0f} s ({store_bytes / 1e9:.1f} GB of local grids; the base split as a "
          f"float32 copy: {copy_bytes / 1e9:.1f} GB)", flush=True)
    rows = []
    for name in FEW_STEPS:
        row = measure(name, benchmark_path, tmp_path / "cache")
        rows.append(row)
        print(f"fit memory: {name}: peak heap (RssAnon) {row['peak_heap'] / 1e9:.2f} GB, peak RSS (VmHWM, with the "
              f"store's mapped pages) {row['peak_rss'] / 1e9:.2f} GB, mapped file pages up to {row['peak_file'] / 1e9:.2f}"
              f" GB, heap before the fit {row['heap_before_fit'] / 1e9:.2f}"
              f" GB, fit {row['fit_s']:.0f} s", flush=True)
    print("\n| method | peak heap GB (RssAnon) | peak RSS GB (VmHWM) | fit s |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['method']} | {row['peak_heap'] / 1e9:.2f} | {row['peak_rss'] / 1e9:.2f} | {row['fit_s']:.0f} |")
    for row in rows:
        assert not row["cached"]
        assert 0 < row["peak_heap"] < HEAP_LIMIT_BYTES, f"{row['method']}: peak heap {row['peak_heap'] / 1e9:.2f} GB"


if __name__ == "__main__":  # the fit workers of the test
    if sys.argv[1] != "fit":
        raise SystemExit(f"unknown command {sys.argv[1]!r}: fit METHOD BENCHMARK.pkl CACHE_DIR")
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # synthetic_store, for the pickled benchmark
    print(json.dumps(fit_worker(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))))
