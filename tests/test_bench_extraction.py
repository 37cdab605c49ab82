"""Benchmark (``make bench``): ResNet-50 feature extraction through the feature store against a bare
forward pass of the same model and batch size (issue 15: goal >= 0.8 of the bare rate on a GPU; issue 37:
>= 0.9 on a CPU backbone), and the decode rate of a feature task (issue 37).

The store's rate covers JPEG decoding, resizing and normalising (``harness.images``) and the forward pass
(``ShardInfo.seconds``, before the shard is written); the bare rate is the forward pass alone on an
already-prepared batch. Both are taken as a feature task given ``num_cpus`` 1 and 2 runs (torch threads,
``num_cpus`` - 1 decode worker processes: ``batches.decode_workers``), in seconds of wall clock and in
CPU-seconds, best of two alternating rounds (on a shared machine the wall figures measure the neighbours
too). The decode rate is a feature task's decoding alone, nothing consuming the batches: at ``num_cpus`` 1, 2
and 3 (3 oversubscribes a 2-core machine; it shows how the rate grows with workers where cores are free).
Weights are torchvision's ResNet-50 architecture at random initialisation (speed does not depend on their
values). Prints images/s and ratios, on CUDA when available, else on the CPU. The measurement lives in
``tests/extraction_bench.py``, shared with ``make gpu-check`` (``tests/gpu_check.py``).
"""

from __future__ import annotations

import pytest
import torch
from extraction_bench import decode_rate, jpeg_dataset, resnet50_backbone, store_vs_bare

from mlfsic.harness.backbones.batches import decode_workers

pytestmark = pytest.mark.slow


def test_bench_resnet50_extraction_against_bare_forward(tmp_path):
    n_images = 256 if torch.cuda.is_available() else 64
    dataset = jpeg_dataset(tmp_path, n_images)  # COCO-like JPEGs of 640 x 480
    backbone = resnet50_backbone(tmp_path)
    for num_cpus in (1, 2):
        rates = store_vs_bare(backbone, dataset, tmp_path / f"store-{num_cpus}", num_cpus=num_cpus, rounds=2)
        print(f"\nresnet50 on {backbone.device}, batch {backbone.batch_size}, num_cpus {num_cpus} "
              f"({num_cpus} torch threads, {rates['decode_workers']} decode workers): feature store "
              f"{rates['store_rate']:.1f} images/s, bare forward {rates['bare_rate']:.1f} images/s, "
              f"ratio {rates['ratio']:.2f}; per CPU-second: store {rates['store_cpu_rate']:.1f}, bare "
              f"{rates['bare_cpu_rate']:.1f} images, ratio {rates['cpu_ratio']:.2f} (best of 2 rounds)")


def test_bench_decode_rate_per_feature_task(tmp_path):
    dataset = jpeg_dataset(tmp_path, 192)  # 6 batches of 32
    backbone = resnet50_backbone(tmp_path)  # its preprocessing, batch size and device (pinned memory on CUDA)
    print()
    for num_cpus in (1, 2, 3):
        runs = [decode_rate(backbone, dataset, num_cpus) for _ in range(2)]
        walls = ", ".join(f"{run['rate']:.1f}" for run in runs)
        print(f"decode 640x480 JPEG -> {backbone.image_size}, batch {backbone.batch_size}, num_cpus {num_cpus} "
              f"({decode_workers(num_cpus)} decode workers): {max(run['rate'] for run in runs):.1f} images/s per "
              f"feature task (runs: {walls}), {max(run['cpu_rate'] for run in runs):.1f} images per CPU-second")
