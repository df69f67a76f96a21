"""Resizes between scales, taken in the whole image's coordinates.

A network whose input is not a multiple of its total stride resizes its maps
by ratios that are not exactly 2, 4 or 8: the whole image's ratio (e.g.
ceil(H / 8) / H), not a tile's. To reproduce the whole-image forward tile by
tile, every resize between scales is sampled here from the global grids and
then cropped to the tile: source = (dst + 0.5) * in / out - 0.5 over the whole
image (PyTorch's bilinear rule, align_corners=False), and PyTorch's own
'nearest' index rule for the deep branch's shrink.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Placement:
    """Where a tile's input sits in the whole image: its origin (row, col) and the image's size."""

    row: int
    col: int
    height: int
    width: int


def ceil_div(n: int, d: int) -> int:
    return -(-n // d)


def halvings(n: int, times: int) -> int:
    """Size after `times` stride-2 layers (3x3/2 pad 1 convolutions and pools): ceil(n / 2) each time."""
    for _ in range(times):
        n = ceil_div(n, 2)
    return n


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index of every output index for F.interpolate(mode='nearest', size=out_size).

    Taken from PyTorch itself on a float32 ramp (the model's input dtype: the kernel's scale
    arithmetic depends on it), so a view decimated from a file equals the in-memory shrink exactly.
    """
    dtype = torch.float32 if in_size <= 1 << 24 else torch.float64  # exact integers either way
    ramp = torch.arange(in_size, dtype=dtype).view(1, 1, in_size, 1)
    idx = F.interpolate(ramp, size=(out_size, 1), mode="nearest").view(-1)
    return idx.to(torch.int64).numpy()


@dataclass(frozen=True)
class AxisWeights:
    """Bilinear weights for output indices [start, stop) of an axis: two global source indices each."""

    i0: np.ndarray
    i1: np.ndarray
    w1: np.ndarray  # weight of i1; i0 gets 1 - w1

    @property
    def lo(self) -> int:
        return int(self.i0.min())

    @property
    def hi(self) -> int:
        """One past the largest source index used."""
        return int(self.i1.max()) + 1


def axis_weights(in_size: int, out_size: int, start: int = 0, stop: int | None = None,
                 align_corners: bool = False) -> AxisWeights:
    """PyTorch's bilinear (no antialias) weights for outputs [start, stop)."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got {in_size} -> {out_size}")
    stop = out_size if stop is None else stop
    dst = np.arange(start, stop, dtype=np.float64)
    if in_size == out_size:
        i = dst.astype(np.int64)
        return AxisWeights(i, i, np.zeros(len(i), np.float32))
    if align_corners:  # corner centres aligned: src = dst * (in - 1) / (out - 1), in float32 as PyTorch does
        scale = np.float32(in_size - 1) / np.float32(out_size - 1) if out_size > 1 else np.float32(0)
        src = (np.float32(scale) * dst.astype(np.float32)).astype(np.float32)
        i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
        i1 = np.minimum(i0 + 1, in_size - 1)
        w1 = np.where(i1 == i0, 0.0, src - i0).astype(np.float32)
        return AxisWeights(i0, i1, w1)
    # PyTorch's float32 arithmetic for float32 maps: a float32 scale, then one fused multiply-add
    # (emulated exactly: the float64 product of a float32 and a half-integer is exact)
    scale = np.float64(np.float32(in_size) / np.float32(out_size))
    src = np.maximum((scale * (dst + 0.5) - 0.5).astype(np.float32), np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = np.where(i1 == i0, 0.0, src - i0).astype(np.float32)
    return AxisWeights(i0, i1, w1)


def _lerp_rows(x: torch.Tensor, aw: AxisWeights, offset: int) -> torch.Tensor:
    """Interpolate along dim -2 of a contiguous tensor: whole rows are gathered, which is fast."""
    n = x.shape[-2]
    i0 = torch.from_numpy(np.clip(aw.i0 - offset, 0, n - 1)).to(x.device)
    i1 = torch.from_numpy(np.clip(aw.i1 - offset, 0, n - 1)).to(x.device)
    w1 = torch.from_numpy(aw.w1).to(x.device, x.dtype).view(-1, 1)
    return torch.lerp(x.index_select(-2, i0), x.index_select(-2, i1), w1)


def resize_window(x: torch.Tensor, src_origin: tuple[int, int], src_size: tuple[int, int],
                  dst: tuple[int, int, int, int], dst_size: tuple[int, int], clamp: bool = False,
                  align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize of a window of a global map to a window of another global map.

    x: (B, C, h, w) holding global source cells [r, r + h) x [c, c + w), r, c = src_origin, of a map of
    size src_size. dst: (row0, row1, col0, col1) of the destination map of size dst_size. Equals
    F.interpolate(whole_source, dst_size, mode='bilinear')[..., row0:row1, col0:col1] wherever the
    window holds the source cells it needs. When it does not, this raises, or with clamp=True reads
    the window's edge instead (for a tile whose edge lies in its halo, where values are discarded).
    """
    r0, r1, c0, c1 = dst
    if tuple(src_size) == tuple(dst_size):  # bilinear at scale 1 is the identity: a crop
        a, c = r0 - src_origin[0], c0 - src_origin[1]
        if a < 0 or c < 0 or a + (r1 - r0) > x.shape[-2] or c + (c1 - c0) > x.shape[-1]:
            raise ValueError(f"the window holds rows [{src_origin[0]}, {src_origin[0] + x.shape[-2]}) cols "
                             f"[{src_origin[1]}, {src_origin[1] + x.shape[-1]}), not [{r0}, {r1}) x [{c0}, {c1})")
        return x[..., a:a + (r1 - r0), c:c + (c1 - c0)]
    rows = axis_weights(src_size[0], dst_size[0], r0, r1, align_corners)
    cols = axis_weights(src_size[1], dst_size[1], c0, c1, align_corners)
    # crop first so the gathers touch only what they need
    a, b = max(0, rows.lo - src_origin[0]), rows.hi - src_origin[0]
    c, d = max(0, cols.lo - src_origin[1]), cols.hi - src_origin[1]
    if clamp:
        b, d = min(b, x.shape[-2]), min(d, x.shape[-1])
    elif rows.lo < src_origin[0] or cols.lo < src_origin[1] or b > x.shape[-2] or d > x.shape[-1]:
        raise ValueError(f"resize needs source cells rows [{rows.lo}, {rows.hi}) cols [{cols.lo}, {cols.hi}) "
                         f"but the window holds rows [{src_origin[0]}, {src_origin[0] + x.shape[-2]}) "
                         f"cols [{src_origin[1]}, {src_origin[1] + x.shape[-1]})")
    x = x[..., a:b, c:d].contiguous()
    y = _lerp_rows(x, rows, src_origin[0] + a)
    # columns as rows of the transposed map: gathering along the last axis is several times slower
    y = _lerp_rows(y.transpose(-1, -2).contiguous(), cols, src_origin[1] + c)
    return y.transpose(-1, -2).contiguous()


def source_span(src_size: int, dst_size: int, start: int, stop: int, align_corners: bool = False
                ) -> tuple[int, int]:
    """Global source cells [lo, hi) that bilinear outputs [start, stop) read."""
    aw = axis_weights(src_size, dst_size, start, stop, align_corners)
    return aw.lo, aw.hi


__all__ = ["Placement", "ceil_div", "halvings", "nearest_indices", "AxisWeights", "axis_weights",
           "resize_window", "source_span"]
