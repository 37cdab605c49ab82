"""ResNet-50 extraction through the feature store against a bare forward pass: the measurement shared by
``tests/test_bench_extraction.py`` (``make bench``) and ``tests/gpu_check.py`` (``make gpu-check``).

``jpeg_dataset`` writes COCO-like 640 x 480 JPEGs of noise and describes them as a one-label ``Dataset``;
``resnet50_backbone`` builds torchvision's ResNet-50 trunk through the harness (``kinds.load_backbone``)
from a weights file, by default a random initialisation saved for the purpose (speed does not depend on
the values); ``store_vs_bare`` times ``features.extract_shard`` (decode, resize, normalise, forward, before
the shard is written: ``ShardInfo.seconds``) against ``Backbone.embed`` on one prepared batch repeated
over the same number of images (the forward pass alone), synchronising CUDA around the bare loop.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

from mlfsic.harness.backbones.extractor import Backbone
from mlfsic.harness.backbones.kinds import load_backbone
from mlfsic.harness.protocol.data import Dataset
from mlfsic.harness.sweep.features import extract_shard


def jpeg_dataset(folder: Path, n_images: int, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    names = []
    for number in range(n_images):
        pixels = rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
        names.append(f"{number:06d}.jpg")
        Image.fromarray(pixels).save(folder / "images" / names[-1], quality=90)
    return Dataset(name="bench", image_root=folder / "images", image_ids=np.arange(n_images, dtype=np.int64),
                   file_names=tuple(names), label_names=("a",), targets=np.ones((n_images, 1), dtype=bool),
                   annotation_sha256="0" * 64)


def resnet50_backbone(folder: Path, weights: Path | None = None, batch_size: int | None = None,
                      device: str | None = None) -> Backbone:
    """The harness's resnet50 kind; ``weights`` None: a random initialisation written to ``folder``."""
    if weights is None:
        weights = folder / "resnet50-random.pth"
        torch.save(torchvision.models.resnet50(weights=None).state_dict(), weights)
    config: dict = {"kind": "resnet50", "image_size": 224}
    if batch_size is not None:
        config["extract_batch_size"] = batch_size
    if device is not None:
        config["device"] = device
    return load_backbone(config, weights)


def _synchronize(backbone: Backbone) -> None:
    if str(backbone.device).startswith("cuda"):
        torch.cuda.synchronize()


def store_vs_bare(backbone: Backbone, dataset: Dataset, store_root: Path) -> dict:
    """images/s through the feature store and of the bare forward pass, and their ratio."""
    n_images = len(dataset.image_ids)
    info = extract_shard(backbone, dataset, dataset.image_ids, store_root, progress=False)
    assert info.n_computed == n_images
    batch = torch.randn(backbone.batch_size, 3, backbone.image_size, backbone.image_size)
    backbone.embed(batch)  # warm-up
    _synchronize(backbone)
    n_batches = -(-n_images // backbone.batch_size)  # full batches covering the images
    started = time.perf_counter()
    for _ in range(n_batches):
        backbone.embed(batch)
    _synchronize(backbone)
    bare_rate = n_batches * backbone.batch_size / (time.perf_counter() - started)
    store_rate = n_images / info.seconds
    return {"n_images": n_images, "store_rate": store_rate, "bare_rate": bare_rate, "ratio": store_rate / bare_rate}
