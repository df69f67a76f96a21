"""ISDNet (Guo et al., CVPR 2022): a bi-path network for ultra-high-resolution segmentation.

Deep path: a dilated ResNet (output stride 8) + ASPP (or PSP) on the image
shrunk by `down_ratio` (4), giving a 128-ch `deep_feat` at 1/32 of full
resolution. Shallow path: an STDC-style net on two Laplacian residuals of the
full-resolution image (feat8, feat16). Two Relation-Aware Fusion modules merge
them at 1/16 and 1/8; a light head classifies at 1/8.

The whole-image `forward` is composed *only* of the stages the tiled inferer
(uhrcli.inference.bipath) calls: deep_* on the shrunk image, shallow and the
spatial branches on full-resolution tiles, the fusions given image-wide means,
so the two cannot drift apart.
Module names mirror the official mmseg model (backbone, decode_head,
auxiliary_head; the refine_head's children sit at the top level) so that
`convert.py` is close to an identity mapping.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .aspp import ASPPHead, FCNHead, PSPHead
from ..geometry import Placement
from .base import ModelInfo, default_palette
from .isdnet_losses import (IGNORE_INDEX, LOSS_WEIGHTS, feature_affinity_loss, recon_loss, seg_ce)
from .layers import ConvBNAct, SegHead, init_classifier, init_weights, resize
from .registry import register_model
from .resnet import Bottleneck, ResNetV1c, load_backbone_weights, resnet_v1c_d8
from .stdc import LaplacianPyramid, ShallowNet

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
BACKBONES = {"r18": 18, "r50": 50}


# ------------------------------------------------------------------------------------------------------
class ChannelAtt(nn.Module):
    """3x3 ConvBNReLU feature and a ConvBN (no act) on its global average (keys conv_bn_relu, conv_1x1)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv_bn_relu = ConvBNAct(in_ch, out_ch, 3)
        self.conv_1x1 = ConvBNAct(out_ch, out_ch, 1, act=False, pooled=True)

    def attention(self, gap: torch.Tensor) -> torch.Tensor:
        """(B, C) pooled vector -> (B, C, 1, 1) attention logits."""
        return self.conv_1x1(gap.reshape(gap.shape[0], -1, 1, 1))


