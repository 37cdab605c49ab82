"""Benchmark (``make bench``): ResNet-50 feature extraction through the feature store against a bare
forward pass of the same model and batch size (issue 15: goal >= 0.8 of the bare rate on a GPU).

The store's rate covers JPEG decoding, resizing and normalising (``harness.images``) and the forward pass
(``ShardInfo.seconds``, before the shard is written); the bare rate is the forward pass alone on an already-prepared batch. Weights are
torchvision's ResNet-50 architecture at random initialisation (speed does not depend on their values).
Prints images/s of both and their ratio, on CUDA when available, else on the CPU.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from mlfsic.harness.backbones.kinds import load_backbone
from mlfsic.harness.protocol.data import Dataset
from mlfsic.harness.sweep.features import extract_shard

pytestmark = pytest.mark.slow


def test_bench_resnet50_extraction_against_bare_forward(tmp_path):
    n_images = 256 if torch.cuda.is_available() else 64
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    names = []
    for number in range(n_images):  # COCO-like JPEGs of 640 x 480
        pixels = rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
        names.append(f"{number:06d}.jpg")
        Image.fromarray(pixels).save(tmp_path / "images" / names[-1], quality=90)
    dataset = Dataset(name="bench", image_root=tmp_path / "images", image_ids=np.arange(n_images, dtype=np.int64),
                      file_names=tuple(names), label_names=("a",), targets=np.ones((n_images, 1), dtype=bool),
                      annotation_sha256="0" * 64)
    weights = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), weights)
    backbone = load_backbone({"kind": "resnet50", "image_size": 224}, weights)

    info = extract_shard(backbone, dataset, dataset.image_ids, tmp_path / "store", progress=False)
    store_rate = n_images / info.seconds

    batch = torch.randn(backbone.batch_size, 3, 224, 224)
    backbone.embed(batch)  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(0, n_images, backbone.batch_size):
        backbone.embed(batch)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    bare_rate = n_images / (time.perf_counter() - started)
    print(f"\nresnet50 on {backbone.device}, batch {backbone.batch_size}, {torch.get_num_threads()} threads: "
          f"feature store {store_rate:.1f} images/s, bare forward {bare_rate:.1f} images/s, "
          f"ratio {store_rate / bare_rate:.2f}")
    assert info.n_computed == n_images
