"""ICNet (Zhao et al., ECCV 2018) in mmseg's layout: `icnet_r50-d8`, the ResNet-50 form of the paper's
PSPNet50-based network (ResNetV1c deep stem, dilations 1-1-2-4, strides 1-2-1-1).

Three cascaded inputs: sub1 is the full image through three 3x3/2 ConvBNReLUs (1/8, 64 ch); sub2 is
the half image through the ResNet stem and layers 1-2 (1/16, 512 ch -> 256); sub4 halves that map
again and runs layers 3-4 and pyramid pooling (1/32, 2048 ch -> 512 -> 256). The neck's two cascade
feature fusions (CFF, dilated 3x3 on the upsampled coarse map + 1x1 on the fine one) merge them at
1/16 and 1/8; an FCN head (128 ch, no dropout) classifies at 1/8. Training adds the cascade label
guidance: FCN heads on each CFF's coarse branch (1/16 and 1/8), CE weight 0.4 each.
Keys follow mmseg (`backbone.backbone.*`, `backbone.psp_modules`, `neck.cff_24`, `decode_head`,
`auxiliary_head.N`), so an official checkpoint's `state_dict` loads as it is.

Image-wide operations: the pyramid pooling bins (1, 2, 3, 6) average fixed fractions of the whole
1/32 map (see `wholeimage.py` for how `uhr segment` keeps them exact).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .aspp import FCNHead
from .bisenet import _info, _init_heads
from .isdnet_losses import IGNORE_INDEX, seg_ce
from .layers import ConvBNAct, init_weights, resize
from .registry import register_model
from .resnet import ResNetV1c
from .wholeimage import WholeImageModel


def _half(x: torch.Tensor) -> torch.Tensor:
    """mmseg's resize(scale_factor=0.5, bilinear, align_corners=False): floor(H/2) x floor(W/2)."""
    return F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)


class ICNetBackbone(nn.Module):
    def __init__(self, depth: int = 50, layer_channels: Sequence[int] = (512, 2048), mid: int = 32,
                 psp_out: int = 512, out_channels: Sequence[int] = (64, 256, 256),
                 pool_scales: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        self.backbone = ResNetV1c(depth, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4), contract_dilation=True)
        self.backbone.maxpool = nn.MaxPool2d(3, 2, 1, ceil_mode=True)  # as mmseg's ICNet sets it
        self.pool_scales = tuple(pool_scales)
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvBNAct(layer_channels[1], psp_out, 1, pooled=True))
            for s in pool_scales)
        self.psp_bottleneck = ConvBNAct(layer_channels[1] + len(pool_scales) * psp_out, psp_out, 3)
        self.conv_sub1 = nn.Sequential(ConvBNAct(3, mid, 3, 2), ConvBNAct(mid, mid, 3, 2),
                                       ConvBNAct(mid, out_channels[0], 3, 2))
        self.conv_sub2 = ConvBNAct(layer_channels[0], out_channels[1], 1)
        self.conv_sub4 = ConvBNAct(psp_out, out_channels[2], 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[sub1 1/8, sub2 1/16, sub4 1/32]."""
        sub1 = self.conv_sub1(x)
        b = self.backbone
        y = b.layer2(b.layer1(b.maxpool(b.stem(_half(x)))))
        sub2 = self.conv_sub2(y)
        y = b.layer4(b.layer3(_half(y)))
        pooled = [resize(m(y), y.shape[-2:]) for m in self.psp_modules]  # bins over the WHOLE map
        sub4 = self.conv_sub4(self.psp_bottleneck(torch.cat(pooled + [y], dim=1)))
        return [sub1, sub2, sub4]


class CascadeFeatureFusion(nn.Module):
    """Upsampled coarse map through a dilated 3x3 ConvBNReLU, plus the fine map's 1x1 ConvBNReLU, ReLU."""

    def __init__(self, low_ch: int, high_ch: int, out_ch: int):
        super().__init__()
        self.conv_low = ConvBNAct(low_ch, out_ch, 3, dilation=2)
        self.conv_high = ConvBNAct(high_ch, out_ch, 1)

    def forward(self, x_low: torch.Tensor, x_high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.conv_low(resize(x_low, x_high.shape[-2:]))
        return F.relu(low + self.conv_high(x_high)), low


class ICNeck(nn.Module):
    def __init__(self, in_channels: Sequence[int] = (64, 256, 256), out_ch: int = 128):
        super().__init__()
        self.cff_24 = CascadeFeatureFusion(in_channels[2], in_channels[1], out_ch)
        self.cff_12 = CascadeFeatureFusion(out_ch, in_channels[0], out_ch)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """[coarse branch of cff_24 (1/16), coarse branch of cff_12 (1/8), fused 1/8]."""
        sub1, sub2, sub4 = feats
        f24, low24 = self.cff_24(sub4, sub2)
        f12, low12 = self.cff_12(f24, sub1)
        return [low24, low12, f12]


class ICNet(WholeImageModel, nn.Module):
    """ICNet R-50-D8 (mmseg config; the paper uses 19 Cityscapes classes, any count works here)."""

    def __init__(self, num_classes: int = 2, depth: int = 50, class_names: Sequence[str] | None = None,
                 dropout: float = 0.1, name: str = "icnet"):
        super().__init__()
        self.num_classes = num_classes
        layer_channels = (512, 2048) if depth >= 50 else (128, 512)
        self.backbone = ICNetBackbone(depth, layer_channels)
        self.neck = ICNeck()
        self.decode_head = FCNHead(128, 128, num_classes, dropout=0.0)  # dropout_ratio=0 in the config
        self.auxiliary_head = nn.ModuleList(FCNHead(128, 128, num_classes, dropout) for _ in range(2))
        _init_heads(self)
        init_weights(self.neck)
        self.info = _info(name, num_classes, class_names, image_wide=("backbone.psp_modules pyramid bins",))

    def logits_low(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_head(self.neck(self.backbone(x))[2])

    def losses(self, x: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX
               ) -> dict[str, torch.Tensor]:
        """mmseg config: CE 1.0 on the decode head, 0.4 on each cascade-label-guidance head."""
        if target.ndim == 4:
            target = target[:, 0]
        low24, low12, fused = self.neck(self.backbone(x))
        out = {"loss_seg": seg_ce(self.decode_head(fused), target, 1.0, ignore_index),
               "loss_aux24": seg_ce(self.auxiliary_head[0](low24), target, 0.4, ignore_index),
               "loss_aux12": seg_ce(self.auxiliary_head[1](low12), target, 0.4, ignore_index)}
        out["loss"] = sum(out.values())  # type: ignore[assignment]
        return out


@register_model("icnet")
def icnet(num_classes: int = 2, **kw: Any) -> ICNet:
    """ICNet with a ResNet-50 V1c d8 backbone (mmseg `icnet_r50-d8`); depth=18/101 as mmseg's variants."""
    return ICNet(num_classes=num_classes, **kw)
