"""What a backbone kind provides (docs/architecture.md §7), and the frozen extractor the feature store runs.

A kind is one module (``small_cnn.py``, ``resnet50.py``, ``open_clip.py``) that defines a ``BackboneKind``;
``kinds.py`` lists it under its name. ``build`` returns a ``Network``; ``kinds.load_backbone`` puts it in
eval mode on its device and wraps it as a ``Backbone``, whose ``backbone_id`` = sha256 of (kind, weights
file sha256, image size) and the preprocessing (``preprocessing_identity``: decoding, resizing, normalising,
mean/std, the layer read, as stripped source) keys the feature store, so features are recomputed exactly when
the weights, the input resolution or the code that turns an image into features change (docs/architecture.md
§3.1). ``kinds.identify_backbone`` adds the preprocessing to a kind's ``identify``
(``backbone_id_with_preprocessing``); an id made with the preprocessing of ``LEGACY_PREPROCESSING`` is the id
it was before ids covered the preprocessing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlfsic.harness import code_identity
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


# ----------------------------------------------------------------------------------------- preprocessing
# Per built-in kind, ``preprocessing_identity`` of the code that made every backbone id before ids covered the
# preprocessing (issue 33): an id made with exactly this preprocessing keeps the value it had (the published
# run, ``against=published`` and every feature store stay valid); any other preprocessing is part of the id.
# Never update these values: a kind whose preprocessing changed must get another id.
LEGACY_PREPROCESSING: Mapping[str, str] = {
    "small_cnn": "09ad3ab570507302c472b1619133ed1ba38981ca404628e1586c4a2991a36148",
    "resnet50": "54cb42a59331ef0d7de4f39f3ea2de3fea4d7321892ad9124f924b6cb5d0966e",
    "open_clip": "2777c0345049cfbf1a8f4432a11109dbf5e9e736f91409d9da7f1665a1f8577f",
}


def preprocessing_identity(kind: BackboneKind, read: code_identity.Reader | None = None) -> str:
    """What turns an image file into stored features besides the weights, as stripped source (comments and
    docstrings do not count): decoding, resizing and normalising (``images.py``, whose ImageNet mean/std are
    the default), how a batch is fed (``Backbone``, ``Network`` with its default mean/std,
    ``kinds.load_backbone``: eval mode, memory format), and the kind's ``build`` with the definitions of its
    module it uses (the network class and the layer its ``forward_features`` reads, a kind's own mean/std such
    as open_clip's). The image size is in the kind's ``identify`` already."""
    return sha256_json({
        "images": code_identity.module_code("mlfsic.harness.backbones.images", read=read),
        "feed": {**code_identity.definition_closure(__name__, ("Backbone", "Network"), follow=False, read=read),
                 **code_identity.definition_closure("mlfsic.harness.backbones.kinds", ("load_backbone",),
                                                    follow=False, read=read)},
        "network": code_identity.object_code(kind.build, read=read),
    })


def backbone_id_with_preprocessing(kind: BackboneKind, identified: str,
                                   read: code_identity.Reader | None = None) -> str:
    """The ``backbone_id`` that keys features: the kind's ``identify`` result ``identified`` (kind, weights,
    image size) with ``preprocessing_identity`` folded in, unless that is the kind's ``LEGACY_PREPROCESSING``."""
    preprocessing = preprocessing_identity(kind, read=read)
    if LEGACY_PREPROCESSING.get(kind.name) == preprocessing:
        return identified
    return sha256_json({"backbone": identified, "preprocessing": preprocessing})
