"""Backbone weights (docs/architecture.md §7): which file a backbone's weights come from, its identity, and loading.

``load_backbone(config, weights_path)`` returns a ``Backbone``: the network of ``harness.backbone_models``
with its weights, in eval mode, plus image loading, and a ``backbone_id`` = sha256 of (kind, weights file
sha256, image size), which keys the feature store, so features are recomputed exactly when the weights
or the input resolution change.

Where weights come from:

* ``resnet50``: a ``.pth`` state dict given as ``dataset.backbone.weights``, else torchvision's file in the
  torch hub cache (``find_resnet50_weights``; never downloaded).
* ``small_cnn`` with ``dataset.backbone.pinned_weights`` (coco-moji): a file shipped inside the package,
  named by its content hash and checked against ``dataset.backbone.pinned_sha256`` (``pinned_weights``),
  so every machine benchmarks on the same features. Beside it, ``<stem>.json`` records what it was
  trained on and the training report (``pinned_record``).
* ``small_cnn`` otherwise: trained on the base split by ``harness.backbone_training`` and cached
  (``harness.prepare.backbone_weights``).
* ``open_clip`` (``harness.clip_models``): the image tower of the pinned tiny teacher (``model:
  tiny-teacher``) or of any open_clip model with a local weights file. Global features are the projected
  image embedding; local features are the tokens entering the tower's last block (class token first).
"""

from __future__ import annotations

import glob
import importlib.resources
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlfsic.harness.backbones.networks import ResNet50Backbone, SmallCNN
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.backbones.images import IMAGENET_MEAN, IMAGENET_STD, read_images, to_tensor
from mlfsic.harness.io import sha256_file, sha256_json

KINDS = ("small_cnn", "resnet50", "open_clip")


# ----------------------------------------------------------------------------------------- the Backbone
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


# ----------------------------------------------------------------------------------------- weight files
def find_resnet50_weights(weights_path: Path | None) -> Path:
    """The given ``.pth`` file, else ``torch.hub.get_dir()/checkpoints/resnet50-*.pth``; never downloads."""
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise MlfsicError(f"ResNet-50 weights file not found: {path}")
        return path
    pattern = str(Path(torch.hub.get_dir()) / "checkpoints" / "resnet50-*.pth")
    candidates = sorted(glob.glob(pattern))
    if not candidates:
        raise MlfsicError(
            f"no ResNet-50 weights: dataset.backbone.weights is not set and nothing matches {pattern} "
            "(put torchvision's resnet50-*.pth there or pass dataset.backbone.weights=/path/to/resnet50.pth; "
            "nothing is downloaded)"
        )
    return Path(candidates[0])


def package_file(relative: str) -> Path:
    """A file of the installed ``mlfsic`` package from its package-relative path (``datasets/coco_moji/...``).

    The first part names the subpackage (``datasets`` -> ``mlfsic.datasets``), so the path resolves the
    same in a checkout, an editable install and a wheel. An absolute path is returned as it is.
    """
    path = Path(relative).expanduser()
    if path.is_absolute():
        return path
    top, *rest = path.parts
    if not rest:
        raise MlfsicError(f"dataset.backbone.pinned_weights {relative!r} is not a path inside the mlfsic package "
                          "(e.g. datasets/coco_moji/weights/<file>.pt)")
    try:
        root = importlib.resources.files(f"mlfsic.{top}")
    except ModuleNotFoundError:
        raise MlfsicError(f"dataset.backbone.pinned_weights {relative!r}: mlfsic has no subpackage {top!r}") from None
    return Path(str(root)).joinpath(*rest)


def pinned_weights(config: Mapping[str, Any]) -> Path | None:
    """The pinned weights file of a backbone config, checked against its sha256; None when none is pinned."""
    relative = config.get("pinned_weights")
    if not relative:
        return None
    path = package_file(str(relative))
    expected = str(config.get("pinned_sha256") or "")
    if not path.is_file():
        raise MlfsicError(f"pinned backbone weights not found: {path} (dataset.backbone.pinned_weights={relative})")
    actual = sha256_file(path)
    if actual != expected:
        raise MlfsicError(f"pinned backbone weights {path}: sha256 {actual} does not match "
                          f"dataset.backbone.pinned_sha256 {expected or '(not set)'}")
    return path


def pinned_record(weights: Path) -> dict[str, Any]:
    """The ``<stem>.json`` beside pinned weights: ``trained_on`` (dataset, annotation sha256, split, settings)
    and ``training`` (the training report)."""
    path = weights.with_suffix(".json")
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise MlfsicError(f"cannot read the record of pinned backbone weights {path}: {error}") from None
    if not isinstance(record, dict) or not isinstance(record.get("trained_on"), dict):
        raise MlfsicError(f"record of pinned backbone weights {path} has no 'trained_on' mapping")
    return record


