"""ISDNet's shallow branch: Laplacian-pyramid residuals and the STDC-style ShallowNet.

ShallowNet is STDC1 (STDCNet813) cut at stride 16, on 6 input channels
(two high-frequency residuals of the normalised image). Keys follow the
official `stdc_net.features.N.*` layout (without its x2/x4/x8/x16 aliases).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..geometry import Placement, halvings, resize_window
from .layers import resize


class ConvX(nn.Module):
    """conv -> BN -> ReLU with keys conv/bn (STDC naming)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class CatBottleneck(nn.Module):
    """STDC module: a chain of convs whose outputs (out/2, out/4, out/8, out/8 for 4 blocks) are concatenated.

    With stride 2, a depthwise 3x3/2 conv (+BN) downsamples after the first 1x1
    conv, and the first output joins the concat through a 3x3/2 average pool.
    """

    def __init__(self, in_ch: int, out_ch: int, block_num: int = 4, stride: int = 1):
        super().__init__()
        if block_num < 2:
            raise ValueError("block_num must be at least 2")
        self.stride = stride
        if stride == 2:
            self.avd_layer = nn.Sequential(
                nn.Conv2d(out_ch // 2, out_ch // 2, 3, 2, 1, groups=out_ch // 2, bias=False),
                nn.BatchNorm2d(out_ch // 2))
            self.skip = nn.AvgPool2d(3, 2, 1)
        convs = []
        for i in range(block_num):
            if i == 0:
                convs.append(ConvX(in_ch, out_ch // 2, 1))
            elif i == 1 and block_num == 2:
                convs.append(ConvX(out_ch // 2, out_ch // 2))
            elif i == 1:
                convs.append(ConvX(out_ch // 2, out_ch // 4))
            elif i < block_num - 1:
                convs.append(ConvX(out_ch // 2 ** i, out_ch // 2 ** (i + 1)))
            else:
                convs.append(ConvX(out_ch // 2 ** i, out_ch // 2 ** i))
        self.conv_list = nn.ModuleList(convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.conv_list[0](x)
        out = self.avd_layer(first) if self.stride == 2 else first
        outs = []
        for conv in self.conv_list[1:]:
            out = conv(out)
            outs.append(out)
        if self.stride == 2:
            first = self.skip(first)
        return torch.cat([first] + outs, dim=1)


class ShallowNet(nn.Module):
    """ConvX(in->32,s2), ConvX(32->64,s2), Cat(64->256,s2), Cat(256), Cat(256->512,s2), Cat(512).

    Returns (feat8: 256 ch at 1/8, feat16: 512 ch at 1/16).
    """

    def __init__(self, in_channels: int = 6, base: int = 64, layers: tuple[int, ...] = (2, 2), block_num: int = 4):
        super().__init__()
        feats: list[nn.Module] = [ConvX(in_channels, base // 2, 3, 2), ConvX(base // 2, base, 3, 2)]
        for i, n in enumerate(layers):
            for j in range(n):
                if i == 0 and j == 0:
                    feats.append(CatBottleneck(base, base * 4, block_num, 2))
                elif j == 0:
                    feats.append(CatBottleneck(base * 2 ** (i + 1), base * 2 ** (i + 2), block_num, 2))
                else:
                    feats.append(CatBottleneck(base * 2 ** (i + 2), base * 2 ** (i + 2), block_num, 1))
        self.features = nn.Sequential(*feats)
        last = len(layers) - 1
        self.out_channels = (base * 2 ** (last + 1), base * 2 ** (last + 2))  # (feat8, feat16)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features
        feat8 = f[3](f[2](f[1](f[0](x))))
        feat16 = f[5](f[4](feat8))
        return feat8, feat16


class LaplacianPyramid(nn.Module):
    """High-frequency residuals of a Laplacian pyramid (5x5 binomial kernel /256, reflect padding).

    Level step: blur, keep every second pixel; reconstruct by zero insertion
    and the same blur with 4x the kernel; residual = level - reconstruction
    (both computed in forms that skip the discarded and the zero pixels).
    The kernel is a non-persistent buffer: it is not part of the state dict,
    as in the official model.
    """

    def __init__(self, num_high: int = 2, channels: int = 3):
        super().__init__()
        self.num_high, self.channels = num_high, channels
        k1 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
        k = torch.outer(k1, k1) / 256.0
        self.register_buffer("kernel", k.expand(channels, 1, 5, 5).clone(), persistent=False)

    def _blur_down(self, x: torch.Tensor) -> torch.Tensor:
        """blur(x)[::2, ::2]: the blur evaluated only where the downsampling keeps it (a strided conv)."""
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), self.kernel.to(x.dtype), stride=2, groups=x.shape[1])

    def _upsample(self, x: torch.Tensor) -> torch.Tensor:
        """The official zero insertion followed by the blur with 4x the kernel (reflect padding), as one
        transposed convolution (stride 2), which never builds the zero map. Reflecting the zero-inserted map
        mirrors the input at the start and repeats its last value at the end: padding the input so and
        cropping gives the reflect-padded result exactly."""
        h, w = x.shape[-2:]
        rows = torch.cat([x[..., 1 if h > 1 else 0:, :][..., :1, :], x, x[..., h - 1:, :]], dim=-2)
        xp = torch.cat([rows[..., 1 if w > 1 else 0:][..., :1], rows, rows[..., w - 1:]], dim=-1)
        xp = xp.contiguous(memory_format=_format(x))
        up = F.conv_transpose2d(xp, self.kernel.to(x.dtype) * 4.0, stride=2, padding=2, output_padding=1,
                                groups=x.shape[1])
        return up[..., 2:2 + 2 * h, 2:2 + 2 * w]

    def forward(self, img: torch.Tensor) -> list[torch.Tensor]:
        cur = img
        residuals = []
        for _ in range(self.num_high):
            # every map keeps the input's memory format: a strided or mixed-format map sends the depthwise
            # convolutions down a path several times slower (channels-last is the fast one on CPU)
            down = self._blur_down(cur).contiguous(memory_format=_format(img))
            up = self._upsample(down).contiguous(memory_format=_format(img))
            if up.shape[-2:] != cur.shape[-2:]:  # odd sizes: nearest resize, as the official code does
                up = F.interpolate(up, size=cur.shape[-2:])
            residuals.append(cur - up)
            cur = down
        return residuals

    def shallow_input(self, img: torch.Tensor, place: Placement | None = None) -> torch.Tensor:
        """6-channel input: cat[h1, bilinear_up(h2)] (num_high=2).

        place: where `img` (a tile) sits in the whole image; the upsampling of
        each coarser residual then uses the whole image's size ratio (not 2
        when a size is odd), so a tile sees what the whole-image forward sees.
        """
        res = self.forward(img)
        if place is None or all(_exact_double(place, lv) for lv in range(1, len(res))):
            # an image whose every level halves exactly: the tile's own resize is the whole image's
            ups = [resize(r, res[0].shape[-2:]) for r in res[1:]]
        else:
            h, w = res[0].shape[-2:]
            dst = (place.row, place.row + h, place.col, place.col + w)
            ups = []
            for level, r in enumerate(res[1:], start=1):
                f = 2 ** level  # tile origins are multiples of the total stride, so of f
                size = (halvings(place.height, level), halvings(place.width, level))
                # the last row/column of an interior tile edge may need a cell past the tile: it lies
                # in the halo, whose values are discarded, so the edge is clamped there
                ups.append(resize_window(r, (place.row // f, place.col // f), size, dst,
                                         (place.height, place.width), clamp=True))
        return torch.cat([res[0]] + ups, dim=1).contiguous(memory_format=_format(img))


def _format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) else \
        torch.contiguous_format


def _exact_double(place: Placement, level: int) -> bool:
    """Level `level` of the whole image is exactly 1/2**level of it (sizes divisible), so the bilinear
    upsampling of a tile starting on a multiple of 2**level is a tile of the whole image's upsampling."""
    f = 2 ** level
    return place.height % f == 0 and place.width % f == 0 and place.row % f == 0 and place.col % f == 0
