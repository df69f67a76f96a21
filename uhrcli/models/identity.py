"""A zero-cost model: the pipeline's ceiling.

`uhr bench --pipeline --models identity` and `uhr segment --model identity`
run everything around the network (decode, transfer, normalisation, merge,
encode, write) with a model that costs nothing, so the CPU side can be timed
alone. Its logits are the first band and its negation: class 1 where that band
is above the normalisation mean, a map with real structure, not a constant.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import ModelInfo, default_class_names, default_palette
from .registry import register_model


class Identity(nn.Module):
    logit_stride = 1
    channels_last = False  # no convolutions to feed: normalised pixels stay (N, C, H, W), as read

    def __init__(self, in_chans: int = 3, task: str = "segment"):
        super().__init__()
        if task not in ("segment", "saliency"):
            raise ValueError(f"task must be segment or saliency, got {task!r}")
        k = 1 if task == "saliency" else 2
        names = ("salient",) if k == 1 else default_class_names(k)
        self.register_buffer("_signs", torch.tensor([-1.0, 1.0]).view(1, 2, 1, 1), persistent=False)
        self.info = ModelInfo(name="identity", task=task, num_classes=k, class_names=names,
                              palette=default_palette(k), in_channels=in_chans, receptive_field=0, size_multiple=1)

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        b = x[:, :1]
        if self.info.num_classes == 1:
            return b
        # (-b, b) in one pass (x -1 is negation, exactly): a cat of -b and b wrote the logits twice
        return b * self._signs.to(b.device, b.dtype)

    @staticmethod
    def logit_size(height: int, width: int) -> tuple[int, int]:
        return height, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.forward_logits(x)
        return out if out.shape[-2:] == x.shape[-2:] else F.interpolate(out, size=x.shape[-2:])


@register_model("identity")
def identity(in_chans: int = 3, task: str = "segment", **kw) -> Identity:
    """No parameters, no compute: times what surrounds the network."""
    return Identity(in_chans=in_chans, task=task)
