"""BiSeNetV1 (Yu et al., ECCV 2018) and BiSeNetV2 (Yu et al., IJCV 2021), in mmseg's layout.

Both are the Cityscapes baselines of ISDNet's Table 3 (mmseg `bisenetv1_r18-d32` and
`bisenetv2_fcn`). Module names follow mmseg (`backbone.context_path...`, `decode_head.convs.0`,
`auxiliary_head.N`), so an official mmseg checkpoint's `state_dict` loads as it is.

Image-wide operations (why these run through the 'deep' protocol, see `wholeimage.py`):
  - BiSeNetV1: the context path's `gap_conv` (global mean of the 1/32 map), the attention vectors of
    `arm32` and `arm16` (global means at 1/32 and 1/16), and the fusion module's attention (global
    mean at 1/8);
  - BiSeNetV2: the context-embedding block (`stage4_CEBlock`: global mean + BN at 1/32).
Everything else is local. Logits come out at 1/8 and are upsampled bilinearly (align_corners=False).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .aspp import FCNHead
from .base import ModelInfo, default_palette
from .isdnet import IMAGENET_MEAN, IMAGENET_STD
from .isdnet_losses import IGNORE_INDEX, seg_ce
from .layers import ConvBNAct, PooledBatchNorm2d, init_classifier, init_weights, resize
from .registry import register_model
from .resnet import ResNetV1c
from .wholeimage import WholeImageModel, class_names_for


class ResNetV1b(ResNetV1c):
    """mmseg's plain `ResNet` (7x7 stem: keys conv1, bn1) with the stages of ResNetV1c."""

    def __init__(self, depth: int = 18, **kw: Any):
        super().__init__(depth, **kw)
        del self.stem
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            outs.append(x)
        return outs


# ------------------------------------------------------------------------------------------------------
# BiSeNetV1

