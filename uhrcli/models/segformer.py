"""SegFormer-B0 (Xie et al., NeurIPS 2021): the MiT-B0 encoder and the all-MLP decode head, plain torch.

MiT-B0: four stages of overlapping patch embeddings (7x7/4, then 3x3/2; 32,
64, 160, 256 channels), 2 transformer blocks each with efficient self-attention
(1, 2, 5, 8 heads; keys and values from the map shrunk by a strided conv with
spatial-reduction ratios 8, 4, 2, 1) and a Mix-FFN (1x1, 3x3 depthwise, GELU,
1x1; ratio 4). The head projects every stage to 256 channels (1x1 ConvBNReLU),
resizes them to 1/4, concatenates and fuses them (1x1 ConvBNReLU) and
classifies with a 1x1 conv.

Image-wide ops: every attention layer. A query attends to keys from the WHOLE
(shrunk) map (stage 4 at full resolution of its grid), so no output pixel has a
bounded receptive field and tiled inference with a halo could never be exact.
The model therefore speaks the deep-path protocol (deep_input, deep_backbone,
deep_head, deep_logits): `uhr segment` runs the network once over the whole
(shrunk) raster and resamples tiles from its 1/4 logits, which equals the
whole-image forward. A raster whose (shrunk) view is larger than the one-pass
limit of uhrcli.inference.deep (DEEP_WHOLE_MAX view pixels) is refused with
one line naming that limit (`deep_reach()["backbone_tileable"]` is False).

Module and parameter names follow mmseg's MixVisionTransformer and
SegformerHead (backbone.layers.i.0 patch embed, .1.j blocks, .2 norm;
attn.attn.in_proj_weight, ffn.layers.0/1/4; decode_head.convs.i, fusion_conv,
conv_seg), so official mmseg checkpoints load with `load_state_dict`.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CheckpointError
from .base import ModelInfo, default_palette
from .isdnet import ISDNet, add_shallow_path, shallow_receptive_field
from .isdnet_losses import IGNORE_INDEX, LOSS_WEIGHTS, seg_ce
from .layers import ConvBNAct, init_classifier, init_weights, resize
from .registry import register_model

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
MIT_B0 = {"embed_dims": 32, "num_layers": (2, 2, 2, 2), "num_heads": (1, 2, 5, 8), "patch_sizes": (7, 3, 3, 3),
          "strides": (4, 2, 2, 2), "sr_ratios": (8, 4, 2, 1), "mlp_ratio": 4}
LN_EPS = 1e-6  # MiT's LayerNorms (mmseg norm_cfg=dict(type='LN', eps=1e-6))


def _to_nchw(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], hw[0], hw[1])


def _to_nlc(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


class DropPath(nn.Module):
    """Stochastic depth on the residual branch (training only)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class PatchEmbed(nn.Module):
    """Overlapping patch embedding: conv k x k / s with padding k // 2, then LayerNorm (keys projection, norm)."""

    def __init__(self, in_ch: int, dim: int, kernel: int, stride: int):
        super().__init__()
        self.projection = nn.Conv2d(in_ch, dim, kernel, stride, kernel // 2)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.projection(x)
        hw = (x.shape[2], x.shape[3])
        return self.norm(_to_nlc(x)), hw


class MHA(nn.Module):
    """nn.MultiheadAttention's parameters (in_proj_weight/bias, out_proj) computed with
    scaled_dot_product_attention, whose CPU and CUDA kernels do not materialise the
    N x M attention matrix (stage 1 at 1024 x 2048 has 131k queries and 2048 keys)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        b, n, c = q.shape
        w_q, w_kv = self.in_proj_weight[:c], self.in_proj_weight[c:]
        b_q, b_kv = self.in_proj_bias[:c], self.in_proj_bias[c:]
        h, d = self.heads, c // self.heads
        q = F.linear(q, w_q, b_q).reshape(b, n, h, d).transpose(1, 2)
        k, v = F.linear(kv, w_kv, b_kv).reshape(b, kv.shape[1], 2, h, d).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


class EfficientAttention(nn.Module):
    """Self-attention with keys/values from the map reduced by a conv sr x sr / sr + LayerNorm (sr > 1).

    Image-wide: every query sees every (reduced) key of the whole map."""

    def __init__(self, dim: int, heads: int, sr_ratio: int):
        super().__init__()
        self.sr_ratio = sr_ratio
        self.attn = MHA(dim, heads)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=LN_EPS)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        kv = x
        if self.sr_ratio > 1:
            kv = self.norm(_to_nlc(self.sr(_to_nchw(x, hw))))
        return self.attn(x, kv)


class MixFFN(nn.Module):
    """1x1 conv -> 3x3 depthwise conv (the positional information) -> GELU -> 1x1 conv (keys layers.0/1/4)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden),
                                    nn.GELU(), nn.Dropout(0.0), nn.Conv2d(hidden, dim, 1), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        return _to_nlc(self.layers(_to_nchw(x, hw)))


