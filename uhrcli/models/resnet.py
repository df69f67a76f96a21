"""ResNet V1c (deep stem) backbones in mmseg's key layout, plus ImageNet weight loading.

ISDNet's deep branch is mmseg's `ResNetV1c` with strides (1,2,1,1) and
dilations (1,1,2,4) (`contract_dilation=True`): output stride 8. Module names
match mmseg (`stem.0/1/3/4/6/7`, `layerN.i.conv1`, `.downsample.0/1`) so an
official checkpoint converts by identity for the backbone.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from ..errors import CheckpointError
from .layers import init_weights


class BasicBlock(nn.Module):
    """mmseg BasicBlock: only conv1 is strided/dilated; conv2 is a plain 3x3 (padding 1, as in mmseg)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + idt)


class Bottleneck(nn.Module):
    """mmseg Bottleneck, style 'pytorch': the stride and dilation sit on the 3x3 conv2."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + idt)


ARCH: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


class ResNetV1c(nn.Module):
    """ResNet with the V1c deep stem (3x3 convs: stem/2, stem/2, stem) and per-stage strides/dilations.

    forward returns the four stage outputs (layer1..layer4).
    contract_dilation: the first block of a dilated stage uses half the
    dilation, as mmseg's ResLayer does, to soften the jump in sampling rate.
    """

    def __init__(self, depth: int = 18, in_channels: int = 3, stem_channels: int = 64, base_channels: int = 64,
                 strides: Sequence[int] = (1, 2, 2, 2), dilations: Sequence[int] = (1, 1, 1, 1),
                 contract_dilation: bool = False):
        super().__init__()
        if depth not in ARCH:
            raise ValueError(f"unsupported ResNet depth {depth}; choose from {sorted(ARCH)}")
        if len(strides) != 4 or len(dilations) != 4:
            raise ValueError("strides and dilations need four entries (one per stage)")
        block, counts = ARCH[depth]
        self.depth, self.strides, self.dilations = depth, tuple(strides), tuple(dilations)
        half = stem_channels // 2
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, half, 3, 2, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 3, 1, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            nn.Conv2d(half, stem_channels, 3, 1, 1, bias=False), nn.BatchNorm2d(stem_channels), nn.ReLU(inplace=True),
        )
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = stem_channels
        self.out_channels: list[int] = []
        for i, (n, s, d) in enumerate(zip(counts, strides, dilations)):
            planes = base_channels * 2 ** i
            down = None
            if s != 1 or inplanes != planes * block.expansion:
                down = nn.Sequential(nn.Conv2d(inplanes, planes * block.expansion, 1, s, bias=False),
                                     nn.BatchNorm2d(planes * block.expansion))
            first_d = d // 2 if (contract_dilation and d > 1) else d
            blocks = [block(inplanes, planes, s, first_d, down)]
            inplanes = planes * block.expansion
            blocks += [block(inplanes, planes, 1, d) for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.out_channels.append(inplanes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.stem(x))
        outs = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            outs.append(x)
        return outs


def resnet_v1c_d8(depth: int, width: int = 64) -> ResNetV1c:
    """The dilated (output stride 8) V1c ResNet used by ISDNet's deep branch and DeepLabV3-d8.

    width < 64 gives a slimmer network (stem and every stage scaled) for small shipped models.
    """
    return ResNetV1c(depth, stem_channels=width, base_channels=width, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4),
                     contract_dilation=True)


def load_torchvision_resnet(backbone: ResNetV1c, state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Load ImageNet weights into `backbone` and report what was and was not taken.

    Accepts torchvision's layout (conv1/bn1/layerN/fc) and mmseg's V1c layout
    (stem.*/layerN.*, optionally under `backbone.`). torchvision's stem is a
    single 7x7 conv that cannot initialise the V1c deep stem (three 3x3 convs):
    the stem then keeps its initialisation and the report says so.
    Shapes must match exactly; a mismatch raises CheckpointError.
    """
    sd = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in state_dict.items()}
    own = backbone.state_dict()
    loaded, skipped = [], []
    new = {}
    for k, v in sd.items():
        if k in own and (k.startswith("layer") or k.startswith("stem.")):
            if tuple(v.shape) != tuple(own[k].shape):
                raise CheckpointError(f"backbone weight {k}: shape {tuple(v.shape)} does not fit {tuple(own[k].shape)} "
                                      f"(ResNet-{backbone.depth})")
            new[k] = v.to(own[k].dtype)
            loaded.append(k)
        else:
            skipped.append(k)
    layer_keys = [k for k in own if k.startswith("layer")]
    if not any(k.startswith("layer") for k in loaded):
        raise CheckpointError("no ResNet layer weights found (expected torchvision or mmseg ResNet keys)")
    missing = [k for k in own if k not in new]
    backbone.load_state_dict({**own, **new}, strict=True)
    stem_loaded = any(k.startswith("stem.") for k in loaded)
    notes = []
    if not stem_loaded:
        notes.append("deep stem (stem.*) not initialised: torchvision's single 7x7 conv1 cannot be mapped onto "
                     "three 3x3 convs; it keeps its random initialisation")
    missing_layers = [k for k in layer_keys if k not in new]
    if missing_layers:
        notes.append(f"{len(missing_layers)} layer key(s) absent from the file, e.g. {missing_layers[0]}")
    return {"loaded": len(loaded), "skipped": skipped, "missing": missing, "stem_loaded": stem_loaded,
            "notes": notes}


def load_backbone_weights(model: nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """`--backbone-weights FILE`: ImageNet ResNet weights into `model.backbone` (safe loader, tensors only)."""
    from .checkpoint import load_checkpoint

    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, ResNetV1c):
        raise CheckpointError(f"model {getattr(getattr(model, 'info', None), 'name', '?')} has no ResNet backbone")
    state, _ = load_checkpoint(path)
    report = load_torchvision_resnet(backbone, state)
    report["source"] = str(path)
    return report
