"""Swin Transformer (Liu et al., ICCV 2021) in plain torch, with Microsoft's original state_dict layout.

Written for PGNet, whose released checkpoints hold a Swin-B trained at a fixed 224x224 input with only the
first three stages built (the fourth stage exists in the depth schedule and in the size of the unused final
`norm`, but has no modules). Key names follow the original code so those checkpoints load strictly:
patch_embed.{proj,norm}, layers.N.blocks.M.{norm1, attn.{relative_position_bias_table,
relative_position_index, qkv, proj}, norm2, mlp.{fc1,fc2}}, a buffer `atten_mask` (spelled as in PGNet's
checkpoints) on every shifted block, and layers.N.downsample.{reduction,norm} at the end of a stage.
The input resolution is fixed at construction because the shifted-window masks are precomputed buffers.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop whole residual branches per sample, rescaling the kept ones."""
    if p <= 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


class DropPath(nn.Module):
    """Module wrapper so the rate shows in repr and follows train/eval mode."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """Token-wise feed-forward: fc1 -> GELU -> fc2 (dropout-free, as trained)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _relative_position_index(ws: int) -> torch.Tensor:
    """(ws*ws, ws*ws) index into the (2ws-1)^2 bias table for every query/key pair of a window."""
    ys, xs = torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()])  # 2, N
    rel = pos[:, :, None] - pos[:, None, :] + (ws - 1)  # 2, N, N, each in 0..2ws-2
    return rel[0] * (2 * ws - 1) + rel[1]