class Block(nn.Module):
    """x + attn(norm1(x)), then x + ffn(norm2(x)), each residual branch with stochastic depth."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, sr_ratio: int, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = EfficientAttention(dim, heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.ffn = MixFFN(dim, dim * mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.ffn(self.norm2(x), hw))


class MixVisionTransformer(nn.Module):
    """MiT encoder: returns the four stage maps (B, C_i, H / 4 / 2^i, W / 4 / 2^i), i = 0..3 (ceil sizes)."""

    def __init__(self, in_channels: int = 3, embed_dims: int = 32, num_layers: Sequence[int] = (2, 2, 2, 2),
                 num_heads: Sequence[int] = (1, 2, 5, 8), patch_sizes: Sequence[int] = (7, 3, 3, 3),
                 strides: Sequence[int] = (4, 2, 2, 2), sr_ratios: Sequence[int] = (8, 4, 2, 1),
                 mlp_ratio: int = 4, drop_path_rate: float = 0.1):
        super().__init__()
        dpr = torch.linspace(0, drop_path_rate, sum(num_layers)).tolist()
        self.out_channels: list[int] = []
        self.layers = nn.ModuleList()
        cur, ch = 0, in_channels
        for i, n in enumerate(num_layers):
            dim = embed_dims * num_heads[i]
            blocks = nn.ModuleList(Block(dim, num_heads[i], mlp_ratio, sr_ratios[i], dpr[cur + j]) for j in range(n))
            self.layers.append(nn.ModuleList([PatchEmbed(ch, dim, patch_sizes[i], strides[i]), blocks,
                                              nn.LayerNorm(dim, eps=LN_EPS)]))
            self.out_channels.append(dim)
            cur, ch = cur + n, dim
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, std=(2.0 / fan_out) ** 0.5)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for embed, blocks, norm in self.layers:  # type: ignore[misc]
            x, hw = embed(x)
            for blk in blocks:
                x = blk(x, hw)
            x = _to_nchw(norm(x), hw)
            outs.append(x)
        return outs


class SegformerHead(nn.Module):
    """All-MLP decoder: 1x1 ConvBNReLU per stage to `channels`, bilinear to 1/4, concat, 1x1 ConvBNReLU fuse."""

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.convs = nn.ModuleList(ConvBNAct(c, channels, 1) for c in in_channels)
        self.fusion_conv = ConvBNAct(channels * len(in_channels), channels, 1)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        init_weights(self)
        init_classifier(self.conv_seg)

    def features(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[-2:]
        return self.fusion_conv(torch.cat([resize(conv(f), size) for conv, f in zip(self.convs, feats)], dim=1))

    def cls_seg(self, feat: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(feat))


def names_for(num_classes: int, class_names: Sequence[str] | None) -> tuple[str, ...]:
    names = tuple(class_names) if class_names else (
        ("background", "building") if num_classes == 2 else tuple(f"class_{i}" for i in range(num_classes)))
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes")
    return names


class SegFormerDeep:
    """The deep-path protocol (see uhrcli.inference.deep) for a MiT encoder + SegformerHead: the whole
    network is one image-wide pass, so 'c4' is the head's fused 1/4 map and the head stage is the identity."""

    down_ratio: int
    backbone: MixVisionTransformer
    decode_head: SegformerHead

    def deep_input(self, x: torch.Tensor) -> torch.Tensor:
        """Nearest downsample to (H // r, W // r) (as uhrcli.inference.deep's shrunk view)."""
        if self.down_ratio == 1:
            return x
        h, w = x.shape[-2:]
        return F.interpolate(x, size=(h // self.down_ratio, w // self.down_ratio), mode="nearest")

    def deep_backbone(self, x_down: torch.Tensor) -> torch.Tensor:
        """MiT + the head's MLP fusion: (B, channels, ceil(h / 4), ceil(w / 4)) of the shrunk image."""
        return self.decode_head.features(self.backbone(x_down))

    def deep_pool(self, feat: torch.Tensor) -> torch.Tensor:
        """Nothing is pooled after the fusion (the attention was image-wide already): a zero (B, C) sum."""
        return feat.new_zeros(feat.shape[:2])

    def deep_head(self, feat: torch.Tensor, pooled_mean: torch.Tensor | None = None) -> torch.Tensor:
        return feat

    def deep_reach(self) -> dict[str, Any]:
        """Attention reaches the whole map: the view cannot be tiled (uhrcli.inference.deep refuses)."""
        return {"backbone_radius": None, "backbone_stride": 4, "head_cells": 0, "head_tileable": False,
                "backbone_tileable": False, "image_wide": "efficient self-attention (every stage)"}

    def load_backbone_weights(self, path: str) -> dict[str, Any]:
        """`uhr train --backbone-weights`: mmseg MiT weights (bare `layers.*` or `backbone.layers.*` keys)."""
        return load_mit_weights(self.backbone, path)


def load_mit_weights(backbone: MixVisionTransformer, path: str) -> dict[str, Any]:
    from .checkpoint import load_checkpoint

    state, _ = load_checkpoint(path)
    state = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in state.items()}
    state = {k: v for k, v in state.items() if k.startswith("layers.")}
    own = backbone.state_dict()
    bad = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if not state or bad:
        raise CheckpointError(f"{path}: not MiT weights of this width ({len(state)} layers.* keys, "
                              f"{len(bad)} of another shape)")
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if missing:
        raise CheckpointError(f"{path}: {len(missing)} MiT keys missing, e.g. {missing[0]}")
    return {"loaded": len(state), "unexpected": len(unexpected), "source": str(path)}


class SegFormer(SegFormerDeep, nn.Module):
    """SegFormer (MiT encoder + all-MLP head), optionally on the image shrunk by `down_ratio` (nearest),
    logits upsampled bilinearly from 1/4 of the (shrunk) image to the input size. See the module docstring
    for the image-wide attention and how `uhr segment` handles it."""

    def __init__(self, num_classes: int = 2, down_ratio: int = 1, channels: int = 256, dropout: float = 0.1,
                 drop_path_rate: float = 0.1, class_names: Sequence[str] | None = None,
                 name: str = "segformer-b0", **mit: Any):
        super().__init__()
        self.down_ratio = int(down_ratio)
        self.backbone = MixVisionTransformer(**{**MIT_B0, **mit}, drop_path_rate=drop_path_rate)
        self.decode_head = SegformerHead(self.backbone.out_channels, channels, num_classes, dropout)
        names = names_for(num_classes, class_names)
        self.info = ModelInfo(
            name=name, num_classes=num_classes, class_names=names, palette=default_palette(num_classes),
            mean=IMAGENET_MEAN, std=IMAGENET_STD, receptive_field=0, size_multiple=1,
            extra={"down_ratio": self.down_ratio, "image_wide": "efficient self-attention (every stage)",
                   "deep_channels": channels, "logit_stride": 4 * self.down_ratio},
        )

    def deep_logits(self, feat: torch.Tensor) -> torch.Tensor:
        """Logits at 1/4 of the shrunk image (Dropout2d, inactive in eval, then the 1x1 classifier)."""
        return self.decode_head.cls_seg(feat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised -> logits (B, K, H, W); the stages uhrcli.inference.deep runs."""
        feat = self.deep_head(self.deep_backbone(self.deep_input(x)))
        return resize(self.deep_logits(feat), x.shape[-2:])

    def losses(self, x: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX
               ) -> dict[str, torch.Tensor]:
        """mmseg SegFormer: one cross-entropy (weight 1.0) on the head's logits; no auxiliary head."""
        if target.ndim == 4:
            target = target[:, 0]
        loss = seg_ce(self.deep_logits(self.deep_backbone(self.deep_input(x))), target, 1.0, ignore_index)
        return {"loss_seg": loss, "loss": loss}


@register_model("segformer-b0")
def segformer_b0(num_classes: int = 2, **kw: Any) -> SegFormer:
    """SegFormer-B0 at full resolution (MiT-B0, 256-channel all-MLP head)."""
    return SegFormer(num_classes=num_classes, down_ratio=1, name="segformer-b0", **kw)


@register_model("segformer-b0-down2")
def segformer_b0_down2(num_classes: int = 2, **kw: Any) -> SegFormer:
    """SegFormer-B0 on the 1/2 image (ISDNet Table 4), logits upsampled to full size."""
    return SegFormer(num_classes=num_classes, down_ratio=2, name="segformer-b0-down2", **kw)


@register_model("segformer-b0-down4")
def segformer_b0_down4(num_classes: int = 2, **kw: Any) -> SegFormer:
    """SegFormer-B0 on the 1/4 image (ISDNet Table 4), logits upsampled to full size."""
    return SegFormer(num_classes=num_classes, down_ratio=4, name="segformer-b0-down4", **kw)


# ------------------------------------------------------------------------------------------------------
class ISDNetSegFormer(SegFormerDeep, ISDNet):
    """ISDNet with SegFormer-B0 as the deep path (the paper's Table 4 'Segformer-b0 + ISD').

    As the official config (cedricgsh/ISDNet, segformer_mit-b0_512x1024_cityscapes_160k_refine.py):
    MiT-B0 on the image shrunk by 4, a SegformerHead with 128 channels whose fused 1/4 map is deep_feat
    (so 1/16 of full resolution, where the ResNet deep path gives 1/32), no FCN auxiliary head; the
    shallow path (STDC on Laplacian residuals), both Relation-Aware Fusions (prev_channels 128), the SR
    decoder and the heads are ISDNet's, unchanged. Image-wide ops: the deep path's attention (run once
    over the whole shrunk raster) and the fusions' channel means (taken image-wide by the bi-path inferer).
    """

    def __init__(self, num_classes: int = 2, down_ratio: int = 4, channels: int = 128, dropout: float = 0.1,
                 drop_path_rate: float = 0.1, class_names: Sequence[str] | None = None,
                 name: str = "isdnet-segformer-b0"):
        nn.Module.__init__(self)
        self.num_classes, self.down_ratio, self.channels = num_classes, int(down_ratio), channels
        self.deep_head_type = "segformer"
        self.backbone = MixVisionTransformer(**MIT_B0, drop_path_rate=drop_path_rate)
        self.decode_head = SegformerHead(self.backbone.out_channels, channels, num_classes, dropout)
        add_shallow_path(self, channels, num_classes, dropout)  # ISDNet's, unchanged (mmseg refine_head.*)
        deep_stride = 4 * self.down_ratio
        self.info = ModelInfo(
            name=name, num_classes=num_classes, class_names=names_for(num_classes, class_names),
            palette=default_palette(num_classes), mean=IMAGENET_MEAN, std=IMAGENET_STD,
            receptive_field=shallow_receptive_field(), size_multiple=deep_stride, two_scale=True,
            extra={"down_ratio": self.down_ratio, "deep_stride": deep_stride, "deep_head": "segformer",
                   "deep_head_tileable": False, "deep_channels": channels,
                   "image_wide": "deep path: efficient self-attention (every stage); fusions: channel means"},
        )

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """ISDNet's training outputs with the SegFormer deep path (no FCN auxiliary head)."""
        deep_feat = self.decode_head.features(self.backbone(self.deep_input(x)))
        inp = self.lap_pyramid.shallow_input(x)
        feat8, feat16 = self.stdc_net(inp)
        f16, ctx16 = self.fuse16(feat16, deep_feat)
        f8, ctx8 = self.fuse8(feat8, f16)
        sr_feats, sr_out = self.sr_decoder(deep_feat)
        return {"seg": self.classify(f8), "deep": self.decode_head.cls_seg(deep_feat),
                "aux16": self.conv_seg_aux_16(ctx8), "aux8": self.conv_seg_aux_8(ctx16),
                "deep_feat": deep_feat, "sr_feats": sr_feats, "sr_out": sr_out,
                "residual_sum": inp[:, :3] + inp[:, 3:]}

    def losses(self, x: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX
               ) -> dict[str, torch.Tensor]:
        """ISDNet's official losses, the deep head's CE (weight 1.0) as loss_deep, no loss_fcn_aux."""
        if target.ndim == 4:
            target = target[:, 0]
        out = self.forward_train(x)
        w = LOSS_WEIGHTS
        losses = {
            "loss_deep": seg_ce(out["deep"], target, w["loss_aspp"], ignore_index),
            **self.shallow_losses(out, target, ignore_index),
        }
        losses["loss"] = sum(losses.values())  # type: ignore[assignment]
        return losses


@register_model("isdnet-segformer-b0")
def isdnet_segformer_b0(num_classes: int = 2, **kw: Any) -> ISDNetSegFormer:
    """ISDNet, deep path SegFormer-B0 (128-ch head) on the 1/4 image; shallow path and fusion unchanged."""
    return ISDNetSegFormer(num_classes=num_classes, **kw)
