"""``make gpu-check`` (issue 25, item 4): the GPU figures, in one run, on a machine with CUDA. Never in CI.

    python tests/gpu_check.py             # on a CUDA machine: the figures below; else one skip line, exit 0
    python tests/gpu_check.py --rehearse  # every step on the CPU, tiny, a GPU *declared* to Ray: tests the script
    python tests/gpu_check.py --rehearse --only devices  # one step (extraction, devices or sweeps)

Not collected by pytest (its name does not start with ``test_``); ``tests/test_gpu_check.py`` runs the
no-GPU path and the rehearsal. Steps:

1. **Extraction**: ResNet-50 (layer4, 224 px) through the feature store against a bare forward pass at
   batch 64 (``tests/extraction_bench.py``, the measurement of ``make bench``), on 512 JPEGs of 640 x 480, as a
   feature task given ``num_cpus`` 1 (decoding in its own process) and every core of the machine (one decode
   worker process per core but one).
   Weights: ``MLFSIC_RESNET50_WEIGHTS`` (a torchvision state dict), else a random initialisation: timing
   does not depend on the values.
2. **Methods on the device** (issue 37): lcm, wvga-adapted, laso, protonet, mkt and clip-zeroshot in this process
   on synthetic data (``synthetic_data``: 128-d features, 36 local positions, 3000 base images; 100 5-shot
   episodes; mkt and clip-zeroshot see the pinned tiny teacher's features of noise images in their place,
   ``clip_view``; clip-zeroshot zero-shot episodes of the same seeds), torch on one thread as in a task. Per
   method: ``fit`` seconds and ``predict_batch`` episodes/s on the CPU and on the
   device (``Method.use_device("cuda")``), and the same CPU-fitted checkpoint predicted on both: the max
   |score difference| and the per-episode mAP difference, checked against the method's tolerance
   (``DEVICE_METHODS``: protonet, wvga-adapted 1e-4 absolute on scores; lcm every episode's mAP within 0.5
   points, as its selection threshold can flip a position on a rounding difference; laso the mean
   per-episode mAP within 0.5 points, as its episode training moves scores by up to 0.1 on a one-ulp change,
   see ``LaSO``; mkt 1e-3 on scores, softmaxes at the model's logit scale of cosines through a ViT block;
   clip-zeroshot 1e-4). The mAP of a fit made on the device is printed beside the CPU fit's (not checked:
   training rounds differently). float32 throughout.
3. **Sweeps, lcm, laso, mkt**: the same sweeps with ``resources.num_gpus=0`` and the backbone pinned to the CPU
   (``+dataset.backbone.device=cpu``) against ``resources.num_gpus=0.5`` (backbone and the methods that
   declare ``uses_device`` on CUDA, mkt included). Printed per method: ``Method.fit`` seconds (run.json) and predict
   episodes/s (records), per round, and the devices run.json recorded.
   Sweeps: ``A`` lcm + laso on the SmallCNN, ``B`` mkt on the tiny CLIP teacher (``+backbone=tiny-teacher``),
   both on the tests' tiny coco-moji (``conftest.TINY_DATASET_OVERRIDES``), 1/5-shot, 100 episodes, one seed.
4. **Two sweeps packed on one GPU**: A and B at once, ``resources.num_gpus=0.5``, on one local Ray cluster
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
STEPS = ("extraction", "devices", "sweeps")
SWEEPS = {"A": ["method=[lcm,laso]"], "B": ["+backbone=tiny-teacher", "method=[mkt]"]}
COMPARED = ["method", "setting", "seed", "episode", "map", "f1_3", "f1_5"]
# Step 2, per method: constructor overrides (the same on both devices; ``--rehearse``: the second, tiny), and the
# tolerance of the CPU-fitted checkpoint predicted on the device against the CPU: ("scores", max |difference|),
# ("episode_map", max |per-episode mAP difference| in points) or ("mean_map", |mean per-episode mAP difference|).
DEVICE_METHODS: dict[str, tuple[dict, dict, tuple[str, float]]] = {
    "protonet": ({"n_episodes": 500}, {"n_episodes": 20, "hidden_dim": 32, "embed_dim": 16}, ("scores", 1e-4)),
    "wvga-adapted": ({"steps": 300}, {"embed_dim": 16, "heads": 2, "steps": 20, "adapt_steps": 5}, ("scores", 1e-4)),
    "lcm": ({"steps": 300}, {"embed_dim": 16, "heads": 2, "steps": 20, "adapt_steps": 5}, ("episode_map", 0.5)),
    "laso": ({"steps": 500, "classifier_epochs": 20},
             {"steps": 20, "classifier_epochs": 1, "hidden_dim": 32, "episode_steps": 10, "max_union_pairs": 20},
             ("mean_map", 0.5)),
    "mkt": ({}, {"stage1_steps": 6, "stage2_steps": 3, "batch_size": 16, "lr_schedule": "constant"}, ("scores", 1e-3)),
    "clip-zeroshot": ({}, {}, ("scores", 1e-4)),
}


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


def _timed(device: str, work, *args):
    """``work(*args)`` and its seconds, the device's queue drained before the clock stops."""
    import torch

    started = time.perf_counter()
    result = work(*args)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return result, time.perf_counter() - started


