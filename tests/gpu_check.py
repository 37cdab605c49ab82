"""``make gpu-check`` (issue 25, item 4): the GPU figures, in one run, on a machine with CUDA. Never in CI.

    python tests/gpu_check.py             # on a CUDA machine: the figures below; else one skip line, exit 0
    python tests/gpu_check.py --rehearse  # every step on the CPU, tiny, a GPU *declared* to Ray: tests the script

Not collected by pytest (its name does not start with ``test_``); ``tests/test_gpu_check.py`` runs the
no-GPU path and the rehearsal. Steps:

1. **Extraction**: ResNet-50 (layer4, 224 px) through the feature store against a bare forward pass at
   batch 64 (``tests/extraction_bench.py``, the measurement of ``make bench``), on 512 JPEGs of 640 x 480, as a
   feature task given ``num_cpus`` 1 (decoding in its own process) and every core of the machine (one decode
   worker process per core but one).
   Weights: ``MLFSIC_RESNET50_WEIGHTS`` (a torchvision state dict), else a random initialisation: timing
   does not depend on the values.
2. **Methods lcm, laso, mkt**: methods compute on the CPU (no method moves a tensor to a device; a task's
   ``resources.num_gpus`` reaches only the backbone, through ``load_backbone``'s CUDA default), so "on
   GPU" is what the harness does with a GPU: the same sweeps with ``resources.num_gpus=0`` and the backbone
   pinned to the CPU (``+dataset.backbone.device=cpu``) against ``resources.num_gpus=0.5`` (backbone on
   CUDA). Printed per method: ``Method.fit`` seconds (run.json) and predict episodes/s (records), per round.
   Sweeps: ``A`` lcm + laso on the SmallCNN, ``B`` mkt on the tiny CLIP teacher (``+backbone=tiny-teacher``),
   both on the tests' tiny coco-moji (``conftest.TINY_DATASET_OVERRIDES``), 1/5-shot, 100 episodes, one seed.
3. **Two sweeps packed on one GPU**: A and B at once, ``resources.num_gpus=0.5``, on one local Ray cluster
   holding one GPU (``ray.cluster_utils.Cluster``, the sweeps connect with ``ray.address``), each into a
   fresh results dir; their walls against the same two sweeps one after the other on the same cluster
   (``MLFSIC_GPU_CHECK_ALONE=0`` skips that baseline), and whether their records equal the baseline's.

Prints ``gpu-check: ...`` lines; exit 0 when every sweep completed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SKIP_LINE = "gpu-check: skipped: no CUDA device"
SWEEP = ["setting=[1shot,5shot]", "seeds=[0]", "n_episodes=100"]
SWEEPS = {"A": ["method=[lcm,laso]"], "B": ["+backbone=tiny-teacher", "method=[mkt]"]}
COMPARED = ["method", "setting", "seed", "episode", "map", "f1_3", "f1_5"]


def say(text: str) -> None:
    print(f"gpu-check: {text}", flush=True)


def extraction(rehearse: bool, folder: Path) -> None:
    from extraction_bench import jpeg_dataset, resnet50_backbone, store_vs_bare

    weights = os.environ.get("MLFSIC_RESNET50_WEIGHTS")
    n_images = 64 if rehearse else 512
    dataset = jpeg_dataset(folder, n_images)
    backbone = resnet50_backbone(folder, Path(weights) if weights else None, batch_size=64,
                                 device="cpu" if rehearse else "cuda")
    for num_cpus in (1, 2 if rehearse else os.cpu_count() or 1):  # a feature task's resources.num_cpus
        rates = store_vs_bare(backbone, dataset, folder / f"store-{num_cpus}", num_cpus=num_cpus)
        say(f"extraction resnet50 on {backbone.device}, batch {backbone.batch_size}, {n_images} JPEGs 640x480, "
            f"weights {'file ' + weights if weights else 'random init'}, num_cpus {num_cpus} "
            f"({rates['decode_workers']} decode workers): feature store {rates['store_rate']:.1f} images/s, "
            f"bare forward {rates['bare_rate']:.1f} images/s, ratio {rates['ratio']:.2f}")


def _start(address: str, results_dir: Path, run_id: str, sweep: list[str], extra: list[str]) -> subprocess.Popen:
    from conftest import TINY_DATASET_OVERRIDES

    tiny = list(TINY_DATASET_OVERRIDES)
    if "+backbone=tiny-teacher" in sweep:  # the pinned teacher is used only with its own backbone settings
        tiny = [item for item in tiny if not item.startswith("dataset.backbone.")]
    command = [sys.executable, "-m", "mlfsic.harness.cli", "run", f"ray.address={address}",
               f"results_dir={results_dir}", f"run_id={run_id}", *SWEEP, *tiny, *sweep, *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen, started: float, label: str) -> dict | None:
    out, err = process.communicate(timeout=1800)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        say(f"FAILED sweep {label} (exit {process.returncode}): {err.strip().splitlines()[-1] if err.strip() else ''}")
        print(err[-3000:], file=sys.stderr)
        return None
    import pandas as pd

    run_dir = Path(out.strip().splitlines()[-1])
    run = json.loads((run_dir / "run.json").read_text())
    records = pd.read_parquet(run_dir / "records.parquet")
    return {"label": label, "wall": wall, "run": run, "records": records}


def _rounds(rounds: list[tuple[str, list[tuple[str, list[str]]], bool]], address: str, base: Path) -> dict:
    """Each round: sweeps (name, extra overrides) run at once (``together``) or one after the other."""
    results: dict = {}
    for name, sweeps, together in rounds:
        started = time.perf_counter()
        finished = []
        if together:
            running = [(sweep, _start(address, base / f"{name}-{sweep}", f"{name}-{sweep}", SWEEPS[sweep], extra),
                        time.perf_counter()) for sweep, extra in sweeps]
            finished = [_finish(process, t0, f"{name}/{sweep}") for sweep, process, t0 in running]
        else:
            for sweep, extra in sweeps:
                t0 = time.perf_counter()
                finished.append(_finish(_start(address, base / f"{name}-{sweep}", f"{name}-{sweep}", SWEEPS[sweep],
                                               extra), t0, f"{name}/{sweep}"))
        results[name] = {"wall": time.perf_counter() - started,
                         "sweeps": {sweep: result for (sweep, _), result in zip(sweeps, finished)}}
        walls = ", ".join(f"{s} {r['wall']:.1f} s" if r else f"{s} FAILED" for s, r in results[name]["sweeps"].items())
        say(f"round {name} ({'at once' if together else 'one after the other'}): {results[name]['wall']:.1f} s ({walls})")
    return results


def methods_and_packing(rehearse: bool, folder: Path) -> bool:
    import ray
    from ray.cluster_utils import Cluster

    cpus = 2 if rehearse else max(2, min(8, os.cpu_count() or 2))
    temp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # not /tmp/ray: see tests/ray_overhead.py
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": cpus, "num_gpus": 1, "object_store_memory": 200 * 2**20, "include_dashboard": False,
        "temp_dir": f"{temp}/h"})
    try:
        cluster.wait_for_nodes()
        cpu = ["resources.num_gpus=0", "+dataset.backbone.device=cpu"]
        gpu = ["resources.num_gpus=0.5"]
        rounds = [("cpu", [("A", cpu), ("B", cpu)], False)]
        if os.environ.get("MLFSIC_GPU_CHECK_ALONE", "1") != "0":
            rounds.append(("gpu-alone", [("A", gpu), ("B", gpu)], False))
        rounds.append(("gpu-packed", [("A", gpu), ("B", gpu)], True))
        results = _rounds(rounds, cluster.address, folder)
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)

    ok = all(r is not None for round_ in results.values() for r in round_["sweeps"].values())
    for sweep in SWEEPS:
        for name, round_ in results.items():
            result = round_["sweeps"][sweep]
            if result is None:
                continue
            run = result["run"]
            per_method = []
            for method, group in result["records"].groupby("method"):
                fit_s = sum(v for k, v in run["fit_seconds"].items() if k.startswith(f"{method}/"))
                per_method.append(f"{method} fit {fit_s:.2f} s, predict {len(group) / group['predict_s'].sum():.1f} episodes/s")
            say(f"sweep {sweep} round {name}: wall {result['wall']:.1f} s (prepare {run['phase_s']['prepare']:.1f}, "
                f"fit+evaluate {run['phase_s']['fit_and_evaluate']:.1f}), backbone on "
                f"{'cpu' if name == 'cpu' else 'cuda (num_gpus 0.5)'}, cluster GPUs "
                f"{run['ray']['cluster_resources'].get('GPU', 0):g}; " + "; ".join(per_method))
    say("methods: lcm, laso and mkt compute on the CPU in every round (methods/ have no device: fit and predict "
        "on a GPU are not supported by the harness); only the backbone uses the GPU")
    if "gpu-alone" in results and ok:
        alone = results["gpu-alone"]["wall"]
        packed = results["gpu-packed"]["wall"]
        say(f"packing: two sweeps at num_gpus=0.5 on one GPU took {packed:.1f} s at once against {alone:.1f} s one "
            f"after the other (speed-up {alone / packed:.2f})")
        for sweep in SWEEPS:
            a = results["gpu-alone"]["sweeps"][sweep]["records"][COMPARED].sort_values(COMPARED[:4]).reset_index(drop=True)
            b = results["gpu-packed"]["sweeps"][sweep]["records"][COMPARED].sort_values(COMPARED[:4]).reset_index(drop=True)
            say(f"packing: sweep {sweep} records packed == alone: {a.equals(b)} ({len(a)} rows)")
    return ok


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rehearse", action="store_true", help="every step on the CPU, tiny (tests the script)")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available() and not args.rehearse:
        print(SKIP_LINE)
        return 0
    sys.path.insert(0, str(TESTS))
    if args.rehearse:  # the plumbing only: fewer episodes, one setting
        SWEEP[:] = ["setting=[1shot]", "seeds=[0]", "n_episodes=20"]
        say("REHEARSAL on the CPU: a GPU is only declared to Ray, no figure below is a GPU figure")
    else:
        say(f"device {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"{os.cpu_count()} CPU cores")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        extraction(args.rehearse, Path(tmp) / "extraction")
        ok = methods_and_packing(args.rehearse, Path(tmp) / "sweeps")
    say("done" if ok else "done, with failed sweeps")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