class RelationAwareFusion(nn.Module):
    """Fuse a shallow (spatial) map with a context map through relation-aware channel attention.

    The only non-local quantities are the two pooled vectors: `weights` takes
    them as arguments so a tiled caller can pass image-wide values, and `merge`
    is local. With spatial means of the whole maps it is the official module.
    """

    def __init__(self, channels: int = 128, ext: int = 2, r: int = 16, in_channels: int | None = None):
        super().__init__()
        if channels % r:
            raise ValueError(f"channels ({channels}) must be divisible by r ({r})")
        self.r = r
        self.g1 = nn.Parameter(torch.zeros(1))
        self.g2 = nn.Parameter(torch.zeros(1))
        hidden = r * r  # the flattened r x r channel-group affinity (256 for C=128, r=16, as officially 2C)
        self.spatial_mlp = nn.Sequential(nn.Linear(hidden, channels), nn.ReLU(), nn.Linear(channels, channels))
        # the shallow map's width: ext * channels in the paper's configuration (512 and 256 for C=128)
        self.spatial_att = ChannelAtt(in_channels or channels * ext, channels)
        self.context_mlp = nn.Sequential(nn.Linear(hidden, channels), nn.ReLU(), nn.Linear(channels, channels))
        self.context_att = ChannelAtt(channels, channels)
        self.context_head = ConvBNAct(channels, channels, 3)
        self.smooth = ConvBNAct(channels, channels, 3, act=False)

    def features(self, sp: torch.Tensor, cp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two ConvBNReLU branch features (s_feat at sp's size, c_feat at cp's size)."""
        return self.spatial_att.conv_bn_relu(sp), self.context_att.conv_bn_relu(cp)

    def weights(self, s_gap: torch.Tensor, c_gap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Relation-aware channel weights (B, C, 1, 1) for both branches from their (B, C) means."""
        s_att = self.spatial_att.attention(s_gap)
        c_att = self.context_att.attention(c_gap)
        b, c = s_att.shape[:2]
        s_split = s_att.reshape(b, self.r, c // self.r)
        c_split = c_att.reshape(b, self.r, c // self.r)
        affinity = torch.bmm(s_split, c_split.transpose(1, 2)).reshape(b, -1)
        s_w = torch.sigmoid(s_att + self.g1 * F.relu(self.spatial_mlp(affinity)).reshape(b, c, 1, 1))
        c_w = torch.sigmoid(c_att + self.g2 * F.relu(self.context_mlp(affinity)).reshape(b, c, 1, 1))
        return s_w, c_w

    def merge(self, s_feat: torch.Tensor, s_w: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """smooth(s_feat * s_w + context_head(ctx)); ctx is the weighted context already on s_feat's grid."""
        return self.smooth(s_feat * s_w + self.context_head(ctx))

    def forward(self, sp: torch.Tensor, cp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole-map fusion (training): returns (fused, context branch after context_head, for the aux heads)."""
        s_feat, c_feat = self.features(sp, cp)
        s_w, c_w = self.weights(s_feat.mean(dim=(2, 3)), c_feat.mean(dim=(2, 3)))
        ctx = self.context_head(resize(c_feat * c_w, s_feat.shape[-2:]))
        return self.smooth(s_feat * s_w + ctx), ctx


class SRDecoder(nn.Module):
    """Training-only super-resolution decoder on deep_feat (nearest x4, x2, x2 -> 1/2 res, then 3-ch output)."""

    def __init__(self, channels: int = 128, ups: Sequence[int] = (4, 2, 2)):
        super().__init__()
        self.ups = tuple(ups)
        self.conv1 = ConvBNAct(channels, channels // 2, 3)
        self.conv2 = ConvBNAct(channels // 2, channels // 2, 3)
        self.conv3 = ConvBNAct(channels // 2, channels, 3)
        self.conv_sr = SegHead(channels, channels // 2, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv1(F.interpolate(x, scale_factor=self.ups[0], mode="nearest"))
        x = self.conv2(F.interpolate(x, scale_factor=self.ups[1], mode="nearest"))
        feats = self.conv3(F.interpolate(x, scale_factor=self.ups[2], mode="nearest"))
        return feats, self.conv_sr(feats)


# ------------------------------------------------------------------------------------------------------
# receptive fields (radius in input pixels, each side), derived from the modules themselves

def _conv_step(r: float, j: int, k: int, s: int = 1, d: int = 1) -> tuple[float, int]:
    return r + (k - 1) // 2 * d * j, j * s


def resnet_receptive_field(bb: ResNetV1c) -> tuple[int, int]:
    """(radius, jump) of layer4's output: the longest path (the residual conv chain) through every block."""
    r, j = 0.0, 1
    for m in bb.stem:
        if isinstance(m, nn.Conv2d):
            r, j = _conv_step(r, j, m.kernel_size[0], m.stride[0], m.dilation[0])
    r, j = _conv_step(r, j, 3, 2)  # maxpool 3x3/2
    for i in range(1, 5):
        for blk in getattr(bb, f"layer{i}"):
            convs = [blk.conv1, blk.conv2] + ([blk.conv3] if isinstance(blk, Bottleneck) else [])
            for c in convs:
                r, j = _conv_step(r, j, c.kernel_size[0], c.stride[0], c.dilation[0])
    return int(r), j


def _head_radius_cells(head: nn.Module) -> int:
    """Local reach of the deep head in c4 cells (its global pooling excluded)."""
    if isinstance(head, ASPPHead):
        return max(head.dilations) + 1  # largest atrous 3x3 + the 3x3 bottleneck
    return 1  # PSP: the 3x3 bottleneck (its bins are region averages, handled as non-local)


def upsample_reach(src_jump: int, dst_jump: int = 1) -> int:
    """Worst-case reach (input px) of a bilinear (align_corners=False) upsample between cell grids.

    Our strided convs centre cell i at i*jump input px, while bilinear
    resizing assumes centres at (i+0.5)*jump: the two grids are out of phase,
    so the reach is asymmetric and, for some output phases, exceeds one source
    cell (e.g. 11 px, not 8, for the final x8 upsample). Maximised over phases.
    """
    period = max(1, src_jump // dst_jump)
    return max(dst_jump * j - src_jump * math.floor((j + 0.5) * dst_jump / src_jump - 0.5)
               for j in range(2 * period + 2))


def shallow_receptive_field() -> int:
    """Radius (full-res px, worst side and phase) of an output pixel's dependence on the image via the shallow path.

    Deep features and the four GAP vectors are treated as given (the engine
    supplies them image-wide). Steps, as (kernel, stride) at the current jump:
      Laplacian input: h1 = x - up(blur(x)[::2]) reaches 2 + 2 = 4 px; h2 is the
        same at half resolution (4 half-px = 8 px, after a 2 px blur) = 10 px,
        then bilinear x2 to full res (+2 px): 12 px.
      ShallowNet: ConvX 3x3/2 (+1), ConvX 3x3/2 (+2), Cat/2: dw 3x3/2 (+4) and
        three 3x3 (+24), Cat: three 3x3 (+24) -> feat8 = 67 px, jump 8;
        Cat/2: dw 3x3/2 (+8), three 3x3 (+48); Cat: (+48) -> feat16 = 171, jump 16.
      fuse16: spatial 3x3 (+16), smooth 3x3 (+16) -> 203 at 1/16.
      fuse8: context 3x3 at 1/16 (+16), bilinear x2 (+16), context_head 3x3 (+8),
        smooth 3x3 (+8) -> 251 (the spatial side, 67 + 8, is shorter).
      classify: 3x3 ConvBNReLU (+8) -> 259; final bilinear x8 (+11, see
      upsample_reach) -> 270. The test checks this against autograd.
    """
    r = 10 + upsample_reach(2, 1)  # Laplacian residual input (h2 upsampled)
    r, j = _conv_step(r, 1, 3, 2)
    r, j = _conv_step(r, j, 3, 2)
    for stride in (2, 1):  # CatBottlenecks to 1/8: (dw 3x3/2) + three 3x3 each
        if stride == 2:
            r, j = _conv_step(r, j, 3, 2)
        for _ in range(3):
            r, j = _conv_step(r, j, 3)
    r8, j8 = r, j
    for stride in (2, 1):  # CatBottlenecks to 1/16
        if stride == 2:
            r, j = _conv_step(r, j, 3, 2)
        for _ in range(3):
            r, j = _conv_step(r, j, 3)
    r16 = r + 2 * j  # fuse16: spatial 3x3 + smooth 3x3
    ctx = r16 + j + upsample_reach(j, j8) + j8  # fuse8 context 3x3 at 1/16, up to 1/8, context_head 3x3
    r = max(ctx, r8 + j8) + j8  # smooth 3x3
    r += j8 + upsample_reach(j8, 1)  # conv_seg 3x3, final bilinear to full res
    return int(r)


# ------------------------------------------------------------------------------------------------------
class DeepPath:
    """The deep path ISDNet and the DeepLabV3 baselines share: a dilated ResNet and a head with image
    pooling on the image shrunk by `down_ratio` (nearest). uhrcli.inference.deep runs it once over a
    whole raster, tiled over the shrunk view where that is large, with the head's pooling image-wide.
    """

    down_ratio: int
    backbone: ResNetV1c
    decode_head: nn.Module

    def deep_input(self, x: torch.Tensor) -> torch.Tensor:
        """Nearest downsample to (H // r, W // r), as the official segmentor does."""
        if self.down_ratio == 1:
            return x
        h, w = x.shape[-2:]
        return F.interpolate(x, size=(h // self.down_ratio, w // self.down_ratio), mode="nearest")

    def deep_backbone(self, x_down: torch.Tensor) -> torch.Tensor:
        """c4: the last backbone map (512 ch for r18, 2048 for r50) at 1/8 of the shrunk input."""
        return self.backbone(x_down)[-1]

    def deep_pool(self, c4: torch.Tensor) -> torch.Tensor:
        """(B, C) sum over H, W of what the head's global pooling averages (c4 itself, for both heads)."""
        return self.decode_head.pool(c4)

    def deep_head(self, c4: torch.Tensor, pooled_mean: torch.Tensor | None = None) -> torch.Tensor:
        """deep_feat (B, 128, h, w); pooled_mean (B, C) replaces the local mean of the global pooling branch."""
        return self.decode_head.features(c4, pooled_mean)

    def deep_reach(self) -> dict[str, Any]:
        """What tiling the shrunk view needs: the backbone's reach (view px) and stride, the head's reach
        (c4 cells), and whether the head is local apart from its global mean (PSP's bins are not)."""
        radius, stride = resnet_receptive_field(self.backbone)
        return {"backbone_radius": radius, "backbone_stride": stride,
                "head_cells": _head_radius_cells(self.decode_head),
                "head_tileable": isinstance(self.decode_head, ASPPHead)}


# ------------------------------------------------------------------------------------------------------
def add_shallow_path(m: nn.Module, channels: int, num_classes: int, dropout: float,
                     deep_heads: Sequence[nn.Module] = ()) -> None:
    """ISDNet's full-resolution half onto m (mmseg: refine_head.*): the Laplacian residuals, the STDC shallow
    net, both Relation-Aware Fusions, the SR decoder and the heads, initialised after `deep_heads` (the deep
    path's heads with a conv_seg), in one fixed order so a seeded model gets the same weights. Every ISD graft
    (ResNet, PSP, SegFormer deep paths) shares it unchanged."""
    m.lap_pyramid = LaplacianPyramid(num_high=2)
    m.stdc_net = ShallowNet(in_channels=6)
    feat8_ch, feat16_ch = m.stdc_net.out_channels
    m.fuse16 = RelationAwareFusion(channels, ext=4, in_channels=feat16_ch)
    m.fuse8 = RelationAwareFusion(channels, ext=2, in_channels=feat8_ch)
    m.sr_decoder = SRDecoder(channels, (4, 2, 2))
    m.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
    m.conv_seg = SegHead(channels, channels // 2, num_classes)
    m.conv_seg_aux_16 = SegHead(channels, channels // 2, num_classes)
    m.conv_seg_aux_8 = SegHead(channels, channels // 2, num_classes)
    for part in (*deep_heads, m.fuse16, m.fuse8, m.sr_decoder, m.conv_seg, m.conv_seg_aux_16, m.conv_seg_aux_8):
        init_weights(part)
    for conv in (*(h.conv_seg for h in deep_heads), m.conv_seg.conv_out, m.conv_seg_aux_16.conv_out,
                 m.conv_seg_aux_8.conv_out):
        init_classifier(conv)


class ISDNet(DeepPath, nn.Module):
    """ISDNet with a pluggable deep head ('aspp' as in the paper's main model, or 'psp').

    Whole-image inference: `forward(x)` on a normalised (B, 3, H, W) tensor,
    any H and W. Training: `losses(x, target)` (official weights).
    """

    compile_targets = ("stdc_net",)  # the shallow branch: its cost, and tensors in and out (uhrcli.inference.compile)

    def __init__(self, num_classes: int = 2, backbone: str = "r18", deep_head: str = "aspp", down_ratio: int = 4,
                 channels: int = 128, dilations: Sequence[int] = (1, 12, 24, 36),
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1,
                 class_names: Sequence[str] | None = None, name: str | None = None, backbone_width: int = 64):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {backbone!r}")
        if deep_head not in ("aspp", "psp"):
            raise ValueError(f"deep_head must be 'aspp' or 'psp', got {deep_head!r}")
        self.num_classes, self.down_ratio, self.channels = num_classes, int(down_ratio), channels
        self.deep_head_type = deep_head
        # deep path (mmseg: backbone, decode_head, auxiliary_head)
        self.backbone = resnet_v1c_d8(BACKBONES[backbone], backbone_width)
        c3, c4 = self.backbone.out_channels[2], self.backbone.out_channels[3]
        if deep_head == "aspp":
            self.decode_head: ASPPHead | PSPHead = ASPPHead(c4, channels, num_classes, dilations, dropout)
        else:
            self.decode_head = PSPHead(c4, channels, num_classes, pool_scales, dropout)
        self.auxiliary_head = FCNHead(c3, c3 // 4, num_classes, dropout)  # 256->64 (r18), 1024->256 (r50)
        add_shallow_path(self, channels, num_classes, dropout, deep_heads=(self.decode_head, self.auxiliary_head))

        names = tuple(class_names) if class_names else (
            ("background", "building") if num_classes == 2 else tuple(f"class_{i}" for i in range(num_classes)))
        if len(names) != num_classes:
            raise ValueError(f"{len(names)} class names for {num_classes} classes")
        bb_r, bb_j = resnet_receptive_field(self.backbone)
        deep_cells = _head_radius_cells(self.decode_head)
        deep_rf_shrunk = bb_r + deep_cells * bb_j
        deep_stride = self.down_ratio * bb_j
        self.info = ModelInfo(
            name=name or f"isdnet-{backbone}" + ("-psp" if deep_head == "psp" else ""),
            num_classes=num_classes, class_names=names, palette=default_palette(num_classes),
            mean=IMAGENET_MEAN, std=IMAGENET_STD,
            receptive_field=shallow_receptive_field(), size_multiple=deep_stride, two_scale=True,
            extra={
                "down_ratio": self.down_ratio,
                "deep_stride": deep_stride,
                # deep_feat's reach in full-res px (local part; the head's global pooling excluded)
                "deep_receptive_field": deep_rf_shrunk * self.down_ratio,
                "deep_head": deep_head,
                # c4 cells of context a tile of the deep head needs (exact for ASPP: dilation 36 + bottleneck)
                "deep_head_halo_cells": deep_cells,
                # PSP's 2/3/6 bins depend on the whole c4 map: the head must see the whole map
                "deep_head_tileable": deep_head == "aspp",
            },
        )

    # -- the bi-path protocol: uhrcli.inference.bipath drives these stages tile by tile ----------------
    # Every stage is local (fully convolutional) given the image-wide vectors it takes as arguments;
    # the non-local parts (global means, resizes between scales) are left to the caller, which takes
    # them over the whole image. forward() below is composed of exactly these calls.
    def deep_context(self, deep_feat: torch.Tensor) -> torch.Tensor:
        """fuse16's context branch (3x3 ConvBNReLU) on the deep map: c16, whose mean fuse16 pools."""
        return self.fuse16.context_att.conv_bn_relu(deep_feat)

    def shallow(self, x: torch.Tensor, place: Placement | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Laplacian residuals of the normalised full-res image/tile -> (feat8 256 ch 1/8, feat16 512 ch 1/16)."""
        return self.stdc_net(self.lap_pyramid.shallow_input(x, place))

    def spatial8(self, feat8: torch.Tensor) -> torch.Tensor:
        """fuse8's spatial branch (3x3 ConvBNReLU): s8, whose mean fuse8 pools."""
        return self.fuse8.spatial_att.conv_bn_relu(feat8)

    def spatial16(self, feat16: torch.Tensor) -> torch.Tensor:
        """fuse16's spatial branch: s16, whose mean fuse16 pools."""
        return self.fuse16.spatial_att.conv_bn_relu(feat16)

    def fusion_weights(self, level: int, s_gap: torch.Tensor, c_gap: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """(spatial, context) channel weights (B, C, 1, 1) of fuse16 or fuse8 from image-wide means (B, C)."""
        return (self.fuse16 if level == 16 else self.fuse8).weights(s_gap, c_gap)

    def fuse16_context(self, s16: torch.Tensor, ctx16: torch.Tensor, s_w16: torch.Tensor) -> torch.Tensor:
        """f16 = fuse16(s16, ctx16), then fuse8's context branch on it: c8 (1/16 grid).

        ctx16 is fuse16's weighted context (c16 * c_w16) resized onto s16's grid.
        """
        return self.fuse8.context_att.conv_bn_relu(self.fuse16.merge(s16, s_w16, ctx16))

    def fuse8_logits(self, s8: torch.Tensor, ctx8: torch.Tensor, s_w8: torch.Tensor) -> torch.Tensor:
        """Logits at 1/8 from s8 and fuse8's weighted context (c8 * c_w8) resized onto s8's grid."""
        return self.classify(self.fuse8.merge(s8, s_w8, ctx8))

    def classify(self, f8: torch.Tensor) -> torch.Tensor:
        """Logits at 1/8 (Dropout2d, inactive in eval, then the 3x3+1x1 head)."""
        return self.conv_seg(self.dropout(f8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Whole-image inference: (B, 3, H, W) normalised -> logits (B, K, H, W). Training uses losses()."""
        deep = self.deep_head(self.deep_backbone(self.deep_input(x)))
        feat8, feat16 = self.shallow(x)
        s8, s16 = self.spatial8(feat8), self.spatial16(feat16)
        c16 = self.deep_context(deep)
        s_w16, c_w16 = self.fusion_weights(16, s16.mean(dim=(2, 3)), c16.mean(dim=(2, 3)))
        c8 = self.fuse16_context(s16, resize(c16 * c_w16, s16.shape[-2:]), s_w16)
        s_w8, c_w8 = self.fusion_weights(8, s8.mean(dim=(2, 3)), c8.mean(dim=(2, 3)))
        logits = self.fuse8_logits(s8, resize(c8 * c_w8, s8.shape[-2:]), s_w8)
        return resize(logits, x.shape[-2:])

    # -- training ---------------------------------------------------------------------------------------
    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every training output: logits of the five heads, deep_feat, SR features/output, residual sum."""
        feats = self.backbone(self.deep_input(x))
        deep_feat = self.decode_head.features(feats[3])
        inp = self.lap_pyramid.shallow_input(x)
        feat8, feat16 = self.stdc_net(inp)
        f16, ctx16 = self.fuse16(feat16, deep_feat)
        f8, ctx8 = self.fuse8(feat8, f16)
        sr_feats, sr_out = self.sr_decoder(deep_feat)
        return {
            "seg": self.classify(f8),
            "aspp": self.decode_head.cls_seg(deep_feat),
            # the official code swaps the names: aux_16 classifies fuse8's context, aux_8 fuse16's
            "aux16": self.conv_seg_aux_16(ctx8),
            "aux8": self.conv_seg_aux_8(ctx16),
            "fcn_aux": self.auxiliary_head(feats[2]),
            "deep_feat": deep_feat,
            "sr_feats": sr_feats,
            "sr_out": sr_out,
            "residual_sum": inp[:, :3] + inp[:, 3:],
        }

    def load_backbone_weights(self, path: str) -> dict[str, Any]:
        """ImageNet ResNet weights (torchvision layout) into the deep branch; `uhr train --backbone-weights`."""
        return load_backbone_weights(self, path)

    def losses(self, x: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX
               ) -> dict[str, torch.Tensor]:
        """Weighted official losses plus 'loss' (their sum). target: (B, H, W) class ids, 255 ignored.

        Names vs the official log: loss_aspp = decode.loss_seg, loss_seg = refine.loss_seg,
        loss_aux16/aux8 = aux_1/aux_2.loss_seg, loss_recon = aux_3.recon_losses,
        loss_fa = aux_4.fa_loss, loss_fcn_aux = aux.loss_seg.
        Batch size 1 works: the BNs on pooled 1x1 maps fall back to running
        statistics when a channel has a single value (PooledBatchNorm2d).
        """
        if target.ndim == 4:
            target = target[:, 0]
        out = self.forward_train(x)
        w = LOSS_WEIGHTS
        losses = {
            "loss_aspp": seg_ce(out["aspp"], target, w["loss_aspp"], ignore_index),
            **self.shallow_losses(out, target, ignore_index),
            "loss_fcn_aux": seg_ce(out["fcn_aux"], target, w["loss_fcn_aux"], ignore_index),
        }
        losses["loss"] = sum(losses.values())  # type: ignore[assignment]
        return losses

    @staticmethod
    def shallow_losses(out: dict[str, torch.Tensor], target: torch.Tensor, ignore_index: int = IGNORE_INDEX
                       ) -> dict[str, torch.Tensor]:
        """The losses of ISDNet's full-resolution half (refine head, its two auxiliaries, the SR decoder's
        reconstruction and feature affinity), shared by every ISD graft whatever its deep path."""
        w = LOSS_WEIGHTS
        return {
            "loss_seg": seg_ce(out["seg"], target, w["loss_seg"], ignore_index),
            "loss_aux16": seg_ce(out["aux16"], target, w["loss_aux16"], ignore_index),
            "loss_aux8": seg_ce(out["aux8"], target, w["loss_aux8"], ignore_index),
            "loss_recon": recon_loss(out["sr_out"], out["residual_sum"], w["loss_recon"]),
            "loss_fa": feature_affinity_loss(out["deep_feat"], out["sr_feats"], w["loss_fa"]),
        }


# ------------------------------------------------------------------------------------------------------
class DecodeAuxBaseline:
    """What the deep-path-alone baselines (DeepLabV3, PSPNet) share: a decode head with a 1x1 classifier
    (`cls_seg`) on the backbone's last map, an FCN auxiliary head on layer3 for training, mmseg's losses."""

    def deep_logits(self, deep_feat: torch.Tensor) -> torch.Tensor:
        """The head's classifier (1x1) on deep_feat: logits at 1/8 of the shrunk image."""
        return self.decode_head.cls_seg(deep_feat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.deep_head(self.deep_backbone(self.deep_input(x)))
        return resize(self.deep_logits(feat), x.shape[-2:])

    def load_backbone_weights(self, path: str) -> dict[str, Any]:
        """ImageNet ResNet weights (torchvision or mmseg layout) into the backbone; `uhr train --backbone-weights`."""
        return load_backbone_weights(self, path)

    def losses(self, x: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX
               ) -> dict[str, torch.Tensor]:
        """mmseg's DeepLabV3 and PSPNet: CE 1.0 on the decode head's logits + 0.4 on the FCN auxiliary head."""
        if target.ndim == 4:
            target = target[:, 0]
        feats = self.backbone(self.deep_input(x))
        out = {"loss_seg": seg_ce(self.decode_head.cls_seg(self.decode_head.features(feats[3])), target, 1.0,
                                  ignore_index),
               "loss_fcn_aux": seg_ce(self.auxiliary_head(feats[2]), target, 0.4, ignore_index)}
        out["loss"] = out["loss_seg"] + out["loss_fcn_aux"]
        return out


class DeepLabV3(DecodeAuxBaseline, DeepPath, nn.Module):
    """Baseline: dilated ResNet V1c (d8) + ASPP, optionally on the image shrunk by `down_ratio` (nearest).

    Output logits are upsampled bilinearly to the input size. With
    down_ratio=4 this is exactly ISDNet's deep path used alone.
    """

    def __init__(self, num_classes: int = 2, backbone: str = "r18", down_ratio: int = 1, channels: int = 128,
                 dilations: Sequence[int] = (1, 12, 24, 36), dropout: float = 0.1,
                 class_names: Sequence[str] | None = None, name: str = "deeplabv3-r18"):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {backbone!r}")
        self.down_ratio = int(down_ratio)
        self.backbone = resnet_v1c_d8(BACKBONES[backbone])
        c3, c4 = self.backbone.out_channels[2], self.backbone.out_channels[3]
        self.decode_head = ASPPHead(c4, channels, num_classes, dilations, dropout)
        self.auxiliary_head = FCNHead(c3, c3 // 4, num_classes, dropout)
        init_weights(self.decode_head)
        init_weights(self.auxiliary_head)
        init_classifier(self.decode_head.conv_seg)
        init_classifier(self.auxiliary_head.conv_seg)
        names = tuple(class_names) if class_names else (
            ("background", "building") if num_classes == 2 else tuple(f"class_{i}" for i in range(num_classes)))
        bb_r, bb_j = resnet_receptive_field(self.backbone)
        local = bb_r + _head_radius_cells(self.decode_head) * bb_j  # px of the (shrunk) input
        rf = local * self.down_ratio + upsample_reach(bb_j * self.down_ratio)  # + the final bilinear upsample
        self.info = ModelInfo(
            name=name, num_classes=num_classes, class_names=names, palette=default_palette(num_classes),
            mean=IMAGENET_MEAN, std=IMAGENET_STD, receptive_field=int(rf), size_multiple=bb_j * self.down_ratio,
            extra={"down_ratio": self.down_ratio,
                   # ASPP image pooling averages the whole map: tiles see a local mean instead
                   "global_pooling": True},
        )


# ------------------------------------------------------------------------------------------------------
@register_model("isdnet-r18")
def isdnet_r18(num_classes: int = 2, **kw: Any) -> ISDNet:
    """Paper configuration (DeepGlobe/Inria): ResNet-18 d8 + ASPP deep path, down_ratio 4."""
    return ISDNet(num_classes=num_classes, backbone="r18", deep_head="aspp", name="isdnet-r18", **kw)


@register_model("isdnet-r50")
def isdnet_r50(num_classes: int = 2, **kw: Any) -> ISDNet:
    """ResNet-50 d8 deep path; the deep head keeps 128 channels so deep_feat's contract is unchanged."""
    return ISDNet(num_classes=num_classes, backbone="r50", deep_head="aspp", name="isdnet-r50", **kw)


@register_model("isdnet-r18-psp")
def isdnet_r18_psp(num_classes: int = 2, **kw: Any) -> ISDNet:
    """ISD grafted onto PSPNet (pyramid pooling deep head), as in the paper's generality study."""
    return ISDNet(num_classes=num_classes, backbone="r18", deep_head="psp", name="isdnet-r18-psp", **kw)


@register_model("isdnet-r18-slim")
def isdnet_r18_slim(num_classes: int = 2, **kw: Any) -> ISDNet:
    """ISDNet with a 3/8-width ResNet-18 deep path and 64-channel fusion: the same graph at ~1/4 of the
    parameters, small enough to ship as a demo checkpoint."""
    kw.setdefault("backbone_width", 24)
    kw.setdefault("channels", 64)
    return ISDNet(num_classes=num_classes, backbone="r18", deep_head="aspp", name="isdnet-r18-slim", **kw)


@register_model("deeplabv3-r18")
def deeplabv3_r18(num_classes: int = 2, **kw: Any) -> DeepLabV3:
    """Full-resolution DeepLabV3 baseline (ResNet-18 d8)."""
    return DeepLabV3(num_classes=num_classes, down_ratio=1, name="deeplabv3-r18", **kw)


@register_model("deeplabv3-r18-down4")
def deeplabv3_r18_down4(num_classes: int = 2, **kw: Any) -> DeepLabV3:
    """DeepLabV3 on the 1/4 image (ISDNet's deep path alone), logits upsampled to full size."""
    return DeepLabV3(num_classes=num_classes, down_ratio=4, name="deeplabv3-r18-down4", **kw)
