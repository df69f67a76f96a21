"""Mergers: write model outputs of tiles into the scratch store.

crop  keeps each tile's core. Exact for a fully convolutional model whose
      receptive field the halo covers; every write is independent, so resume
      works tile by tile.
blend weights each tile with a raised-cosine ramp across every seam between
      tiles (never at the image border: there is no neighbour to hand over to).
      Ramps of neighbours sum to one. Sums accumulate in zarr arrays per tile
      row; rows that no later tile touches are finalised and the accumulator
      that fed them dropped, so the scratch holds at most two row bands.
"""
from __future__ import annotations

import math
import numpy as np

from .io.writers import NODATA
from .scratch import Scratch
from .tiling import AxisTile, Tile, TileGrid, window_slices



def to_uint8_probs(p: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(p * 255.0), 0, 255).astype(np.uint8)


def encode(probs: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """Class map from probabilities (K,h,w) (K == 1: binary foreground), or from a uint8 class map (1,h,w)."""
    if probs.dtype == np.uint8:
        cls = probs[0].copy()
    elif probs.shape[0] == 1:
        cls = (probs[0] >= 0.5).astype(np.uint8)
    else:  # argmax over the classes (first on ties) as a running maximum: faster than argmax(0)
        cls = np.zeros(probs.shape[1:], np.uint8)
        best = probs[0].copy()
        for k in range(1, probs.shape[0]):
            better = probs[k] > best
            cls[better] = k
            np.maximum(best, probs[k], out=best)
    if valid is not None:
        cls[~valid] = NODATA
    return cls


class CropMerger:
    """Each tile's core, as it is: the predictor's output covers exactly the core (margin 0)."""

    margin = 0

    def __init__(self, grid: TileGrid, scratch: Scratch):
        self.grid, self.scratch = grid, scratch

    def pending(self) -> list[Tile]:
        done = self.scratch.done_tiles()
        return [t for t in self.grid if not done[t.row, t.col]]

    def add(self, tile: Tile, probs: np.ndarray | None, valid: np.ndarray | None) -> None:
        """probs: (K, h, w) probabilities or (1, h, w) uint8 classes over the core; None for an all-nodata tile."""
        c = tile.core
        rows = slice(int(c.row_off), int(c.row_off + c.height))
        cols = slice(int(c.col_off), int(c.col_off + c.width))
        if probs is None:
            self.scratch.classes[rows, cols] = NODATA
            if self.scratch.probs is not None:
                self.scratch.probs[:, rows, cols] = 0
        else:
            self.scratch.classes[rows, cols] = encode(probs, valid)
            if self.scratch.probs is not None:
                q = to_uint8_probs(probs)
                if valid is not None:
                    q[:, ~valid] = 0
                self.scratch.probs[:, rows, cols] = q
        self.scratch.mark_done(tile.row, tile.col)


def ramp_weights(axis: list[AxisTile], i: int, margin: int, lo: int, hi: int) -> np.ndarray:
    """1-D weight of tile i on pixels [lo, hi): raised-cosine across interior seams only."""
    t = axis[i]
    p = np.arange(lo, hi, dtype=np.float64) + 0.5
    w = np.ones(hi - lo, np.float64)
    if margin == 0:
        return ((p >= t.core_start) & (p < t.core_stop)).astype(np.float32)
    if i > 0:  # seam at core_start
        x = np.clip((p - (t.core_start - margin)) / (2 * margin), 0.0, 1.0)
        w *= 0.5 - 0.5 * np.cos(math.pi * x)
    if i < len(axis) - 1:  # seam at core_stop
        x = np.clip((p - (t.core_stop - margin)) / (2 * margin), 0.0, 1.0)
        w *= 0.5 + 0.5 * np.cos(math.pi * x)
    return w.astype(np.float32)


def blend_margin(grid: TileGrid, requested: int | None = None) -> int:
    """Half-width of the seam ramps: within the halo, and at most half the smallest core."""
    cores = [a.core_stop - a.core_start for a in grid.rows if len(grid.rows) > 1] + \
            [a.core_stop - a.core_start for a in grid.cols if len(grid.cols) > 1]
    m = grid.halo if requested is None else min(requested, grid.halo)
    if cores:
        m = min(m, min(cores) // 2)
    return max(0, m)


class BlendMerger:
    """Weighted accumulation with one zarr accumulator per tile row (K probs + weight sum)."""

    def __init__(self, grid: TileGrid, scratch: Scratch, num_classes: int, margin: int | None = None):
        self.grid, self.scratch, self.k = grid, scratch, num_classes
        self.m = self.margin = blend_margin(grid, margin)
        self._acc: dict[int, object] = {}
        self._row_left: dict[int, int] = {}

    def band(self, r: int) -> tuple[int, int]:
        a = self.grid.rows[r]
        lo = a.core_start - (self.m if r > 0 else 0)
        hi = a.core_stop + (self.m if r < len(self.grid.rows) - 1 else 0)
        return max(0, lo), min(self.grid.height, hi)

    def pending(self) -> list[Tile]:
        start = self.scratch.finalized_rows  # tile rows whose output is final
        # accumulator of the last finalised row is still needed; later ones restart from empty
        for r in range(start, len(self.grid.rows)):
            self.scratch.drop_accumulator(r)
        return [t for t in self.grid if t.row >= start]

    def _accumulator(self, r: int):
        if r not in self._acc:
            lo, hi = self.band(r)
            exists = self.scratch.has_accumulator(r)
            self._acc[r] = self.scratch.accumulator(r, (self.k + 1, hi - lo, self.grid.width),
                                                    self.grid.tile_w, create=not exists)
            self._row_left[r] = len(self.grid.cols)
        return self._acc[r]

    def add(self, tile: Tile, probs: np.ndarray | None, valid: np.ndarray | None) -> None:
        """probs (K, h, w) and valid (h, w) cover grid.out_window(tile, margin): the core grown by the ramps."""
        g = self.grid
        lo, hi = self.band(tile.row)
        acc = self._accumulator(tile.row)
        ow = g.out_window(tile, self.m)
        c_lo, c_hi = int(ow.col_off), int(ow.col_off + ow.width)
        if probs is not None:
            wy = ramp_weights(g.rows, tile.row, self.m, lo, hi)
            wx = ramp_weights(g.cols, tile.col, self.m, c_lo, c_hi)
            w = wy[:, None] * wx[None, :]
            cur = np.asarray(acc[:, :, c_lo:c_hi])
            cur[: self.k] += probs * w
            cur[self.k] += w
            acc[:, :, c_lo:c_hi] = cur
        if valid is not None and self.scratch.valid is not None:
            sr, sc = window_slices(tile.core, ow)
            c = tile.core
            self.scratch.valid[int(c.row_off):int(c.row_off + c.height), int(c.col_off):int(c.col_off + c.width)] = \
                valid[sr, sc].astype(np.uint8)
        self.scratch.mark_done(tile.row, tile.col)
        self._row_left[tile.row] -= 1
        if self._row_left[tile.row] == 0:
            self._finalize(tile.row)

    def _final_rows(self, r: int) -> tuple[int, int]:
        start = self.grid.rows[r].core_start - (self.m if r > 0 else 0)
        stop = self.grid.height if r == len(self.grid.rows) - 1 else self.grid.rows[r].core_stop - self.m
        return max(0, start), stop

    def _finalize(self, r: int) -> None:
        """Rows no later tile touches: sum this row's and the previous row's accumulators."""
        f0, f1 = self._final_rows(r)
        if f1 > f0:
            W = self.grid.width
            step = max(1, self.grid.tile_w)
            for c0 in range(0, W, step):
                c1 = min(W, c0 + step)
                total = np.zeros((self.k + 1, f1 - f0, c1 - c0), np.float32)
                for rr in (r - 1, r):
                    if rr < 0:
                        continue
                    lo, hi = self.band(rr)
                    a, b = max(lo, f0), min(hi, f1)
                    if b > a:
                        acc = self._acc.get(rr) or self.scratch.accumulator(rr, (0, 0, 0), 1, create=False)
                        total[:, a - f0:b - f0] += np.asarray(acc[:, a - lo:b - lo, c0:c1])
                wsum = total[self.k]
                p = np.where(wsum > 0, total[: self.k] / np.maximum(wsum, 1e-12), 0.0)
                valid = None
                if self.scratch.valid is not None:
                    valid = np.asarray(self.scratch.valid[f0:f1, c0:c1]).astype(bool)
                valid = (wsum > 0) if valid is None else (valid & (wsum > 0))
                self.scratch.classes[f0:f1, c0:c1] = encode(p, valid)
                if self.scratch.probs is not None:
                    q = to_uint8_probs(p)
                    q[:, ~valid] = 0
                    self.scratch.probs[:, f0:f1, c0:c1] = q
        self.scratch.finalized_rows = r + 1
        if r - 1 >= 0:
            self.scratch.drop_accumulator(r - 1)
            self._acc.pop(r - 1, None)
        if r == len(self.grid.rows) - 1:
            self.scratch.drop_accumulator(r)
            self._acc.pop(r, None)
