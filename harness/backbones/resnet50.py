"""The ``resnet50`` backbone kind: torchvision's ResNet-50 trunk (He et al., "Deep Residual Learning for
Image Recognition", CVPR 2016) with weights from a local file.

At 224 px global = average-pooled layer4 (2048), local = the 7x7 layer4 map -> (49, 2048). Weights: a
``.pth`` state dict given as ``dataset.backbone.weights``, else torchvision's file in the torch hub cache
(``find_resnet50_weights``); never downloaded.
"""

from __future__ import annotations

import glob
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlfsic.harness.backbones.extractor import BackboneKind, Network, backbone_id
from mlfsic.harness.backbones.weights import load_strict, read_state_dict
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.io import sha256_file


@dataclass(frozen=True)
class ResNet50Settings:
    """The ``dataset.backbone`` keys of a resnet50 and their defaults (the one home of these values)."""

    image_size: int = 224
    extract_batch_size: int = 32

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> ResNet50Settings:
        return cls(**{f.name: int(config[f.name]) for f in fields(cls) if config.get(f.name) is not None})


class ResNet50Backbone(nn.Module):
    """torchvision ResNet-50 trunk (random init; load weights into ``.net``); (B, 2048) and (B, 49, 2048) at 224 px."""

    feature_dim = 2048

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet50

        self.net = resnet50(weights=None)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.net
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        fmap = net.layer4(net.layer3(net.layer2(net.layer1(x))))  # (B, 2048, 7, 7)
        return fmap.mean(dim=(2, 3)), fmap.flatten(2).transpose(1, 2)


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


def _weights(dataset: Any, split: Any, config: Mapping[str, Any], cache_root: Path,
             progress: bool = True) -> tuple[Path | None, dict[str, Any]]:
    weights = config.get("weights")
    return (Path(weights) if weights else None), {}


def _identify(config: Mapping[str, Any], weights: Path | None) -> str:
    return backbone_id("resnet50", sha256_file(find_resnet50_weights(weights)), ResNet50Settings.of(config).image_size)


def _build(config: Mapping[str, Any], weights: Path | None) -> Network:
    settings = ResNet50Settings.of(config)
    path = find_resnet50_weights(weights)
    resnet = ResNet50Backbone()
    load_strict(resnet.net, read_state_dict(path, "resnet50"), path, "resnet50")
    return Network(module=resnet, weights=path, image_size=settings.image_size, batch_size=settings.extract_batch_size)


def _config_weights(config: Mapping[str, Any]) -> Path | None:
    """The given file, or the torch cache's; None when neither is there (the backbone step then says so)."""
    given = config.get("weights")
    if given is not None and not Path(str(given)).is_file():
        return None
    try:
        return find_resnet50_weights(Path(str(given)) if given else None)
    except MlfsicError:
        return None


KIND = BackboneKind(name="resnet50", weights=_weights, identify=_identify, build=_build, config_weights=_config_weights,
                    keys=("weights", *(f.name for f in fields(ResNet50Settings))))
