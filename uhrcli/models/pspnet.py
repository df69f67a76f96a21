"""PSPNet baselines of ISDNet's Tables 3 and 4 (Zhao et al., CVPR 2017, as mmseg configures it).

Dilated ResNet V1c (output stride 8) + pyramid pooling (bins 1/2/3/6) + an
FCN auxiliary head on layer3 for training, optionally on the image shrunk by
`down_ratio` (nearest, like the DeepLabV3 baselines). Module names are
mmseg's (`backbone.*`, `decode_head.psp_modules.i.1.*`, `decode_head.bottleneck.*`,
`auxiliary_head.convs.0.*`), so an mmseg PSPNet state dict loads as it is.

Image-wide ops: every pyramid bin averages a fixed fraction of the WHOLE c4
map (1x1, 2x2, 3x3, 6x6 regions), so the head cannot be tiled. The model
speaks the deep-path protocol (`deep_backbone`, `deep_head`, `deep_logits`):
`uhr segment` runs the backbone over the whole (shrunk) raster (tiled with
its receptive field as halo where large: the backbone is local) and the head
once over the whole c4 map, then resamples output tiles from the 1/8 logits
in whole-image coordinates (uhrcli.inference.deeponly), which equals the
whole-image forward.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch.nn as nn

from .aspp import FCNHead, PSPHead
from .base import ModelInfo, default_palette
from .isdnet import (BACKBONES, IMAGENET_MEAN, IMAGENET_STD, DecodeAuxBaseline, DeepPath, ISDNet, _head_radius_cells,
                     resnet_receptive_field, upsample_reach)
from .layers import init_classifier, init_weights
from .registry import register_model
from .resnet import resnet_v1c_d8

# mmseg configs: pspnet_r18-d8 (decode 512 -> 128, aux 256 -> 64) and pspnet_r50-d8 (2048 -> 512, 1024 -> 256)
HEAD_CHANNELS = {"r18": 128, "r50": 512}


class PSPNet(DecodeAuxBaseline, DeepPath, nn.Module):
    """PSPNet-d8: forward(x) -> logits at the input size; losses(x, target) -> CE 1.0 + 0.4 auxiliary."""

    def __init__(self, num_classes: int = 2, backbone: str = "r18", down_ratio: int = 1, channels: int | None = None,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1,
                 class_names: Sequence[str] | None = None, name: str = "pspnet-r18"):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {backbone!r}")
        if int(down_ratio) < 1:
            raise ValueError(f"down_ratio must be >= 1, got {down_ratio}")
        self.down_ratio = int(down_ratio)
        self.backbone = resnet_v1c_d8(BACKBONES[backbone])
        c3, c4 = self.backbone.out_channels[2], self.backbone.out_channels[3]
        self.decode_head = PSPHead(c4, channels or HEAD_CHANNELS[backbone], num_classes, pool_scales, dropout)
        self.auxiliary_head = FCNHead(c3, c3 // 4, num_classes, dropout)
        init_weights(self.decode_head)
        init_weights(self.auxiliary_head)
        init_classifier(self.decode_head.conv_seg)
        init_classifier(self.auxiliary_head.conv_seg)
        names = tuple(class_names) if class_names else (
            ("background", "building") if num_classes == 2 else tuple(f"class_{i}" for i in range(num_classes)))
        if len(names) != num_classes:
            raise ValueError(f"{len(names)} class names for {num_classes} classes")
        bb_r, bb_j = resnet_receptive_field(self.backbone)
        local = bb_r + _head_radius_cells(self.decode_head) * bb_j
        self.info = ModelInfo(
            name=name, num_classes=num_classes, class_names=names, palette=default_palette(num_classes),
            mean=IMAGENET_MEAN, std=IMAGENET_STD,
            receptive_field=int(local * self.down_ratio + upsample_reach(bb_j * self.down_ratio)),
            size_multiple=bb_j * self.down_ratio,
            extra={"down_ratio": self.down_ratio, "global_pooling": True, "deep_channels": c4,
                   "image_wide_ops": "pyramid pooling bins 1x1, 2x2, 3x3, 6x6 over the whole c4 map",
                   "deep_head_tileable": False},
        )


def _register(backbone: str, ratio: int) -> None:
    name = f"pspnet-{backbone}" + (f"-down{ratio}" if ratio > 1 else "")
    scale = "the full image" if ratio == 1 else f"the 1/{ratio} image (nearest), logits upsampled to full size"

    def factory(num_classes: int = 2, **kw: Any) -> PSPNet:
        return PSPNet(num_classes=num_classes, backbone=backbone, down_ratio=ratio, name=name, **kw)

    factory.__doc__ = f"PSPNet, ResNet-{BACKBONES[backbone]}-d8 (mmseg pspnet_{backbone}-d8) on {scale}."
    register_model(name)(factory)


for _bb in ("r18", "r50"):
    for _ratio in (1, 2, 4):
        _register(_bb, _ratio)


@register_model("isdnet-psp")
def isdnet_psp(num_classes: int = 2, **kw: Any) -> ISDNet:
    """ISDNet's Table 4 'PSPNet + ISD': the official config pspnet_r18-d8_512x1024_80k_cityscapes_refine.py
    (ResNet-18-d8, PSP head 512 -> 128 with bins 1/2/3/6, down_ratio 4, FCN aux 256 -> 64, the ISD shallow
    path and fusions with 128 channels): the same network as `isdnet-r18-psp`. That config names a
    `RefinePSPHead` and a `STDCSimRefineHead` which the released code does not register (it has
    RefineASPPHead and ISDHead only); their arguments match PSPHead-returning-features and ISDHead, which is
    what is built here. The paper trains it on Cityscapes (19 classes); the default here is 2, like every model."""
    return ISDNet(num_classes=num_classes, backbone="r18", deep_head="psp", name="isdnet-psp", **kw)
