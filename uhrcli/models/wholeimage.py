"""The 'deep' inference protocol for networks whose image-wide operations sit inside the network.

BiSeNet's attention vectors, BiSeNetV2's context embedding and ICNet's pyramid pooling average
whole feature maps at several depths, so a tile of the image cannot reproduce them and the
network has no separable "local backbone + global head" split. Such a model runs once over the
whole raster: `deep_backbone` is the entire network up to its low-resolution logits, the head and
classifier are identities, and uhrcli.inference.deeponly resamples output tiles from those logits
in the whole image's coordinates (the bilinear upsampling `forward` ends with). `deep_reach`
declares an unbounded reach, so when the raster exceeds the one-pass budget every view tile reads
the whole raster: the result stays equal to the whole-image forward, at the cost of repeating it.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from .layers import resize

UNBOUNDED = 1 << 30  # a reach no raster reaches: a deep view tile's read window is the whole view


class WholeImageModel(ABC):
    """Mixin: subclasses define `logits_low(x)` (logits at 1/`logit_stride`, ceil-sized) and `losses`; one without
    `logits_low` cannot be built."""

    down_ratio = 1
    logit_stride = 8

    @abstractmethod
    def logits_low(self, x: torch.Tensor) -> torch.Tensor:
        """The whole network: (B, 3, H, W) normalised -> logits at 1/`logit_stride`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Whole-image inference: (B, 3, H, W) normalised -> logits (B, K, H, W)."""
        return resize(self.logits_low(x), x.shape[-2:])

    # -- the deep-path protocol (uhrcli.inference.deep / deeponly) ------------------------------------
    def deep_input(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def deep_backbone(self, x: torch.Tensor) -> torch.Tensor:
        """The whole network: its logits at 1/logit_stride, image-wide operations included."""
        return self.logits_low(x)

    def deep_pool(self, c4: torch.Tensor) -> torch.Tensor:
        return c4.sum(dim=(2, 3))

    def deep_head(self, c4: torch.Tensor, pooled_mean: torch.Tensor | None = None) -> torch.Tensor:
        return c4  # the pooling is inside deep_backbone already

    def deep_logits(self, feat: torch.Tensor) -> torch.Tensor:
        return feat

    def deep_reach(self) -> dict[str, Any]:
        return {"backbone_radius": UNBOUNDED, "backbone_stride": self.logit_stride, "head_cells": 0,
                "head_tileable": False}


def class_names_for(num_classes: int, class_names: Any = None) -> tuple[str, ...]:
    """The registry's default names (background/building for 2 classes, as the ISDNet family)."""
    names = tuple(class_names) if class_names else (
        ("background", "building") if num_classes == 2 else tuple(f"class_{i}" for i in range(num_classes)))
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes")
    return names

