"""Deep-branch heads: ASPP (DeepLabV3 / RefineASPPHead), PSP pyramid pooling, FCN auxiliary head.

Both deep heads honour one contract used by ISDNet and the two-scale engine:
`features(c4, pooled_mean=None) -> (B, channels, h, w)` and `cls_seg(feat)`.
`pooled_mean` (B, C_in) replaces the spatial mean of c4 taken by the global
(image-pooling) branch, so a caller that tiles c4 can supply the image-wide
statistic instead of each tile's local one.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .layers import ConvBNAct, init_classifier, resize


class ASPPHead(nn.Module):
    """ASPP with image pooling and a 3x3 bottleneck (mmseg RefineASPPHead key layout).

    The bottleneck output is ISDNet's `deep_feat`; its own logits come from
    `cls_seg` (Dropout2d + 1x1 conv), supervised with weight 1.0 in training.
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int,
                 dilations: Sequence[int] = (1, 12, 24, 36), dropout: float = 0.1):
        super().__init__()
        self.in_channels, self.channels, self.dilations = in_channels, channels, tuple(dilations)
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBNAct(in_channels, channels, 1, pooled=True))
        self.aspp_modules = nn.ModuleList(
            ConvBNAct(in_channels, channels, 1 if d == 1 else 3, dilation=d, padding=0 if d == 1 else d)
            for d in dilations)
        self.bottleneck = ConvBNAct((len(dilations) + 1) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        init_classifier(self.conv_seg)

    def pool(self, c4: torch.Tensor) -> torch.Tensor:
        """(B, C_in) sum over H, W of what the image-pooling branch averages (c4 itself)."""
        return c4.sum(dim=(2, 3))

    def features(self, c4: torch.Tensor, pooled_mean: torch.Tensor | None = None) -> torch.Tensor:
        if pooled_mean is None:
            pooled = c4.mean(dim=(2, 3), keepdim=True)
        else:
            pooled = pooled_mean.to(c4.dtype).reshape(c4.shape[0], -1, 1, 1)
        g = self.image_pool[1](pooled).expand(-1, -1, c4.shape[2], c4.shape[3])
        outs = [g] + [m(c4) for m in self.aspp_modules]
        return self.bottleneck(torch.cat(outs, dim=1))

    def cls_seg(self, feat: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(feat))


class PSPHead(nn.Module):
    """Pyramid pooling (PSPNet, bins 1/2/3/6) with a 3x3 bottleneck to `channels` (mmseg PSPHead layout).

    Non-local parts: every bin averages c4 over a fixed fraction of the WHOLE
    map, so the 2x2, 3x3 and 6x6 bins depend on the map's full extent and
    cannot be recovered from tiles of c4. `pooled_mean` replaces only the
    1x1 (global) bin; a tiled deep pass is therefore NOT equivalent for this
    head, and callers must run it on the whole c4 map (ISDNet advertises this
    through info.extra['deep_head_tileable'] = False).
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1):
        super().__init__()
        self.in_channels, self.channels, self.pool_scales = in_channels, channels, tuple(pool_scales)
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvBNAct(in_channels, channels, 1, pooled=True))
            for s in pool_scales)
        self.bottleneck = ConvBNAct(in_channels + len(pool_scales) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        init_classifier(self.conv_seg)

    def pool(self, c4: torch.Tensor) -> torch.Tensor:
        """(B, C_in) sum over H, W of c4: the statistic of the 1x1 bin only (see class docstring)."""
        return c4.sum(dim=(2, 3))

    def features(self, c4: torch.Tensor, pooled_mean: torch.Tensor | None = None) -> torch.Tensor:
        outs = [c4]
        for s, m in zip(self.pool_scales, self.psp_modules):
            if s == 1 and pooled_mean is not None:
                p = pooled_mean.to(c4.dtype).reshape(c4.shape[0], -1, 1, 1)
            else:
                p = m[0](c4)
            y = m[1](p)
            outs.append(y.expand(-1, -1, c4.shape[2], c4.shape[3]) if s == 1 else resize(y, c4.shape[-2:]))
        return self.bottleneck(torch.cat(outs, dim=1))

    def cls_seg(self, feat: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(feat))


class FCNHead(nn.Module):
    """mmseg FCNHead with concat_input=False (num_convs 3x3 ConvBNReLUs, 1 by default): the training-only
    auxiliary head on layer3, and the decode/booster heads of the real-time baselines."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1, num_convs: int = 1):
        super().__init__()
        self.convs = nn.Sequential(*(ConvBNAct(in_channels if i == 0 else channels, channels, 3)
                                     for i in range(num_convs)))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        init_classifier(self.conv_seg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(self.convs(x)))
