"""Decoded image batches for the feature store, made on several CPU worker processes (issue 37).

Decoding and resizing a JPEG costs a CPU far more than a GPU forward pass of the image costs the GPU, so a
feature task that decoded on one thread would leave its GPU idle most of the time. ``decoded_batches``
cuts a shard's images into batches of the backbone's ``batch_size`` and has ``workers`` processes of a
``torch.utils.data.DataLoader`` decode them while the model runs on the batches before; with
``workers=0`` it decodes in the calling process, one batch at a time, as extraction always did.

Each batch is exactly what ``Backbone.load_images`` returns for its paths (the preprocessing that keys the
store, ``extractor.preprocessing_identity``), and batches come back in order, so stored features do not
depend on the number of workers (``tests/test_features.py`` compares stores made with 0 and 2 workers bit
for bit). A file that cannot be read is a one-line ``MlfsicError`` naming it, with or without workers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mlfsic.harness.backbones.extractor import Backbone
from mlfsic.harness.errors import MlfsicError


def decode_workers(num_cpus: float) -> int:
    """Worker processes that decode for a feature task given ``num_cpus`` CPUs (``resources.num_cpus``): one
    per CPU but the one the task's own process uses to feed the model, and none at 1 CPU or fewer (the task
    decodes in its own process)."""
    return max(0, int(num_cpus) - 1)


class _ImageBatches(Dataset):
    """Batch ``number`` of ``paths``, decoded: ``(images, "")``, or ``(empty tensor, the one-line error)`` when
    a file cannot be read (an exception raised in a worker would reach the caller wrapped in a traceback).

    ``decoder`` is the backbone without its network (``decoded_batches``): all that decoding needs, and
    cheap to send to a worker process that does not share this one's memory."""

    def __init__(self, decoder: Backbone, paths: Sequence[Path], batch_size: int) -> None:
        self.decoder = decoder
        self.paths = tuple(paths)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.paths) // self.batch_size)

    def __getitem__(self, number: int) -> tuple[torch.Tensor, str]:
        start = number * self.batch_size
        try:
            return self.decoder.load_images(self.paths[start:start + self.batch_size]), ""
        except MlfsicError as error:
            return torch.empty(0), str(error)


def decoded_batches(backbone: Backbone, paths: Sequence[Path], workers: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """``(start, stop, images)`` for consecutive batches of ``paths`` in order, ``images`` being
    ``backbone.load_images(paths[start:stop])``: decoded by ``workers`` processes (each a batch at a time and
    up to two batches ahead of the caller), in this process when 0. In pinned memory when the backbone runs on
    CUDA, so the copy to the GPU is faster. Close the iterator (``contextlib.closing``) to stop the workers
    early."""
    batch_size = int(backbone.batch_size)
    decoder = dataclasses.replace(backbone, module=nn.Identity())
    loader = DataLoader(_ImageBatches(decoder, paths, batch_size), batch_size=None, shuffle=False,
                        num_workers=workers, pin_memory=str(backbone.device).startswith("cuda"))
    for number, (images, problem) in enumerate(loader):
        if problem:
            raise MlfsicError(problem)
        start = number * batch_size
        yield start, min(start + batch_size, len(paths)), images