class SpatialPath(nn.Module):
    """7x7/2, 3x3/2, 3x3/2, 1x1 ConvBNReLUs: 1/8 of the input, 128 channels (keys layer1..layer4)."""

    def __init__(self, channels: Sequence[int] = (64, 64, 64, 128)):
        super().__init__()
        c = channels
        self.layer1 = ConvBNAct(3, c[0], 7, 2)
        self.layer2 = ConvBNAct(c[0], c[1], 3, 2)
        self.layer3 = ConvBNAct(c[1], c[2], 3, 2)
        self.layer4 = ConvBNAct(c[2], c[3], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class AttentionRefinement(nn.Module):
    """ARM: 3x3 ConvBNReLU, then a sigmoid channel gate from its global mean (1x1 conv + BN)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv_layer = ConvBNAct(in_ch, out_ch, 3)
        self.atten_conv_layer = nn.Sequential(nn.AdaptiveAvgPool2d(1),
                                              ConvBNAct(out_ch, out_ch, 1, act=False, pooled=True), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_layer(x)
        return x * self.atten_conv_layer(x)


class ContextPath(nn.Module):
    """ResNet-18 (stride 32) with ARMs at 1/16 and 1/32 and the global context vector; returns (1/8, 1/16)."""

    def __init__(self, channels: Sequence[int] = (128, 256, 512)):
        super().__init__()
        c = channels
        self.backbone = ResNetV1b(18)
        self.arm16 = AttentionRefinement(c[1], c[0])
        self.arm32 = AttentionRefinement(c[2], c[0])
        self.conv_head32 = ConvBNAct(c[0], c[0], 3)
        self.conv_head16 = ConvBNAct(c[0], c[0], 3)
        self.gap_conv = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBNAct(c[2], c[0], 1, pooled=True))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, x8, x16, x32 = self.backbone(x)
        x32_sum = self.arm32(x32) + self.gap_conv(x32)
        x32_up = self.conv_head32(F.interpolate(x32_sum, size=x16.shape[-2:], mode="nearest"))
        x16_sum = self.arm16(x16) + x32_up
        x16_up = self.conv_head16(F.interpolate(x16_sum, size=x8.shape[-2:], mode="nearest"))
        return x16_up, x32_up


class FeatureFusion(nn.Module):
    """FFM: 1x1 ConvBNReLU on [spatial, context], plus itself gated by a sigmoid of its global mean."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = ConvBNAct(in_ch, out_ch, 1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.conv_atten = nn.Sequential(ConvBNAct(out_ch, out_ch, 1, pooled=True), nn.Sigmoid())

    def forward(self, x_sp: torch.Tensor, x_cp: torch.Tensor) -> torch.Tensor:
        fuse = self.conv1(torch.cat([x_sp, x_cp], dim=1))
        return fuse * self.conv_atten(self.gap(fuse)) + fuse


class BiSeNetV1Backbone(nn.Module):
    def __init__(self, spatial_channels: Sequence[int] = (64, 64, 64, 128),
                 context_channels: Sequence[int] = (128, 256, 512), out_channels: int = 256):
        super().__init__()
        self.context_path = ContextPath(context_channels)
        self.spatial_path = SpatialPath(spatial_channels)
        self.ffm = FeatureFusion(context_channels[1], out_channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(fused 1/8, context 1/8, context 1/16): mmseg's out_indices (0, 1, 2)."""
        c8, c16 = self.context_path(x)
        return self.ffm(self.spatial_path(x), c8), c8, c16


class BiSeNetV1(WholeImageModel, nn.Module):
    """BiSeNetV1 R-18-D32 (mmseg config): FCN decode head (256 ch) on the fusion, two FCN auxiliary heads
    (64 ch) on the context path's 1/8 and 1/16 maps, all three with CE weight 1.0 in training."""

    def __init__(self, num_classes: int = 2, class_names: Sequence[str] | None = None, dropout: float = 0.1,
                 name: str = "bisenetv1-r18"):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = BiSeNetV1Backbone()
        self.decode_head = FCNHead(256, 256, num_classes, dropout)
        self.auxiliary_head = nn.ModuleList(FCNHead(128, 64, num_classes, dropout) for _ in range(2))
        _init_heads(self)
        self.info = _info(name, num_classes, class_names, image_wide=(
            "context_path.gap_conv", "context_path.arm32 attention", "context_path.arm16 attention",
            "ffm attention"))

    def logits_low(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_head(self.backbone(x)[0])

    def losses(self, x: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX
               ) -> dict[str, torch.Tensor]:
        """mmseg config: CE 1.0 on the decode head and 1.0 on each auxiliary head (context 1/8, 1/16)."""
        if target.ndim == 4:
            target = target[:, 0]
        fused, c8, c16 = self.backbone(x)
        out = {"loss_seg": seg_ce(self.decode_head(fused), target, 1.0, ignore_index),
               "loss_aux8": seg_ce(self.auxiliary_head[0](c8), target, 1.0, ignore_index),
               "loss_aux16": seg_ce(self.auxiliary_head[1](c16), target, 1.0, ignore_index)}
        out["loss"] = sum(out.values())  # type: ignore[assignment]
        return out


# ------------------------------------------------------------------------------------------------------
# BiSeNetV2

class DWSeparable(nn.Module):
    """mmcv DepthwiseSeparableConvModule without activations: depthwise 3x3 + BN, pointwise 1x1 (+ BN or bias)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, pw_norm: bool = True):
        super().__init__()
        self.depthwise_conv = ConvBNAct(in_ch, in_ch, 3, stride, groups=in_ch, act=False)
        if pw_norm:
            self.pointwise_conv: nn.Module = ConvBNAct(in_ch, out_ch, 1, act=False)
        else:  # mmcv ConvModule without a norm: a plain conv with bias, key `conv`
            self.pointwise_conv = nn.Module()
            self.pointwise_conv.conv = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.depthwise_conv(x)
        pw = self.pointwise_conv
        return pw(x) if isinstance(pw, ConvBNAct) else pw.conv(x)


class DetailBranch(nn.Module):
    """Three stages of 3x3 ConvBNReLUs (64, 64, 128 ch), each opening with stride 2: 1/8 of the input."""

    def __init__(self, channels: Sequence[int] = (64, 64, 128)):
        super().__init__()
        stages, prev = [], 3
        for i, c in enumerate(channels):
            layers = [ConvBNAct(prev, c, 3, 2), ConvBNAct(c, c, 3)] + ([ConvBNAct(c, c, 3)] if i else [])
            stages.append(nn.Sequential(*layers))
            prev = c
        self.detail_branch = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.detail_branch:
            x = stage(x)
        return x


class StemBlock(nn.Module):
    """3x3/2, then [1x1, 3x3/2] beside a 3x3/2 max pool, concatenated and fused by a 3x3: 1/4, 16 ch."""

    def __init__(self, out_ch: int = 16):
        super().__init__()
        self.conv_first = ConvBNAct(3, out_ch, 3, 2)
        self.convs = nn.Sequential(ConvBNAct(out_ch, out_ch // 2, 1), ConvBNAct(out_ch // 2, out_ch, 3, 2))
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.fuse_last = ConvBNAct(out_ch * 2, out_ch, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_first(x)
        return self.fuse_last(torch.cat([self.convs(x), self.pool(x)], dim=1))


class GELayer(nn.Module):
    """Gather-and-expansion layer (expansion 6); the stride-2 form has two depthwise convs and a
    depthwise-separable shortcut."""

    def __init__(self, in_ch: int, out_ch: int, exp: int = 6, stride: int = 1):
        super().__init__()
        mid = in_ch * exp
        self.conv1 = ConvBNAct(in_ch, in_ch, 3)
        if stride == 1:
            self.dwconv = nn.Sequential(ConvBNAct(in_ch, mid, 3, groups=in_ch))
            self.shortcut: nn.Module | None = None
        else:
            self.dwconv = nn.Sequential(ConvBNAct(in_ch, mid, 3, stride, groups=in_ch, act=False),
                                        ConvBNAct(mid, mid, 3, groups=mid))
            self.shortcut = nn.Sequential(DWSeparable(in_ch, out_ch, stride))
        self.conv2 = nn.Sequential(ConvBNAct(mid, out_ch, 1, act=False))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.dwconv(self.conv1(x)))
        return self.act(y + (x if self.shortcut is None else self.shortcut(x)))


class CEBlock(nn.Module):
    """Context embedding: BN of the global mean, 1x1 ConvBNReLU, added back, then a 3x3 ConvBNReLU."""

    def __init__(self, ch: int = 128):
        super().__init__()
        self.gap = nn.Sequential(nn.AdaptiveAvgPool2d(1), PooledBatchNorm2d(ch))
        self.conv_gap = ConvBNAct(ch, ch, 1, pooled=True)
        self.conv_last = ConvBNAct(ch, ch, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_last(x + self.conv_gap(self.gap(x)))


class SemanticBranch(nn.Module):
    """Stem (1/4, 16), GE stages to 1/8 (32), 1/16 (64), 1/32 (128, four layers), then the CE block."""

    def __init__(self, channels: Sequence[int] = (16, 32, 64, 128), exp: int = 6):
        super().__init__()
        self.stage1 = StemBlock(channels[0])
        for i in range(1, len(channels)):
            n = 4 if i == len(channels) - 1 else 2
            layers = [GELayer(channels[i - 1], channels[i], exp, 2)]
            layers += [GELayer(channels[i], channels[i], exp, 1) for _ in range(n - 1)]
            self.add_module(f"stage{i + 1}", nn.Sequential(*layers))
        self.n_stages = len(channels)
        self.add_module(f"stage{len(channels)}_CEBlock", CEBlock(channels[-1]))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i in range(1, self.n_stages + 1):
            x = getattr(self, f"stage{i}")(x)
            outs.append(x)
        outs.append(getattr(self, f"stage{self.n_stages}_CEBlock")(x))
        return outs


class BGALayer(nn.Module):
    """Bilateral guided aggregation: each branch gates the other (sigmoid) at 1/8 and at 1/32."""

    def __init__(self, ch: int = 128):
        super().__init__()
        self.detail_dwconv = nn.Sequential(DWSeparable(ch, ch, pw_norm=False))
        self.detail_down = nn.Sequential(ConvBNAct(ch, ch, 3, 2, act=False), nn.AvgPool2d(3, 2, 1))
        self.semantic_conv = nn.Sequential(ConvBNAct(ch, ch, 3, act=False))
        self.semantic_dwconv = nn.Sequential(DWSeparable(ch, ch, pw_norm=False))
        self.conv = ConvBNAct(ch, ch, 3)

    def forward(self, x_d: torch.Tensor, x_s: torch.Tensor) -> torch.Tensor:
        d_dw = self.detail_dwconv(x_d)
        d_down = self.detail_down(x_d)
        s_conv = resize(self.semantic_conv(x_s), d_dw.shape[-2:])
        fuse1 = d_dw * torch.sigmoid(s_conv)
        fuse2 = resize(d_down * torch.sigmoid(self.semantic_dwconv(x_s)), fuse1.shape[-2:])
        return self.conv(fuse1 + fuse2)


class BiSeNetV2Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.detail = DetailBranch()
        self.semantic = SemanticBranch()
        self.bga = BGALayer()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[BGA output 1/8, stage1 1/4, stage2 1/8, stage3 1/16, stage4 1/32]: mmseg's out_indices 0..4."""
        sem = self.semantic(x)
        return [self.bga(self.detail(x), sem[-1])] + sem[:-1]


class BiSeNetV2(WholeImageModel, nn.Module):
    """BiSeNetV2 (mmseg `bisenetv2_fcn`): FCN decode head (1024 ch) on the aggregation; training adds the
    paper's booster: four FCN heads (two 3x3 convs; 16/64/256/1024 ch) on semantic stages 1-4, CE 1.0 each."""

    AUX = ((16, 16), (32, 64), (64, 256), (128, 1024))

    def __init__(self, num_classes: int = 2, class_names: Sequence[str] | None = None, dropout: float = 0.1,
                 name: str = "bisenetv2"):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = BiSeNetV2Backbone()
        self.decode_head = FCNHead(128, 1024, num_classes, dropout)
        self.auxiliary_head = nn.ModuleList(FCNHead(i, c, num_classes, dropout, num_convs=2) for i, c in self.AUX)
        _init_heads(self)
        self.info = _info(name, num_classes, class_names, image_wide=("semantic.stage4_CEBlock global mean",))

    def logits_low(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        return self.decode_head(b.bga(b.detail(x), b.semantic(x)[-1]))

    def losses(self, x: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX
               ) -> dict[str, torch.Tensor]:
        """mmseg config: CE 1.0 on the decode head and on each of the four booster heads."""
        if target.ndim == 4:
            target = target[:, 0]
        outs = self.backbone(x)
        out = {"loss_seg": seg_ce(self.decode_head(outs[0]), target, 1.0, ignore_index)}
        for i, head in enumerate(self.auxiliary_head):
            out[f"loss_aux{i + 1}"] = seg_ce(head(outs[i + 1]), target, 1.0, ignore_index)
        out["loss"] = sum(out.values())  # type: ignore[assignment]
        return out


# ------------------------------------------------------------------------------------------------------
def _init_heads(model: nn.Module) -> None:
    for m in (model.backbone, model.decode_head, model.auxiliary_head):
        init_weights(m)
    init_classifier(model.decode_head.conv_seg)
    for h in model.auxiliary_head:
        init_classifier(h.conv_seg)


def _info(name: str, num_classes: int, class_names: Sequence[str] | None, image_wide: Sequence[str],
          logit_stride: int = 8) -> ModelInfo:
    return ModelInfo(name=name, num_classes=num_classes, class_names=class_names_for(num_classes, class_names),
                     palette=default_palette(num_classes), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                     receptive_field=0, size_multiple=32,
                     extra={"down_ratio": 1, "logit_stride": logit_stride, "global_pooling": True,
                            "image_wide_ops": list(image_wide), "layout": "mmseg"})


@register_model("bisenetv1-r18")
def bisenetv1_r18(num_classes: int = 2, **kw: Any) -> BiSeNetV1:
    """BiSeNetV1 with a ResNet-18 context path (mmseg `bisenetv1_r18-d32`, the paper's Table 3 row)."""
    return BiSeNetV1(num_classes=num_classes, **kw)


@register_model("bisenetv2")
def bisenetv2(num_classes: int = 2, **kw: Any) -> BiSeNetV2:
    """BiSeNetV2 (mmseg `bisenetv2_fcn`), booster heads for training."""
    return BiSeNetV2(num_classes=num_classes, **kw)
