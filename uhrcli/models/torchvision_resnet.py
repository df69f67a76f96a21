"""ResNet with BasicBlocks in torchvision's state_dict layout (conv1, bn1, layer1..4), no classifier.

PGNet's CNN branch is a torchvision ResNet-18 and its checkpoints use torchvision's key names
(layerN.i.{conv1,bn1,conv2,bn2,downsample.0,downsample.1}); torchvision itself is not a dependency of
uhr, so this small copy of the architecture exists to load those weights strictly. (The mmseg-style
ResNet-V1c in resnet.py has a deep stem and different keys and cannot stand in for it.)
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .layers import init_weights

from .resnet import BasicBlock  # undilated, it is torchvision's block key for key


class TorchvisionResNet(nn.Module):
    """7x7/2 stem + max-pool, four BasicBlock stages; forward returns the stage outputs at 1/4..1/32."""

    out_channels = (64, 128, 256, 512)

    def __init__(self, layers: Sequence[int] = (2, 2, 2, 2), in_chans: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.inplanes = 64
        self.layer1 = self._make_layer(64, layers[0], 1)
        self.layer2 = self._make_layer(128, layers[1], 2)
        self.layer3 = self._make_layer(256, layers[2], 2)
        self.layer4 = self._make_layer(512, layers[3], 2)
        init_weights(self)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        down = None
        if stride != 1 or self.inplanes != planes:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
        mods: list[nn.Module] = [BasicBlock(self.inplanes, planes, stride, downsample=down)]
        self.inplanes = planes
        mods += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return c2, c3, c4, c5


def resnet18(in_chans: int = 3) -> TorchvisionResNet:
    """ResNet-18 (2-2-2-2 BasicBlocks)."""
    return TorchvisionResNet((2, 2, 2, 2), in_chans)


__all__ = ["BasicBlock", "TorchvisionResNet", "resnet18"]
