"""Bilinear resampling of rasters too large to hold in memory.

PGNet (and its official test script) resizes the whole image to SxS with
bilinear interpolation on half-pixel centres and resizes the SxS logits back
to HxW the same way. For a gigapixel raster neither the input nor the
full-resolution logits fit in memory, so both directions are done here in row
strips with separable weights that reproduce
``F.interpolate(mode="bilinear", align_corners=False, antialias=False)``:

* `resample_reader` reads only the source rows the SxS output depends on,
  at most `strip_rows` rows per windowed read, and accumulates the output;
* `upsample_strips` yields the HxW upsampled map a strip of rows at a time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
from rasterio.windows import Window

from ..geometry import axis_weights

DEFAULT_STRIP_BYTES = 64 << 20


@dataclass(frozen=True)
class LinearWeights:
    """Per output index: the two source indices and their weights (w0 + w1 == 1)."""

    i0: np.ndarray
    i1: np.ndarray
    w0: np.ndarray
    w1: np.ndarray


def linear_weights(in_size: int, out_size: int) -> LinearWeights:
    """1-D weights of F.interpolate(mode='bilinear', align_corners=False, antialias=False), which
    cv2.INTER_LINEAR also computes, so the streamed result matches the in-memory one."""
    aw = axis_weights(in_size, out_size)
    return LinearWeights(aw.i0, aw.i1, (1.0 - aw.w1).astype(np.float32), aw.w1)


def _apply_cols(x: np.ndarray, lw: LinearWeights) -> np.ndarray:
    """Resample the last axis."""
    return x[..., lw.i0] * lw.w0 + x[..., lw.i1] * lw.w1


def strip_rows_for(width: int, channels: int, budget_bytes: int = DEFAULT_STRIP_BYTES) -> int:
    """Rows per read so that one float32 strip stays within budget_bytes."""
    return max(1, int(budget_bytes // max(1, width * channels * 4 * 2)))


def _row_runs(rows: np.ndarray, max_rows: int) -> Iterator[tuple[int, int]]:
    """Contiguous runs of the (sorted, unique) needed rows, each at most max_rows long."""
    if rows.size == 0:
        return
    start = prev = int(rows[0])
    for r in rows[1:]:
        r = int(r)
        if r != prev + 1 or r - start >= max_rows:
            yield start, prev + 1
            start = r
        prev = r
    yield start, prev + 1


def resample_reader(reader, out_h: int, out_w: int, transform: Callable[[np.ndarray], np.ndarray],
                    strip_rows: int | None = None) -> np.ndarray:
    """The (C, out_h, out_w) float32 bilinear resampling of a whole raster, in bounded memory.

    transform maps a raw (C, rows, W) strip to float32 (e.g. scaling and
    normalisation); it must be per-pixel affine, which commutes with the
    interpolation. Only source rows referenced by an output row are read, in
    windows of at most strip_rows rows, so peak memory is one strip plus the
    output, whatever the height of the source.
    """
    H, W = reader.height, reader.width
    rw = linear_weights(H, out_h)
    cw = linear_weights(W, out_w)
    needed = np.unique(np.concatenate([rw.i0, rw.i1]))
    if strip_rows is None:
        strip_rows = strip_rows_for(W, max(1, reader.count))
    out: np.ndarray | None = None
    for a, b in _row_runs(needed, max(1, int(strip_rows))):
        raw = reader.read(Window(0, a, W, b - a))
        strip = np.asarray(transform(raw), dtype=np.float32)
        del raw
        hrows = _apply_cols(strip, cw)  # (C, b-a, out_w)
        del strip
        if out is None:
            out = np.zeros((hrows.shape[0], out_h, out_w), np.float32)
        for idx, wts in ((rw.i0, rw.w0), (rw.i1, rw.w1)):
            sel = np.nonzero((idx >= a) & (idx < b))[0]
            if sel.size:
                out[:, sel] += wts[sel][None, :, None] * hrows[:, idx[sel] - a]
    if out is None:  # unreachable for a non-empty raster; keeps the type checker honest
        out = np.zeros((max(1, reader.count), out_h, out_w), np.float32)
    return out


def upsample_strips(small: np.ndarray, out_h: int, out_w: int, strip_rows: int = 256) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield (r0, r1, rows) of the bilinear upsampling of a 2-D map to out_h x out_w.

    Each strip is computed from the two source rows per output row, so the
    full-resolution map never exists in memory.
    """
    if small.ndim != 2:
        raise ValueError(f"expected a 2-D map, got shape {small.shape}")
    s = np.asarray(small, np.float32)
    rw = linear_weights(s.shape[0], out_h)
    cw = linear_weights(s.shape[1], out_w)
    for r0 in range(0, out_h, strip_rows):
        r1 = min(r0 + strip_rows, out_h)
        rows = s[rw.i0[r0:r1]] * rw.w0[r0:r1, None] + s[rw.i1[r0:r1]] * rw.w1[r0:r1, None]
        yield r0, r1, _apply_cols(rows, cw)
