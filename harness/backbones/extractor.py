"""What a backbone kind provides (docs/architecture.md §7), and the frozen extractor the feature store runs.

A kind is one module (``small_cnn.py``, ``resnet50.py``, ``open_clip.py``) that defines a ``BackboneKind``;
``kinds.py`` lists it under its name. ``build`` returns a ``Network``; ``kinds.load_backbone`` puts it in
eval mode on its device and wraps it as a ``Backbone``, whose ``backbone_id`` = sha256 of (kind, weights
file sha256, image size) keys the feature store, so features are recomputed exactly when the weights or
the input resolution change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlfsic.harness.backbones.images import IMAGENET_MEAN, IMAGENET_STD, read_images, to_tensor
from mlfsic.harness.io import sha256_json


@dataclass
class Backbone:
    """A frozen feature extractor as the feature store uses it.

    ``module.forward_features`` maps a normalised (B, 3, S, S) batch to global (B, D) and local (B, L, C).
    """

    kind: str
    module: nn.Module
    image_size: int
    backbone_id: str
    global_dim: int
    local_shape: tuple[int, int]  # (L, C)
    batch_size: int = 64
    device: str = "cpu"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def load_images(self, paths: Sequence[Path]) -> torch.Tensor:
        return to_tensor(read_images(paths, self.image_size), self.mean, self.std)

    def embed(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Global float32 (B, D) and local float32 (B, L, C) for a normalised batch."""
        with torch.inference_mode():
            batch = images.to(self.device).contiguous(memory_format=torch.channels_last)
            global_f, local_f = self.module.forward_features(batch)
        return global_f.float().cpu().numpy(), local_f.float().cpu().numpy()


def backbone_id(kind: str, weights_sha256: str, image_size: int) -> str:
    return sha256_json({"kind": kind, "weights_sha256": weights_sha256, "image_size": int(image_size)})


@dataclass(frozen=True)
class Network:
    """A kind's built network before it is put on a device: ``module.forward_features`` maps a normalised
    (B, 3, S, S) batch to global (B, D) and local (B, L, C); ``weights`` is the file its weights came from."""

    module: nn.Module
    weights: Path
    image_size: int
    batch_size: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD


def _no_config_weights(config: Mapping[str, Any]) -> Path | None:
    return None


def _no_check(config: Mapping[str, Any]) -> None:
    return None


# ``dataset.backbone`` keys every kind takes: which kind, and where extraction runs.
COMMON_BACKBONE_KEYS = ("kind", "device")


@dataclass(frozen=True)
class BackboneKind:
    """One pluggable backbone kind (``dataset.backbone.kind``). ``config`` is the ``dataset.backbone`` mapping.

    ``weights(dataset, split, config, cache_root, progress)``: the weights file (None: the kind finds its
    own) and run.json's ``backbone`` block; may train (small_cnn) and cache under ``cache_root``.
    ``identify(config, weights)``: the ``backbone_id`` of those weights, without building the network.
    ``build(config, weights)``: the ``Network``.
    ``check(config)``: raise an ``MlfsicError`` naming the ``dataset.backbone.<key>`` that is wrong (run at
    sweep resolution, before anything starts).
    ``config_weights(config)``: the weights file the config alone determines, when known before the
    backbone step (for ``against=``); None otherwise.
    ``text_tower``: it has a text encoder (open_clip methods, ``embeddings.encoder=clip``).
    ``trains_on_base``: without a pinned file, its weights are trained on the base split.
    ``keys``: the ``dataset.backbone`` keys it reads besides ``COMMON_BACKBONE_KEYS``; any other key is an
    error naming the kind(s) it belongs to (``kinds.check_backbone_keys``). Empty: not checked (a plug-in
    kind that does not declare them).
    """

    name: str
    weights: Callable[..., tuple[Path | None, dict[str, Any]]]
    identify: Callable[[Mapping[str, Any], Path | None], str]
    build: Callable[[Mapping[str, Any], Path | None], Network]
    check: Callable[[Mapping[str, Any]], None] = _no_check
    config_weights: Callable[[Mapping[str, Any]], Path | None] = _no_config_weights
    text_tower: bool = False
    trains_on_base: bool = False
    keys: tuple[str, ...] = ()
