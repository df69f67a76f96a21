"""STDC-Seg (Fan et al., "Rethinking BiSeNet", CVPR 2021) as mmseg configures it (configs/_base_/models/stdc.py).

STDC1/STDC2 backbone (STDCNet813 / STDCNet1446, channels 32-64-256-512-1024,
'cat' STDC modules of 4 convs) -> context path (a global-average context
vector, two Attention Refinement Modules at 1/32 and 1/16, nearest upsampling
and 3x3 ConvBNReLUs) -> Feature Fusion Module with the 1/8 backbone map ->
FCN head (3x3 256 -> 256, 1x1 classifier) at 1/8. Training adds two FCN
auxiliary heads on the context path (1/8 and 1/16, 128 -> 64) and the Detail
Aggregation head on the 1/8 backbone map (256 -> 64 -> 2, boundary targets
from the label by Laplacian convolutions at strides 1, 2, 4, BCE + Dice).
Module and key names are mmseg's (`backbone.backbone.stages.*`,
`backbone.arms.*`, `backbone.ffm.*`, `decode_head.*`, `auxiliary_head.{0,1,2}.*`).

Image-wide ops: the context vector (mean of the 1/32 map), each ARM's channel
attention (mean of its 3x3 conv output at 1/32 and 1/16) and the FFM's
attention (mean of the fused 1/8 map) are means over the WHOLE image, chained
(each depends on the one before), so a tile cannot reproduce them. The model
speaks the deep-path protocol with a backbone that is not plainly tileable:
`uhr segment` runs everything up to the fused 1/8 map once over the whole
raster when it fits the deep pass's budget, and otherwise in three passes over
tiles with the backbone's reach as halo (`chain_maps`): the first gathers the
means of x32 and of both ARM convs, the second (given those) the mean of the
FFM's map, the third (given all four) stores the fused map; nearest
upsamplings use the whole image's index rule. The local decode head follows,
and tiles are resampled from the 1/8 logits in whole-image coordinates
(align_corners=True, as mmseg's decode head resizes): equal to the
whole-image forward either way.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..geometry import Placement, halvings, nearest_indices
from .aspp import FCNHead
from .base import ModelInfo, default_palette
from .isdnet import IMAGENET_MEAN, IMAGENET_STD
from .isdnet_losses import IGNORE_INDEX
from .layers import ConvBNAct, init_classifier, init_weights
from .registry import register_model

# mmseg StdcNet arch_settings: strides of the STDC modules in the 1/8, 1/16 and 1/32 stages
ARCH: dict[str, tuple[tuple[int, ...], ...]] = {
    "STDCNet1": ((2, 1), (2, 1), (2, 1)),
    "STDCNet2": ((2, 1, 1, 1), (2, 1, 1, 1, 1), (2, 1, 1)),
}


class ConvAct(nn.Module):
    """1x1 conv without bias or norm, then an activation (mmcv ConvModule with norm_cfg=None: key `conv`)."""

    def __init__(self, in_ch: int, out_ch: int, act: str = "relu"):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.act = nn.ReLU(inplace=True) if act == "relu" else nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class STDCModule(nn.Module):
    """STDC module, 'cat' fusion: a 1x1 conv to out/2, then 3x3 convs halving the width (out/4, out/8, out/8
    for 4 convs), all outputs concatenated. With stride 2 a depthwise 3x3/2 ConvBN (`avg_pool`) downsamples
    before the second conv and the first output joins through a 3x3/2 average pool."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, num_convs: int = 4):
        super().__init__()
        if num_convs < 2:
            raise ValueError("num_convs must be at least 2")
        self.stride = stride
        self.layers = nn.ModuleList([ConvBNAct(in_ch, out_ch // 2, 1)])
        if stride == 2:
            self.avg_pool = ConvBNAct(out_ch // 2, out_ch // 2, 3, stride=2, groups=out_ch // 2, act=False)
            self.skip = nn.AvgPool2d(3, 2, 1)
        for i in range(1, num_convs):
            factor = 2 ** (i + 1) if i != num_convs - 1 else 2 ** i
            self.layers.append(ConvBNAct(out_ch // 2 ** i, out_ch // factor, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.layers[0](x)
        y = self.avg_pool(x0) if self.stride == 2 else x0
        outs = [self.skip(x0) if self.stride == 2 else x0]
        for layer in self.layers[1:]:
            y = layer(y)
            outs.append(y)
        return torch.cat(outs, dim=1)


class STDCNet(nn.Module):
    """Two strided 3x3 ConvBNReLUs (1/2, 1/4) then three stages of STDC modules; returns (x8, x16, x32)."""

    def __init__(self, stdc_type: str = "STDCNet1", in_channels: int = 3,
                 channels: Sequence[int] = (32, 64, 256, 512, 1024), num_convs: int = 4):
        super().__init__()
        if stdc_type not in ARCH:
            raise ValueError(f"stdc_type must be one of {sorted(ARCH)}, got {stdc_type!r}")
        ch = tuple(channels)
        stages: list[nn.Module] = [ConvBNAct(in_channels, ch[0], 3, 2), ConvBNAct(ch[0], ch[1], 3, 2)]
        for i, strides in enumerate(ARCH[stdc_type]):
            stages.append(nn.Sequential(*(STDCModule(ch[i + 1] if j == 0 else ch[i + 2], ch[i + 2], s, num_convs)
                                          for j, s in enumerate(strides))))
        self.stages = nn.ModuleList(stages)
        self.channels = ch

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs[2:]


class AttentionRefinementModule(nn.Module):
    """3x3 ConvBN, then a sigmoid channel attention from its spatial mean (1x1 ConvBN)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = ConvBNAct(in_ch, out_ch, 3, act=False)
        self.conv_attn = ConvBNAct(out_ch, out_ch, 1, act=False, pooled=True)

    def attention(self, mean: torch.Tensor) -> torch.Tensor:
        """(B, C) mean of conv(x) -> (B, C, 1, 1) weights."""
        return torch.sigmoid(self.conv_attn(mean.reshape(mean.shape[0], -1, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y * self.attention(y.mean(dim=(2, 3)))


class FeatureFusionModule(nn.Module):
    """cat(spatial, context) -> 1x1 ConvBNReLU; x + x * sigmoid-attention from the mean of x (two bias-free 1x1s)."""

    def __init__(self, in_ch: int = 384, out_ch: int = 256, scale_factor: int = 4):
        super().__init__()
        self.conv0 = ConvBNAct(in_ch, out_ch, 1)
        self.conv1 = ConvAct(out_ch, out_ch // scale_factor, "relu")
        self.conv2 = ConvAct(out_ch // scale_factor, out_ch, "sigmoid")

    def forward(self, sp: torch.Tensor, cp: torch.Tensor) -> torch.Tensor:
        x = self.conv0(torch.cat([sp, cp], dim=1))
        attn = self.conv2(self.conv1(x.mean(dim=(2, 3), keepdim=True)))
        return x + x * attn


class STDCContextPathNet(nn.Module):
    """Backbone + context path + FFM; returns (x8, context at 1/16, context at 1/8, fused 1/8 map).

    Split into stages that are local given four image-wide means, so a tiled caller
    (uhrcli.inference.meanchain) can supply the whole image's values: `stage_maps` (backbone and the
    ARMs' 3x3 convs), `context8` (given the means of x32, of the 1/32 ARM conv and of the 1/16 ARM conv),
    `fuse_pre` (the FFM's 1x1 ConvBNReLU) and `fuse_out` (given the mean of fuse_pre). The nearest
    upsamplings between 1/32, 1/16 and 1/8 take the whole image's index rule when a Placement is given.
    """

    def __init__(self, stdc_type: str = "STDCNet1", last_in_channels: Sequence[int] = (1024, 512),
                 out_channels: int = 128, ffm_in: int = 384, ffm_out: int = 256):
        super().__init__()
        self.backbone = STDCNet(stdc_type)
        self.arms = nn.ModuleList(AttentionRefinementModule(c, out_channels) for c in last_in_channels)
        self.convs = nn.ModuleList(ConvBNAct(out_channels, out_channels, 3) for _ in last_in_channels)
        self.conv_avg = ConvBNAct(last_in_channels[0], out_channels, 1, pooled=True)
        self.ffm = FeatureFusionModule(ffm_in, ffm_out, 4)

    def stage_maps(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """(backbone outputs [x8, x16, x32], the 1/32 ARM's conv on x32, the 1/16 ARM's conv on x16)."""
        outs = self.backbone(x)
        return outs, self.arms[0].conv(outs[2]), self.arms[1].conv(outs[1])

    def context8(self, c32: torch.Tensor, c16: torch.Tensor, sizes: tuple[tuple[int, int], ...],
                 m32: torch.Tensor, a32: torch.Tensor, a16: torch.Tensor, place: Placement | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(context at 1/16, context at 1/8) from the ARM convs and the three means (B, C) of x32, c32, c16.
        sizes: the (h, w) of the 1/16 and 1/8 maps."""
        ctx = self.conv_avg(m32.reshape(m32.shape[0], -1, 1, 1))  # 1x1 map: nearest resize = broadcast
        y32 = c32 * self.arms[0].attention(a32) + ctx
        up16 = self.convs[0](_nearest(y32, sizes[0], place, 32))
        y16 = c16 * self.arms[1].attention(a16) + up16
        return up16, self.convs[1](_nearest(y16, sizes[1], place, 16))

    def fuse_pre(self, x8: torch.Tensor, ctx8: torch.Tensor) -> torch.Tensor:
        return self.ffm.conv0(torch.cat([x8, ctx8], dim=1))

    def fuse_out(self, f: torch.Tensor, f_mean: torch.Tensor) -> torch.Tensor:
        attn = self.ffm.conv2(self.ffm.conv1(f_mean.reshape(f_mean.shape[0], -1, 1, 1)))
        return f + f * attn

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs, c32, c16 = self.stage_maps(x)
        ctx16, ctx8 = self.context8(c32, c16, (outs[1].shape[-2:], outs[0].shape[-2:]),
                                    _mean(outs[2]), _mean(c32), _mean(c16))
        f = self.fuse_pre(outs[0], ctx8)
        return (outs[0], ctx16, ctx8, self.fuse_out(f, _mean(f)))

    def reach(self) -> int:
        """Input px (each side) the fused 1/8 map depends on, given the four means: the longest conv chain
        (to x32, the 1/32 ARM conv, nearest up, convs[0], nearest up, convs[1]); nearest upsampling reaches
        one source cell."""
        r, j = 0, 1
        for stage in self.backbone.stages[:2]:
            r, j = r + j, j * 2
        for stage in self.backbone.stages[2:]:
            for mod in stage:
                if mod.stride == 2:
                    r, j = r + j, j * 2
                r += (len(mod.layers) - 1) * j
        r += 32 + 32 + 16 + 16 + 16 + 8  # ARM conv at 1/32, up, convs[0] at 1/16, (ARM conv at 1/16), up, convs[1]
        return r


def _mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(2, 3))


def _nearest(x: torch.Tensor, size: Sequence[int], place: Placement | None, stride: int) -> torch.Tensor:
    """F.interpolate(mode='nearest') to `size`; for a tile placed in a larger image, the whole image's rule
    (its map at `stride` resized to the map at stride / 2), cropped to the tile (cells past the tile's
    edge, which only halo cells read, are clamped)."""
    size = (int(size[0]), int(size[1]))
    if place is None:
        return F.interpolate(x, size=size, mode="nearest")
    out = x
    for axis, (origin, full, n) in enumerate(((place.row, place.height, size[0]), (place.col, place.width, size[1]))):
        levels = stride.bit_length() - 1
        src_full, dst_full = halvings(full, levels), halvings(full, levels - 1)
        a, b = origin // stride, origin // (stride // 2)
        idx = nearest_indices(src_full, dst_full)[b:b + n] - a
        idx = np.clip(idx, 0, out.shape[2 + axis] - 1)
        out = out.index_select(2 + axis, torch.from_numpy(idx).to(out.device))
    return out


class STDCHead(FCNHead):
    """Detail Aggregation head (training only): FCN 256 -> 64 -> 2 on the 1/8 backbone map, supervised by
    boundary maps of the label. The Laplacian and fusion kernels are constants kept in the state dict under
    mmseg's names (`laplacian_kernel` buffer, `fusion_kernel` frozen parameter)."""

    def __init__(self, in_channels: int = 256, channels: int = 64, threshold: float = 0.1, dropout: float = 0.1):
        super().__init__(in_channels, channels, 2, dropout)
        self.threshold = threshold
        lap = torch.tensor([-1.0, -1, -1, -1, 8, -1, -1, -1, -1]).reshape(1, 1, 3, 3)
        self.register_buffer("laplacian_kernel", lap)
        self.fusion_kernel = nn.Parameter(torch.tensor([0.6, 0.3, 0.1]).reshape(1, 3, 1, 1), requires_grad=False)

    @torch.no_grad()
    def boundary_targets(self, target: torch.Tensor) -> torch.Tensor:
        """(B, H, W) label -> (B, H, W) 0/1 boundaries: Laplacian at strides 1, 2, 4 (upsampled nearest),
        thresholded, fused 0.6/0.3/0.1 and thresholded again (mmseg STDCHead)."""
        lab = target[:, None].float()
        maps = []
        for s in (1, 2, 4):
            b = F.conv2d(lab, self.laplacian_kernel.to(lab.dtype), stride=s, padding=1).clamp(min=0)
            if s > 1:
                b = F.interpolate(b, size=lab.shape[-2:], mode="nearest")
            maps.append((b > self.threshold).float())
        fused = F.conv2d(torch.cat(maps, dim=1), self.fusion_kernel.to(lab.dtype))
        return (fused > self.threshold).long()[:, 0]


class STDCSeg(nn.Module):
    """STDC-Seg: forward(x) -> logits at the input size; losses(x, target) -> the four supervised heads."""

    align_corners = True  # mmseg's decode head resizes its 1/8 logits with align_corners=True
    down_ratio = 1

    def __init__(self, num_classes: int = 2, stdc_type: str = "STDCNet1", dropout: float = 0.1,
                 class_names: Sequence[str] | None = None, name: str = "stdc1-seg"):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = STDCContextPathNet(stdc_type)
        self.decode_head = FCNHead(256, 256, num_classes, dropout)
        self.auxiliary_head = nn.ModuleList([FCNHead(128, 64, num_classes, dropout),  # 1/8 context (in_index 2)
                                             FCNHead(128, 64, num_classes, dropout),  # 1/16 context (in_index 1)
                                             STDCHead(256, 64, 0.1, dropout)])  # detail head on x8 (in_index 0)
        init_weights(self)
        for head in (self.decode_head, *self.auxiliary_head):
            init_classifier(head.conv_seg)
        names = tuple(class_names) if class_names else (
            ("background", "building") if num_classes == 2 else tuple(f"class_{i}" for i in range(num_classes)))
        if len(names) != num_classes:
            raise ValueError(f"{len(names)} class names for {num_classes} classes")
        self.info = ModelInfo(
            name=name, num_classes=num_classes, class_names=names, palette=default_palette(num_classes),
            mean=IMAGENET_MEAN, std=IMAGENET_STD, receptive_field=0, size_multiple=32,
            extra={"down_ratio": 1, "global_pooling": True, "deep_channels": 256,
                   "image_wide_ops": "context vector (mean of the 1/32 map), ARM attentions at 1/32 and 1/16, "
                                     "FFM attention at 1/8: means over the whole image",
                   "backbone_tileable": False},
        )

    # -- the deep-path protocol (uhrcli.inference.deep / deeponly) --------------------------------------
    def deep_input(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def deep_backbone(self, x: torch.Tensor) -> torch.Tensor:
        """The fused 1/8 map (256 ch), every image-wide mean taken over `x` (the whole image)."""
        return self.backbone(x)[3]

    def deep_pool(self, feat: torch.Tensor) -> torch.Tensor:
        return feat.sum(dim=(2, 3))  # the decode head has no pooling; kept for the protocol

    def deep_head(self, feat: torch.Tensor, pooled_mean: torch.Tensor | None = None) -> torch.Tensor:
        """The decode head's 3x3 ConvBNReLU (local)."""
        return self.decode_head.convs(feat)

    def deep_logits(self, feat: torch.Tensor) -> torch.Tensor:
        return self.decode_head.conv_seg(self.decode_head.dropout(feat))

    def deep_reach(self) -> dict[str, Any]:
        """The backbone's means are image-wide and chained: plain tiling is wrong ('backbone_tileable' False);
        uhrcli.inference.deep runs it whole, or, beyond its whole-image budget, in passes over tiles with
        `backbone_radius` px of halo (chain_maps), each pass supplying the next with image-wide means."""
        return {"backbone_radius": self.backbone.reach(), "backbone_stride": 8, "head_cells": 1,
                "head_tileable": True, "backbone_tileable": False}

    # strides of the maps whose whole-image means each tiled pass gathers: (x32, ARM conv 1/32, ARM conv 1/16),
    # then (the FFM's pre-attention map at 1/8); a last pass gives the fused 1/8 map itself
    chain_strides: tuple[tuple[int, ...], ...] = ((32, 32, 16), (8,))

    def chain_maps(self, x: torch.Tensor, means: Sequence[torch.Tensor], place: Placement | None = None
                   ) -> list[torch.Tensor]:
        """Pass len(chain_strides) given fewer means: the maps whose means come next; given all four: the
        fused 1/8 map (deep_backbone's output). x is a tile placed at `place` in the whole image."""
        outs, c32, c16 = self.backbone.stage_maps(x)
        if not means:
            return [outs[2], c32, c16]
        sizes = (outs[1].shape[-2:], outs[0].shape[-2:])
        _, ctx8 = self.backbone.context8(c32, c16, sizes, means[0], means[1], means[2], place)
        f = self.backbone.fuse_pre(outs[0], ctx8)
        return [f] if len(means) == 3 else [self.backbone.fuse_out(f, means[3])]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.deep_logits(self.deep_head(self.deep_backbone(x)))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=True)

    # -- training ---------------------------------------------------------------------------------------
    def losses(self, x: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX
               ) -> dict[str, torch.Tensor]:
        """mmseg STDC: OHEM CE (thresh 0.7, min_kept 10000) 1.0 on the decode head and on both context
        heads; the detail head's BCE (one-hot, sigmoid) 1.0 + Dice 1.0 on the boundary targets."""
        if target.ndim == 4:
            target = target[:, 0]
        x8, ctx16, ctx8, fused = self.backbone(x)
        out = {
            "loss_seg": ohem_ce(self.decode_head(fused), target, ignore_index, align_corners=True),
            "loss_aux8": ohem_ce(self.auxiliary_head[0](ctx8), target, ignore_index),
            "loss_aux16": ohem_ce(self.auxiliary_head[1](ctx16), target, ignore_index),
        }
        detail = self.auxiliary_head[2]
        edges = detail.boundary_targets(target)
        d_logits = F.interpolate(detail(x8), size=target.shape[-2:], mode="bilinear", align_corners=False).float()
        out["loss_detail_bce"] = F.binary_cross_entropy_with_logits(
            d_logits, F.one_hot(edges, 2).permute(0, 3, 1, 2).float())
        out["loss_detail_dice"] = dice_loss(d_logits, edges)
        out["loss"] = sum(out.values())  # type: ignore[assignment]
        return out


def ohem_ce(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX, thresh: float = 0.7,
            min_kept: int = 10000, align_corners: bool = False) -> torch.Tensor:
    """mmseg OHEMPixelSampler + CE: keep the valid pixels whose true-class probability is below
    max(thresh, the (min_kept * B)-th lowest probability); mean of the kept losses over all pixels."""
    logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=align_corners).float()
    target = target.long()
    with torch.no_grad():
        valid = target != ignore_index
        prob = torch.softmax(logits, 1).gather(1, target.clamp(0, logits.shape[1] - 1)[:, None].masked_fill(
            ~valid[:, None], 0))[:, 0]
        p = prob[valid]
        weight = torch.zeros_like(prob)
        if p.numel():
            floor = p.sort().values[min(min_kept * target.shape[0], p.numel() - 1)]
            weight[valid] = (p < max(float(floor), thresh)).float()
    loss = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")
    return (loss * weight).mean()


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0, exponent: int = 2) -> torch.Tensor:
    """mmseg DiceLoss (softmax over classes, per image, averaged over classes and images)."""
    prob = torch.softmax(logits.float(), dim=1).flatten(2)
    onehot = F.one_hot(target.long(), logits.shape[1]).permute(0, 3, 1, 2).float().flatten(2)
    num = 2 * (prob * onehot).sum(-1) + smooth
    den = (prob.pow(exponent) + onehot.pow(exponent)).sum(-1) + smooth
    return (1 - num / den).mean()


@register_model("stdc1-seg")
def stdc1_seg(num_classes: int = 2, **kw: Any) -> STDCSeg:
    """STDC1-Seg (STDCNet813 backbone), mmseg stdc1_512x1024_80k_cityscapes."""
    return STDCSeg(num_classes=num_classes, stdc_type="STDCNet1", name="stdc1-seg", **kw)


@register_model("stdc2-seg")
def stdc2_seg(num_classes: int = 2, **kw: Any) -> STDCSeg:
    """STDC2-Seg (STDCNet1446 backbone), mmseg stdc2_512x1024_80k_cityscapes."""
    return STDCSeg(num_classes=num_classes, stdc_type="STDCNet2", name="stdc2-seg", **kw)