class WindowAttention(nn.Module):
    """Multi-head self-attention inside ws x ws windows with a learned relative position bias."""

    def __init__(self, dim: int, window_size: int, num_heads: int):
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", _relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def position_bias(self) -> torch.Tensor:
        """(heads, N, N) bias gathered from the table."""
        n = self.window_size * self.window_size
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        return bias.reshape(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (num_windows*B, N, C); mask: (num_windows, N, N) of 0/-100 or None."""
        bw, n, c = x.shape
        h = self.num_heads
        qkv = self.qkv(x).reshape(bw, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn + self.position_bias().unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, h, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(bw, h, n, n)
        attn = attn.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(bw, n, c)
        return self.proj(out)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}"


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B*nW, ws*ws, C), windows in row-major order."""
    b, hh, ww, c = x.shape
    x = x.view(b, hh // ws, ws, ww // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_merge(windows: torch.Tensor, ws: int, hh: int, ww: int) -> torch.Tensor:
    """Inverse of window_partition: (B*nW, ws*ws, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, hh // ws, ww // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, hh, ww, c)


def shifted_window_mask(hh: int, ww: int, ws: int, shift: int) -> torch.Tensor:
    """(nW, N, N) additive mask: -100 between tokens that came from different regions before the roll."""
    region = torch.zeros(1, hh, ww, 1)
    bounds = ((0, -ws), (-ws, -shift), (-shift, None))
    label = 0
    for h0, h1 in bounds:
        for w0, w1 in bounds:
            region[:, slice(h0, h1), slice(w0, w1), :] = label
            label += 1
    win = window_partition(region, ws).squeeze(-1)  # nW, N
    diff = win.unsqueeze(1) - win.unsqueeze(2)
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


class SwinTransformerBlock(nn.Module):
    """(S)W-MSA + MLP with pre-norm residuals; odd blocks of a stage use shifted windows."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], num_heads: int, window_size: int = 7,
                 shift_size: int = 0, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        if min(input_resolution) <= window_size:  # the whole map fits one window: no shifting
            window_size, shift_size = min(input_resolution), 0
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        mask = shifted_window_mask(*input_resolution, window_size, shift_size) if shift_size > 0 else None
        self.register_buffer("atten_mask", mask)  # name kept from the released checkpoints

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H*W, C) tokens at the fixed input resolution."""
        hh, ww = self.input_resolution
        b, n, c = x.shape
        if n != hh * ww:
            raise ValueError(f"Swin block built for {hh}x{ww} tokens got {n}")
        s, ws = self.shift_size, self.window_size
        y = self.norm1(x).view(b, hh, ww, c)
        if s > 0:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        y = self.attn(window_partition(y, ws), mask=self.atten_mask)
        y = window_merge(y, ws, hh, ww)
        if s > 0:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        x = x + self.drop_path(y.reshape(b, n, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 token merge: concat the four neighbours (C -> 4C), LayerNorm, linear to 2C."""

    def __init__(self, input_resolution: tuple[int, int], dim: int):
        super().__init__()
        self.input_resolution = input_resolution
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hh, ww = self.input_resolution
        b, _, c = x.shape
        x = x.view(b, hh, ww, c)
        # the original order (top-left, bottom-left, top-right, bottom-right) fixes the weight layout
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class SwinStage(nn.Module):
    """`depth` blocks alternating regular and shifted windows, then an optional PatchMerging."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], depth: int, num_heads: int,
                 window_size: int, mlp_ratio: float, drop_path: Sequence[float], downsample: bool):
        super().__init__()
        self.blocks = nn.ModuleList([
            SwinTransformerBlock(dim, input_resolution, num_heads, window_size,
                                 0 if i % 2 == 0 else window_size // 2, mlp_ratio, drop_path[i])
            for i in range(depth)])
        self.downsample = PatchMerging(input_resolution, dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class PatchEmbed(nn.Module):
    """Non-overlapping patch x patch conv to embed_dim, then LayerNorm over channels."""

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, H/p * W/p, D)."""
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class SwinTransformer(nn.Module):
    """Swin backbone returning multi-scale maps; classification head omitted.

    num_stages: how many stages to build (PGNet builds len(depths) - 1 = 3). Each built stage except the
    last ends with PatchMerging, as in the original code. The stochastic-depth schedule still spans
    sum(depths), and `norm` keeps the width of the full network, so checkpoints keep their exact layout.
    forward returns [patch embedding, output of each built stage] as (B, C, H, W) maps.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 128,
                 depths: Sequence[int] = (2, 2, 18, 2), num_heads: Sequence[int] = (4, 8, 16, 32),
                 window_size: int = 7, mlp_ratio: float = 4.0, drop_path_rate: float = 0.5,
                 num_stages: int | None = None):
        super().__init__()
        depths, num_heads = tuple(depths), tuple(num_heads)
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {depths} and num_heads {num_heads} differ in length")
        num_stages = len(depths) - 1 if num_stages is None else num_stages
        if not 1 <= num_stages <= len(depths):
            raise ValueError(f"num_stages must be in 1..{len(depths)}, got {num_stages}")
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size = img_size
        self.embed_dim = embed_dim
        self.num_stages = num_stages
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        res = img_size // patch_size
        self.layers = nn.ModuleList()
        for i in range(num_stages):
            r = res // 2 ** i
            self.layers.append(SwinStage(
                embed_dim * 2 ** i, (r, r), depths[i], num_heads[i], window_size, mlp_ratio,
                rates[sum(depths[:i]):sum(depths[:i + 1])], downsample=i < num_stages - 1))
        self.norm = nn.LayerNorm(embed_dim * 2 ** (len(depths) - 1))  # unused, kept for checkpoint layout
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def out_channels(self) -> list[int]:
        """Channels of each returned map."""
        chans = [self.embed_dim]
        for i in range(self.num_stages):
            chans.append(self.embed_dim * 2 ** (i + (1 if i < self.num_stages - 1 else 0)))
        return chans

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b, _, h, w = x.shape
        if (h, w) != (self.img_size, self.img_size):
            raise ValueError(f"Swin built for {self.img_size}x{self.img_size} input got {h}x{w}")
        t = self.patch_embed(x)
        side = h // self.patch_embed.proj.stride[0]
        # contiguous NCHW: a strided view would steer the next convs to channels-last kernels (other rounding)
        outs = [t.transpose(1, 2).reshape(b, -1, side, side).contiguous()]
        for layer in self.layers:
            t = layer(t)
            side = int(round(t.shape[1] ** 0.5))
            outs.append(t.transpose(1, 2).reshape(b, -1, side, side).contiguous())
        return outs


__all__ = ["SwinTransformer", "SwinTransformerBlock", "WindowAttention", "PatchMerging", "PatchEmbed",
           "DropPath", "drop_path", "shifted_window_mask", "window_partition", "window_merge"]
