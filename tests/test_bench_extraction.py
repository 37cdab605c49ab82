"""Benchmark (``make bench``): ResNet-50 feature extraction through the feature store against a bare
forward pass of the same model and batch size (issue 15: goal >= 0.8 of the bare rate on a GPU).

The store's rate covers JPEG decoding, resizing and normalising (``harness.images``) and the forward pass
(``ShardInfo.seconds``, before the shard is written); the bare rate is the forward pass alone on an
already-prepared batch. Weights are
torchvision's ResNet-50 architecture at random initialisation (speed does not depend on their values).
Prints images/s of both and their ratio, on CUDA when available, else on the CPU. The measurement lives in
``tests/extraction_bench.py``, shared with ``make gpu-check`` (``tests/gpu_check.py``).
"""

from __future__ import annotations

import pytest
import torch
from extraction_bench import jpeg_dataset, resnet50_backbone, store_vs_bare

pytestmark = pytest.mark.slow


def test_bench_resnet50_extraction_against_bare_forward(tmp_path):
    n_images = 256 if torch.cuda.is_available() else 64
    dataset = jpeg_dataset(tmp_path, n_images)  # COCO-like JPEGs of 640 x 480
    backbone = resnet50_backbone(tmp_path)
    rates = store_vs_bare(backbone, dataset, tmp_path / "store")
    print(f"\nresnet50 on {backbone.device}, batch {backbone.batch_size}, {torch.get_num_threads()} threads: "
          f"feature store {rates['store_rate']:.1f} images/s, bare forward {rates['bare_rate']:.1f} images/s, "
          f"ratio {rates['ratio']:.2f}")
