"""Backbone networks (docs/architecture.md §7): frozen feature extractors giving a global vector and a local grid.

Every module implements ``forward_features(x) -> (global (B, D), local (B, L, C))``; the local grid is
the last convolutional feature map flattened row-major (L = h * w positions of C channels), which is
what the local-feature methods (WVGA, LCM) attend over. Weights are loaded by ``harness.backbones``.

``SmallCNN``
    For the embedded 96 px coco-moji benchmark: four conv stages (32-64-128-128 channels, BN + ReLU)
    with a stride-2 stem, 96 -> 48 -> 24 -> 12 -> 6, so local = 6x6 -> (36, 128) and global = the
    average of that map (128). A linear head is used only for training (``harness.backbone_training``).
``ResNet50Backbone``
    torchvision ResNet-50 (He et al., CVPR 2016) trunk; at 224 px global = average-pooled layer4 (2048),
    local = the 7x7 layer4 map -> (49, 2048).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Four-stage CNN for 96x96 RGB images.

    Shapes for a (B, 3, 96, 96) input: stem stride 2 -> (B, 32, 48, 48) -> pool -> stage 2 (64, 24, 24)
    -> pool -> stage 3 (128, 12, 12) -> pool -> stage 4 (128, 6, 6). ``forward_features`` returns
    global (B, 128) and local (B, 36, 128); ``forward`` returns base-label logits (B, n_labels).
    """

    feature_dim = 128

    def __init__(self, n_labels: int, channels: Sequence[int] = (32, 64, 128, 128)) -> None:
        super().__init__()
        c1, c2, c3, c4 = channels
        self.stages = nn.Sequential(
            _conv_bn_relu(3, c1, stride=2),
            nn.MaxPool2d(2),
            _conv_bn_relu(c1, c2),
            nn.MaxPool2d(2),
            _conv_bn_relu(c2, c3),
            _conv_bn_relu(c3, c3),
            nn.MaxPool2d(2),
            _conv_bn_relu(c3, c4),
            _conv_bn_relu(c4, c4),
        )
        self.head = nn.Linear(c4, n_labels)
        self.feature_dim = c4

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.feature_map(x)  # (B, C, h, w)
        return fmap.mean(dim=(2, 3)), fmap.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.feature_map(x).mean(dim=(2, 3)))


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
