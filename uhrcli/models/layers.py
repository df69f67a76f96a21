"""Small building blocks shared by the ISDNet family (plain torch, mmcv-free).

Attribute names (`conv`, `bn`) follow mmcv's ConvModule so that state-dict keys
of the official checkpoints map onto ours almost one to one.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class PooledBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that tolerates a single value per channel in training.

    Batch statistics of a globally pooled map (N x C x 1 x 1) need N >= 2; the
    official code trains with SyncBN over 8 GPUs so this never arises there.
    When there is only one value per channel (batch size 1 on a pooled map),
    we normalise with the running statistics, as in eval mode, and leave them
    unchanged; affine parameters still receive gradients. With two or more
    values it is an ordinary BatchNorm2d, and its keys are identical.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.numel() // x.shape[1] <= 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        return super().forward(x)


class ConvBNAct(nn.Module):
    """conv -> BN -> optional ReLU, keys `conv.*`, `bn.*` (mmcv ConvModule layout)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, padding: int | None = None,
                 dilation: int = 1, groups: int = 1, act: bool = True, pooled: bool = False):
        super().__init__()
        if padding is None:
            padding = dilation * (kernel // 2)
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding, dilation, groups, bias=False)
        self.bn = (PooledBatchNorm2d if pooled else nn.BatchNorm2d)(out_ch)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SegHead(nn.Module):
    """3x3 ConvBNReLU then 1x1 classifier (the official `SegmentationHead`)."""

    def __init__(self, in_ch: int, mid_ch: int, num_classes: int):
        super().__init__()
        self.conv_bn_relu = ConvBNAct(in_ch, mid_ch, 3)
        self.conv_out = nn.Conv2d(mid_ch, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv_bn_relu(x))


def resize(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear, align_corners=False (mmseg's `resize` as configured for ISDNet)."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def init_weights(module: nn.Module) -> None:
    """Kaiming (fan_out) convs, unit BN, as mmcv's ConvModule and STDC's init do."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def init_classifier(conv: nn.Conv2d, std: float = 0.01) -> None:
    """mmseg initialises every `conv_seg` with N(0, 0.01) and zero bias."""
    nn.init.normal_(conv.weight, std=std)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
