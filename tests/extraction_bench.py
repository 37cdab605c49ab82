"""ResNet-50 extraction through the feature store against a bare forward pass: the measurement shared by
``tests/test_bench_extraction.py`` (``make bench``) and ``tests/gpu_check.py`` (``make gpu-check``).

``jpeg_dataset`` writes COCO-like 640 x 480 JPEGs of noise and describes them as a one-label ``Dataset``;
``resnet50_backbone`` builds torchvision's ResNet-50 trunk through the harness (``kinds.load_backbone``)
from a weights file, by default a random initialisation saved for the purpose (speed does not depend on
the values); ``store_vs_bare`` times ``features.extract_shard`` (decode, resize, normalise, forward, before
the shard is written: ``ShardInfo.seconds``) against ``Backbone.embed`` on one prepared batch repeated
over the same number of images (the forward pass alone), synchronising CUDA around the bare loop, in
seconds of wall clock and in CPU-seconds of this process and its decode workers;
``decode_rate`` times the decoding of a feature task alone (``batches.decoded_batches``, no model).

``num_cpus`` stands for a feature task's ``resources.num_cpus``: as in the runner's ``_features_task``, torch
gets that many threads and ``batches.decode_workers(num_cpus)`` worker processes decode (none at 1 CPU).
"""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

from mlfsic.harness.backbones.batches import decode_workers, decoded_batches
from mlfsic.harness.backbones.extractor import Backbone
from mlfsic.harness.backbones.images import image_paths
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


@contextmanager
def task_threads(num_cpus: int) -> Iterator[None]:
    """torch uses ``num_cpus`` threads in the block (a feature task's ``_set_threads``), as many as before after."""
    before = torch.get_num_threads()
    torch.set_num_threads(num_cpus)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def store_vs_bare(backbone: Backbone, dataset: Dataset, store_root: Path, num_cpus: int | None = None,
                  rounds: int = 1) -> dict:
    """images/s through the feature store and of the bare forward pass, and their ratio; per CPU-second too.
    ``num_cpus``: as a feature task given that many CPUs (torch threads, decode workers); None: torch's
    threads as they are and decoding in this process. ``rounds`` > 1: store and bare alternate that many times
    (a fresh store each round) and each figure is its best round, which damps a loaded machine's noise."""
    if num_cpus is None:
        return _store_vs_bare(backbone, dataset, store_root, 0, rounds)
    with task_threads(num_cpus):
        return _store_vs_bare(backbone, dataset, store_root, decode_workers(num_cpus), rounds)


def _store_vs_bare(backbone: Backbone, dataset: Dataset, store_root: Path, workers: int, rounds: int) -> dict:
    n_images = len(dataset.image_ids)
    batch = torch.randn(backbone.batch_size, 3, backbone.image_size, backbone.image_size)
    backbone.embed(batch)  # warm-up
    _synchronize(backbone)
    n_batches = -(-n_images // backbone.batch_size)  # full batches covering the images
    n_bare = n_batches * backbone.batch_size
    store_rate = bare_rate = store_cpu_rate = bare_cpu_rate = 0.0
    for number in range(rounds):
        cpu_before = cpu_seconds()
        info = extract_shard(backbone, dataset, dataset.image_ids, store_root / f"round-{number}", progress=False,
                             decode_workers=workers)
        store_cpu_rate = max(store_cpu_rate, n_images / (cpu_seconds() - cpu_before))
        assert info.n_computed == n_images
        store_rate = max(store_rate, n_images / info.seconds)
        cpu_before = cpu_seconds()
        started = time.perf_counter()
        for _ in range(n_batches):
            backbone.embed(batch)
        _synchronize(backbone)
        bare_rate = max(bare_rate, n_bare / (time.perf_counter() - started))
        bare_cpu_rate = max(bare_cpu_rate, n_bare / (cpu_seconds() - cpu_before))
    return {"n_images": n_images, "decode_workers": workers, "store_rate": store_rate, "bare_rate": bare_rate,
            "ratio": store_rate / bare_rate, "store_cpu_rate": store_cpu_rate, "bare_cpu_rate": bare_cpu_rate,
            "cpu_ratio": store_cpu_rate / bare_cpu_rate}


def cpu_seconds() -> float:
    """CPU seconds used so far by this process (all its threads) and by its children that have ended (decode
    workers count once the loader has stopped them, which it does when its batches run out)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def decode_rate(backbone: Backbone, dataset: Dataset, num_cpus: int) -> dict:
    """How fast a feature task given ``num_cpus`` CPUs decodes, resizes and normalises (its batches, in pinned
    memory on CUDA) with nothing consuming them: the most it can feed the model. ``rate``: images per second
    of wall clock, worker start included; ``cpu_rate``: images per CPU-second of the task's process and its
    decode workers together (on a loaded machine the wall rate measures the neighbours too)."""
    paths = image_paths(dataset, dataset.image_ids)
    with task_threads(num_cpus):
        cpu_before = cpu_seconds()
        started = time.perf_counter()
        with closing(decoded_batches(backbone, paths, decode_workers(num_cpus))) as batches:
            n_images = sum(stop - start for start, stop, _ in batches)
        seconds = time.perf_counter() - started
        cpu = cpu_seconds() - cpu_before
    assert n_images == len(paths)
    return {"rate": n_images / seconds, "cpu_rate": n_images / cpu}
