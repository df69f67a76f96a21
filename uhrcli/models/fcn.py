"""A small fully convolutional network: the cheapest registry model.

It exists so the streaming engine can be exercised and benchmarked without a
heavy network, and so tiled-versus-whole equality can be tested exactly.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..geometry import halvings
from .base import ModelInfo, default_class_names, default_palette
from .registry import register_model


class TinyFCN(nn.Module):
    """conv-BN-ReLU stack with one stride-2 stage and bilinear upsampling."""

    def __init__(self, num_classes: int = 2, in_chans: int = 3, width: int = 16, depth: int = 3,
                 task: str = "segment"):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_chans, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        layers += [nn.Conv2d(width, width * 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width * 2), nn.ReLU(inplace=True)]
        for _ in range(depth - 1):
            layers += [nn.Conv2d(width * 2, width * 2, 3, padding=1, bias=False), nn.BatchNorm2d(width * 2), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(width * 2, num_classes, 1)
        # receptive field: 3 (first conv) + 2 (s2 conv) + 4*(depth-1) (s1 convs at stride 2), +2 for bilinear up
        rf = 1 + 2 + 2 + 4 * (depth - 1) + 2
        if task not in ("segment", "saliency"):
            raise ValueError(f"task must be segment or saliency, got {task!r}")
        names = ("salient",) if task == "saliency" and num_classes == 1 else default_class_names(num_classes)
        self.info = ModelInfo(
            name="fcn-tiny", task=task, num_classes=num_classes, class_names=names,
            palette=default_palette(num_classes), in_channels=in_chans,
            receptive_field=rf, size_multiple=2,
        )

    logit_stride = 2

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits before the final upsampling, at 1/2 (`logit_size`)."""
        return self.classifier(self.features(x))

    @staticmethod
    def logit_size(height: int, width: int) -> tuple[int, int]:
        return halvings(height, 1), halvings(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.forward_logits(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


@register_model("fcn-tiny")
def fcn_tiny(num_classes: int | None = None, in_chans: int = 3, task: str = "segment", **kw) -> TinyFCN:
    """task='saliency' gives a one-channel (sigmoid) output: a cheap stand-in for PGNet in tests."""
    if num_classes is None:
        num_classes = 1 if task == "saliency" else 2
    return TinyFCN(num_classes=num_classes, in_chans=in_chans, task=task, **kw)