def read_state_dict(path: Path, kind: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file
        raise MlfsicError(f"cannot read {kind} weights {path}: {str(error).splitlines()[0]}") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise MlfsicError(f"{kind} weights {path} do not hold a state dict")
    return dict(state)


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], path: Path, kind: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else "mismatch"
        raise MlfsicError(f"{kind} weights {path} do not fit the model: {detail[:200]}") from None


def load_small_cnn(path: Path) -> SmallCNN:
    """A ``SmallCNN`` with the state dict ``train_small_cnn`` saved (head size read from the file)."""
    state = read_state_dict(path, "small_cnn")
    if "head.weight" not in state:
        raise MlfsicError(f"small_cnn weights {path} have no 'head.weight' entry")
    module = SmallCNN(n_labels=int(state["head.weight"].shape[0]))
    load_strict(module, state, path, "small_cnn")
    return module


# ----------------------------------------------------------------------------------------- identity and loading
def backbone_id(kind: str, weights_sha256: str, image_size: int) -> str:
    return sha256_json({"kind": kind, "weights_sha256": weights_sha256, "image_size": int(image_size)})


def identify_backbone(config: Mapping[str, Any], weights_path: Path | None) -> str:
    """The ``backbone_id`` that ``load_backbone(config, weights_path)`` has, without building the network."""
    kind = str(config.get("kind"))
    if kind == "small_cnn":
        if weights_path is None or not Path(weights_path).is_file():
            raise MlfsicError(f"small_cnn weights file not found: {weights_path} (train it with train_small_cnn)")
        return backbone_id(kind, sha256_file(Path(weights_path)), int(config.get("image_size", 96)))
    if kind == "resnet50":
        return backbone_id(kind, sha256_file(find_resnet50_weights(weights_path)), int(config.get("image_size", 224)))
    if kind == "open_clip":
        if weights_path is None or not Path(weights_path).is_file():
            raise MlfsicError(f"open_clip weights file not found: {weights_path} (dataset.backbone.weights)")
        from mlfsic.harness.backbones.open_clip import feature_layout

        return backbone_id(feature_layout(str(config.get("model"))), sha256_file(Path(weights_path)), 0)
    raise MlfsicError(f"dataset.backbone.kind {kind!r} is not one of {', '.join(KINDS)}")


def load_backbone(config: Mapping[str, Any], weights_path: Path | None, known_id: str | None = None) -> Backbone:
    """Build the configured backbone (``config["kind"]``: small_cnn | resnet50 | open_clip) in eval mode.

    ``small_cnn`` needs ``weights_path`` (pinned, or the state dict ``train_small_cnn`` saved); ``resnet50``
    takes ``weights_path`` or the torch hub cache. ``config["device"]`` (optional) picks the device,
    default CUDA when available. ``known_id``: the ``backbone_id`` already computed for these weights (the
    ``Benchmark``'s), so a feature task does not hash the weights file again.
    """
    kind = str(config.get("kind"))
    if kind not in KINDS:
        raise MlfsicError(f"dataset.backbone.kind {kind!r} is not one of {', '.join(KINDS)}")
    device = str(config.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if kind == "open_clip":
        from mlfsic.harness.backbones.open_clip import ClipImageFeatures, load_clip

        clip = load_clip(config, Path(weights_path) if weights_path else None)
        path = Path(str(weights_path))
        module = ClipImageFeatures(clip.visual)
        image_size, mean, std = clip.image_size, clip.mean, clip.std
        batch_size = int(config.get("extract_batch_size", 64))
    elif kind == "small_cnn":
        image_size = int(config.get("image_size", 96))
        if weights_path is None or not Path(weights_path).is_file():
            raise MlfsicError(f"small_cnn weights file not found: {weights_path} (train it with train_small_cnn)")
        path = Path(weights_path)
        module: nn.Module = load_small_cnn(path)
        batch_size = int(config.get("extract_batch_size", 256))
    else:
        image_size = int(config.get("image_size", 224))
        path = find_resnet50_weights(weights_path)
        resnet = ResNet50Backbone()
        load_strict(resnet.net, read_state_dict(path, "resnet50"), path, "resnet50")
        module = resnet
        batch_size = int(config.get("extract_batch_size", 32))
    module.eval().to(device).to(memory_format=torch.channels_last)  # faster convolutions on CPU
    with torch.inference_mode():
        probe_global, probe_local = module.forward_features(torch.zeros(1, 3, image_size, image_size, device=device))
    return Backbone(
        kind=kind,
        module=module,
        image_size=image_size,
        backbone_id=known_id or identify_backbone(config, path),
        global_dim=int(probe_global.shape[1]),
        local_shape=(int(probe_local.shape[1]), int(probe_local.shape[2])),
        batch_size=batch_size,
        device=device,
        mean=tuple(mean),
        std=tuple(std),
    )
