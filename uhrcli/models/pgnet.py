"""PGNet: Pyramid Grafting Network for one-stage high-resolution saliency (Xie et al., CVPR 2022).

Two encoders see the same image at two scales: a ResNet-18 on the full high-resolution input (1024x1024
in the paper) and a Swin-B on a fixed 224x224 copy (bilinear, align_corners=True). The Cross-Model
Grafting Module (CMGM) fuses the CNN's coarsest map and the transformer's 1/8 map on a 28x28 grid with
cross attention (queries and values from the CNN, keys from the transformer); a cascade of decoder
blocks then walks back up the CNN pyramid to 1/4 resolution. Training also uses two 28x28 side maps and
the symmetrised attention map of the CMGM (supervised by the attention-guided loss in pgnet_losses).

Module names mirror the official implementation so its released checkpoints (saved from DDP with a
`module.` prefix, which load_checkpoint strips) load strictly; see tests/test_pgnet.py for the key check.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import ModelInfo
from .registry import register_model
from .swin import SwinTransformer
from .torchvision_resnet import TorchvisionResNet

PGNET_MEAN = (124.55, 118.90, 102.94)
PGNET_STD = (56.77, 55.97, 57.50)


def _up(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The decoder's resampling: bilinear with align_corners=True (as trained)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def _cbr(cin: int, cout: int, k: int = 3, dilation: int = 1) -> nn.Sequential:
    """Conv (with bias) -> BN -> ReLU; indices 0/1 are the checkpoint's conv/bn keys."""
    pad = dilation * (k // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def _cbr2(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 conv-BN-ReLU in one Sequential (checkpoint indices 0,1 and 3,4)."""
    return nn.Sequential(*_cbr(cin, cout), *_cbr(cout, cout))


class CrossModelGrafting(nn.Module):
    """CMGM: cross attention from CNN tokens (queries, values) to transformer tokens (keys).

    Returns the grafted CNN map (B, C, H, W) and, when asked, the attention relation map
    ReLU(BN(conv3x3(A + A^T))) of shape (B, heads, HW, HW) that the attention-guided loss supervises.
    """

    def __init__(self, dim: int = 64, num_heads: int = 8):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.k = nn.Linear(dim, dim)
        self.qv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)
        self.act = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(num_heads, num_heads, 3, padding=1)
        self.lnx = nn.LayerNorm(dim)
        self.lny = nn.LayerNorm(dim)
        self.bn = nn.BatchNorm2d(num_heads)
        self.conv2 = _cbr2(dim, dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor, with_map: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: CNN map, y: transformer map, both (B, C, H, W) on the same grid."""
        b, c, hh, ww = x.shape
        h = self.num_heads
        xt = x.flatten(2).transpose(1, 2)  # B, N, C (pre-norm tokens are the residual)
        yt = y.flatten(2).transpose(1, 2)
        n = xt.shape[1]
        k = self.k(self.lny(yt)).reshape(b, n, h, c // h).transpose(1, 2)
        qv = self.qv(self.lnx(xt)).reshape(b, n, 2, h, c // h).permute(2, 0, 3, 1, 4)
        q, v = qv[0], qv[1]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)  # B, h, N, N
        out = self.proj((attn @ v).transpose(1, 2).reshape(b, n, c)) + xt
        out = out.transpose(1, 2).reshape(b, c, hh, ww)
        out = self.conv2(out) + out
        if not with_map:
            return out, None
        return out, self.act(self.bn(self.conv(attn + attn.transpose(-2, -1))))


class SqueezeBlock(nn.Module):
    """Official DB1: 1x1 squeeze to 64 channels, then a dilated 3x3 (the decoder's top)."""

    def __init__(self, inplanes: int, outplanes: int = 64):
        super().__init__()
        self.squeeze1 = _cbr(inplanes, outplanes, k=1)
        self.squeeze2 = _cbr(outplanes, outplanes, k=3, dilation=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.squeeze2(self.squeeze1(x))


class FuseBlock(nn.Module):
    """Official DB2: upsample the coarser decoder map z to x, fuse cat(x, z), residual refinement."""

    def __init__(self, inplanes: int, outplanes: int = 64):
        super().__init__()
        self.short_cut = nn.Conv2d(outplanes, outplanes, 1)
        self.conv = _cbr2(inplanes + outplanes, outplanes)
        self.conv2 = _cbr2(outplanes, outplanes)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        z = _up(z, x.shape[-2:])
        p = self.conv(torch.cat((x, z), 1)) + self.short_cut(z)
        return p + self.conv2(p)


class GraftFuseBlock(nn.Module):
    """Official DB3: merge the transformer's 1/4 map (resized to CNN 1/16) with CNN 1/16, then a FuseBlock."""

    def __init__(self, swin_channels: int = 128, cnn_channels: int = 256, dim: int = 64):
        super().__init__()
        self.db2 = FuseBlock(dim, dim)
        self.conv3x3 = _cbr(dim, dim)
        self.sqz_r4 = _cbr(cnn_channels, dim)
        self.sqz_s1 = _cbr(swin_channels, dim)

    def forward(self, s: torch.Tensor, r: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        up = _up(up, s.shape[-2:])
        sr = self.conv3x3(self.sqz_s1(s) + self.sqz_r4(r))
        return self.db2(sr, up)


class PGNetDecoder(nn.Module):
    """Transformer pyramid top-down (d1, d2), grafting at 1/8 of 224 (GF), then down the CNN pyramid (d3..d6)."""

    def __init__(self, swin_channels: Sequence[int] = (128, 256, 512, 512),
                 cnn_channels: Sequence[int] = (64, 128, 256, 512), dim: int = 64, num_heads: int = 8):
        super().__init__()
        s1, s2, s3, s4 = swin_channels
        r2, r3, r4, r5 = cnn_channels
        self.sqz_s2 = _cbr(s2, dim)
        self.sqz_r5 = _cbr(r5, dim)
        self.GF = CrossModelGrafting(dim, num_heads)
        self.d1 = SqueezeBlock(s4, dim)
        self.d2 = FuseBlock(s3, dim)
        self.d3 = FuseBlock(dim, dim)
        self.d4 = GraftFuseBlock(s1, r4, dim)
        self.d5 = FuseBlock(r3, dim)
        self.d6 = FuseBlock(r2, dim)

    def forward(self, s: Sequence[torch.Tensor], r: Sequence[torch.Tensor], with_map: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """-> (1/4 CNN-resolution feature, grafting map or None, squeezed CNN 28x28, squeezed Swin 28x28)."""
        s1, s2, s3, s4 = s
        r2, r3, r4, r5 = r
        r5 = _up(r5, s2.shape[-2:])
        s1 = _up(s1, r4.shape[-2:])
        t = self.d2(s3, self.d1(s4))
        s2_ = self.sqz_s2(s2)
        r5_ = self.sqz_r5(r5)
        g, cam = self.GF(r5_, s2_, with_map)
        g = self.d3(g, t)
        g = self.d4(s1, r4, g)
        g = self.d5(r3, g)
        g = self.d6(r2, g)
        return g, cam, r5_, s2_


class PGNetOutput(NamedTuple):
    """Training outputs, in the official return order (pred1, wr, ws, attention logits)."""

    pred: torch.Tensor  # (B, 1, H, W) saliency logits at the output size
    wr: torch.Tensor  # (B, 1, g, g) CNN side logits on the grafting grid (g = 28 for a 224 transformer)
    ws: torch.Tensor  # (B, 1, g, g) transformer side logits
    attn: torch.Tensor  # (B, 1, g*g, g*g) grafting attention logits


class PGNet(nn.Module):
    """ResNet-18 (full resolution) + Swin (fixed transformer_size) grafted saliency network.

    forward(x): x is the normalised (B, 3, H, W) image at the high-resolution working size (1024 by
    default; H, W multiples of 32). Eval mode returns the saliency logits (B, 1, H, W) (or at `out_size`).
    Training mode, or return_aux=True, returns a PGNetOutput (pred, wr, ws, attn) exactly as the official
    forward does; the eval path skips the side heads and the 784x784 attention map it does not need.
    """

    def __init__(self, swin_depths: Sequence[int] = (2, 2, 18, 2), embed_dim: int = 128,
                 num_heads: Sequence[int] = (4, 8, 16, 32), window_size: int = 7, drop_path_rate: float = 0.5,
                 transformer_size: int = 224, cnn_size: int = 1024, decoder_dim: int = 64, graft_heads: int = 8):
        super().__init__()
        if transformer_size % 32:
            raise ValueError(f"transformer_size must be a multiple of 32, got {transformer_size}")
        self.transformer_size = transformer_size
        self.grid = transformer_size // 8  # Swin's 1/8 map: where grafting happens
        swin = SwinTransformer(transformer_size, 4, 3, embed_dim, swin_depths, num_heads, window_size,
                               drop_path_rate=drop_path_rate, num_stages=len(swin_depths) - 1)
        # registration order below reproduces the checkpoint's key order (decoder, heads, resnet, swin)
        self.decoder = PGNetDecoder(swin.out_channels(), TorchvisionResNet.out_channels, decoder_dim, graft_heads)
        self.linear1 = nn.Conv2d(decoder_dim, 1, 3, padding=1)
        self.linear2 = nn.Conv2d(decoder_dim, 1, 3, padding=1)
        self.linear3 = nn.Conv2d(decoder_dim, 1, 3, padding=1)
        self.conv = nn.Conv2d(graft_heads, 1, 3, padding=1)
        self._init_head()
        self.resnet = TorchvisionResNet((2, 2, 2, 2))
        self.swin = swin
        self.info = ModelInfo(
            name="pgnet", task="saliency", num_classes=1, class_names=("salient",),
            palette=((0, 0, 0), (255, 255, 255)), mean=PGNET_MEAN, std=PGNET_STD, in_channels=3,
            receptive_field=0, size_multiple=32, two_scale=True,
            extra={"transformer_size": transformer_size, "default_size": cnn_size})

    def _init_head(self) -> None:
        """Kaiming (fan_in) convs/linears, unit norms: the decoder init of the official training."""
        for m in (*self.decoder.modules(), self.linear1, self.linear2, self.linear3, self.conv):
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def load_backbone_weights(self, path: str) -> dict[str, Any]:
        """ImageNet weights for one encoder, found by its keys: a torchvision ResNet-18 file (conv1, layer1..4)
        fills `resnet`, a Swin-B file (patch_embed, layers.N.blocks...) fills `swin`. Heads, classifier and
        the buffers PGNet computes itself (window masks, position indices) are skipped; a shape mismatch is
        an error, since a Swin-L or ResNet-50 file would load silently wrong."""
        from ..errors import CheckpointError
        from .checkpoint import load_checkpoint

        state, _ = load_checkpoint(path)
        if any(k.startswith(("patch_embed.", "layers.")) for k in state):
            prefix, heads, computed = "swin.", ("head.",), ("attn_mask", "atten_mask", "relative_position_index")
        elif "conv1.weight" in state and any(k.startswith("layer1.") for k in state):
            prefix, heads, computed = "resnet.", ("fc.",), ("num_batches_tracked",)
        else:
            raise CheckpointError(f"{path}: neither a torchvision ResNet-18 nor a Swin state_dict")
        own = self.state_dict()
        take, skipped = {}, []
        for k, v in state.items():
            if k.startswith(heads) or any(c in k for c in computed) or prefix + k not in own:
                skipped.append(k)
                continue
            if own[prefix + k].shape != v.shape:
                raise CheckpointError(f"{path}: {k} has shape {tuple(v.shape)}, PGNet's {prefix}{k} is "
                                      f"{tuple(own[prefix + k].shape)}")
            take[prefix + k] = v
        missing = [k for k in own if k.startswith(prefix) and k not in take and not any(c in k for c in computed)]
        self.load_state_dict(take, strict=False)
        notes = [f"{len(missing)} {prefix[:-1]} tensor(s) not in the file, e.g. {missing[0]}"] if missing else []
        return {"loaded": len(take), "skipped": skipped, "missing": missing, "notes": notes, "source": str(path)}

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The prediction before its final upsampling (1/4 of the CNN input): the official test script
        resizes it once, straight to the image's size."""
        y = F.interpolate(x, size=(self.transformer_size,) * 2, mode="bilinear", align_corners=True)
        feat, _, _, _ = self.decoder(self.swin(y), self.resnet(x), with_map=False)
        return self.linear1(feat)

    def forward(self, x: torch.Tensor, return_aux: bool | None = None,
                out_size: Sequence[int] | None = None) -> torch.Tensor | PGNetOutput:
        """See the class docstring; out_size resizes the prediction (bilinear) like the official `shape`."""
        aux = self.training if return_aux is None else return_aux
        size = tuple(x.shape[-2:]) if out_size is None else tuple(int(v) for v in out_size)
        t = self.transformer_size
        y = F.interpolate(x, size=(t, t), mode="bilinear", align_corners=True)
        r = self.resnet(x)
        s = self.swin(y)
        feat, cam, r5_, s2_ = self.decoder(s, r, with_map=aux)
        pred = F.interpolate(self.linear1(feat), size=size, mode="bilinear", align_corners=False)
        if not aux:
            return pred
        g = (self.grid, self.grid)
        wr = F.interpolate(self.linear2(r5_), size=g, mode="bilinear", align_corners=False)
        ws = F.interpolate(self.linear3(s2_), size=g, mode="bilinear", align_corners=False)
        return PGNetOutput(pred, wr, ws, self.conv(cam))

    def forward_train(self, x: torch.Tensor) -> PGNetOutput:
        """All training outputs regardless of mode (what pgnet_losses.pgnet_loss consumes)."""
        return cast(PGNetOutput, self.forward(x, return_aux=True))


@register_model("pgnet")
def pgnet(swin_depths: Sequence[int] = (2, 2, 18, 2), embed_dim: int = 128,
          num_heads: Sequence[int] = (4, 8, 16, 32), drop_path_rate: float = 0.5, cnn_size: int = 1024,
          transformer_size: int = 224, num_classes: int | None = None, task: str | None = None) -> PGNet:
    """PGNet as released (Swin-B 224 + ResNet-18); a smaller swin_depths gives a cheap variant for tests.

    num_classes/task are accepted only with their single valid value (1, 'saliency') so generic callers
    (build_model, the trainer) can pass them.
    """
    if num_classes not in (None, 1):
        raise ValueError(f"pgnet predicts one saliency channel, not {num_classes} classes")
    if task not in (None, "saliency"):
        raise ValueError(f"pgnet is a saliency model, not {task!r}")
    return PGNet(swin_depths=tuple(swin_depths), embed_dim=embed_dim, num_heads=tuple(num_heads),
                 drop_path_rate=drop_path_rate, transformer_size=transformer_size, cnn_size=cnn_size)


__all__ = ["PGNet", "PGNetOutput", "CrossModelGrafting", "PGNetDecoder", "pgnet"]