def method_devices(rehearse: bool) -> bool:
    """Step 2: each method of ``DEVICE_METHODS`` fitted and predicted on the CPU and on the device; the CPU-fitted
    checkpoint's scores on both compared against the method's tolerance. False when one is outside it."""
    import copy

    import numpy as np
    import torch
    from synthetic_data import clip_view, make_base_data, make_episode, make_world, tiny_clip

    from mlfsic.harness.protocol.metrics import episode_map
    from mlfsic.methods.registry import available_methods, create_method

    device = "cpu" if rehearse else "cuda"
    torch.set_num_threads(1)  # as a fit or evaluate task runs
    if rehearse:
        base = make_base_data(n=160, seed=0)
        draws = {k: [make_episode(k, seed=seed) for seed in range(4)] for k in (0, 5)}
    else:
        world = make_world(n_base_labels=40, n_novel_labels=12, dim=128, emb_dim=64, seed=7)
        base = make_base_data(n=3000, seed=0, world=world, local_positions=36)
        draws = {k: [make_episode(k, seed=seed, world=world, local_positions=36) for seed in range(100)] for k in (0, 5)}
    ok = True
    for name, (full, tiny, (kind, tolerance)) in DEVICE_METHODS.items():
        config = tiny if rehearse else full
        cls = available_methods()[name].cls
        drawn = draws[5 if cls.few_shot else 0]  # a zero-shot-only method gets zero-shot episodes
        # a method that needs the open_clip model sees its features
        seen = (lambda data, seed: clip_view(data, tiny_clip(), seed)) if cls.needs_clip else (lambda data, seed: data)
        method_base = seen(base, 0)
        episodes = [seen(episode, i + 1) for i, (episode, _) in enumerate(drawn)]
        fits, rates, maps = {}, {}, {}
        for side, side_device in (("cpu", "cpu"), ("device", device)):
            method = create_method(name, config, 0)
            if cls.needs_clip:
                method.use_clip(tiny_clip())
            method.use_device(side_device)
            _, fits[side] = _timed(side_device, method.fit, method_base, None)
            scores, seconds = _timed(side_device, method.predict_batch, episodes)
            rates[side] = len(episodes) / seconds
            maps[side] = float(np.mean([episode_map(np.asarray(s), t) for s, (_, t) in zip(scores, drawn)]))
            if side == "cpu":  # predicting is deterministic: these are the CPU fit's scores on the CPU
                moved = copy.deepcopy(method)
                on_cpu = [np.asarray(s, dtype=np.float64) for s in scores]
        moved.use_device(device)
        on_device = [np.asarray(s, dtype=np.float64) for s in moved.predict_batch(episodes)]
        score_gap = max(float(np.abs(a - b).max()) for a, b in zip(on_cpu, on_device))
        map_gaps = [100 * (episode_map(b, t) - episode_map(a, t)) for a, b, (_, t) in zip(on_cpu, on_device, drawn)]
        measured = {"scores": score_gap, "episode_map": max(abs(g) for g in map_gaps),
                    "mean_map": abs(float(np.mean(map_gaps)))}[kind]
        within = measured <= tolerance
        ok &= within
        say(f"method {name} on {device} vs cpu: fit {fits['device']:.2f} s vs {fits['cpu']:.2f} s, predict "
            f"{rates['device']:.1f} vs {rates['cpu']:.1f} episodes/s ({len(episodes)} "
            f"{'5-shot' if cls.few_shot else 'zero-shot'} episodes); CPU fit "
            f"predicted on both: max |score difference| {score_gap:.2e}, per-episode mAP difference max "
            f"{max(abs(g) for g in map_gaps):.3f} mean {float(np.mean(map_gaps)):+.3f} points; tolerance {kind} "
            f"<= {tolerance:g}: {'ok' if within else 'OUTSIDE'}; mAP of the fit made on {device} "
            f"{100 * maps['device']:.2f} vs cpu {100 * maps['cpu']:.2f} (float32, not checked)")
    return ok


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
    if rehearse:  # the declared GPU does not exist: its tasks run on the CPU (the nodes inherit this environment)
        from mlfsic.harness.sweep.driver.ray_setup import DECLARED_GPUS_ON_CPU

        os.environ[DECLARED_GPUS_ON_CPU] = "1"
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
            fit_devices = sorted(set((run.get("devices") or {}).get("fits", {}).values()))
            say(f"sweep {sweep} round {name}: wall {result['wall']:.1f} s (prepare {run['phase_s']['prepare']:.1f}, "
                f"fit+evaluate {run['phase_s']['fit_and_evaluate']:.1f}), backbone on "
                f"{'cpu' if name == 'cpu' else 'cuda (num_gpus 0.5)'}, cluster GPUs "
                f"{run['ray']['cluster_resources'].get('GPU', 0):g}, fits on {','.join(fit_devices) or '?'}; "
                + "; ".join(per_method))
    say("methods: lcm, laso and mkt compute on their task's device (run.json devices)")
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
    parser.add_argument("--only", choices=STEPS, help="run this step only")
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
        ok = True
        if args.only in (None, "extraction"):
            extraction(args.rehearse, Path(tmp) / "extraction")
        if args.only in (None, "devices"):
            ok = method_devices(args.rehearse) and ok
        if args.only in (None, "sweeps"):
            ok = methods_and_packing(args.rehearse, Path(tmp) / "sweeps") and ok
    say("done" if ok else "done, with failed sweeps")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
