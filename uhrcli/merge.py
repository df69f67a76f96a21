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
from typing import Callable, Optional

import numpy as np
import torch

from .inference import class_map
from .io.writers import NODATA
from .scratch import Scratch
from .tiling import AxisTile, Tile, TileGrid, window_slices

RowsOut = Callable[[int, int, np.ndarray, Optional[np.ndarray]], None]  # (r0, r1, classes, probs or None)


def to_uint8_probs(p: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(p * 255.0), 0, 255).astype(np.uint8)


def encode(probs: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """Class map from probabilities (K,h,w) (K == 1: binary foreground), or from a uint8 class map (1,h,w)."""
    if probs.dtype == np.uint8:
        cls = probs[0].copy()
    elif probs.shape[0] == 1:
        cls = (probs[0] >= 0.5).astype(np.uint8)
    else:  # the inferers' own argmax (first on ties), which orders probabilities as it orders logits
        cls = class_map(torch.from_numpy(np.ascontiguousarray(probs))[None])[0, 0].numpy()
    if valid is not None:
        cls[~valid] = NODATA
    return cls


class CropMerger:
    """Each tile's core, as it is: the predictor's output covers exactly the core (margin 0).

    Cores are gathered into the band of their tile row and the band is written
    in one piece once its last tile lands: one write per chunk instead of a
    read-modify-write of every chunk a tile's core straddles (23 ms per MP of
    waiting on the store, tile by tile, on a 36 MP map). A band's tiles are
    recorded as done when it is written, so an interrupted run redoes at most
    one tile row. `out(r0, r1, classes, probs)`, when given, receives every
    finished band too (the streamed GeoTIFF outputs), whole rows at a time.
    """

    margin = 0

    def __init__(self, grid: TileGrid, scratch: Scratch, out: RowsOut | None = None):
        self.grid, self.scratch, self.out = grid, scratch, out
        self._left: dict[int, int] = {}
        self._bands: dict[int, dict[str, np.ndarray]] = {}  # open bands (tiles may land a little out of order)
        self._added: dict[int, list[Tile]] = {}

    def pending(self) -> list[Tile]:
        done = self.scratch.done_tiles()
        tiles = [t for t in self.grid if not done[t.row, t.col]]
        self._left = {}
        for t in tiles:
            self._left[t.row] = self._left.get(t.row, 0) + 1
        return tiles

    def finished_bands(self) -> list[tuple[int, int]]:
        """Rows an earlier run finished (every tile of their band done), in the order a run writes them."""
        done = self.scratch.done_tiles()
        return [(a.core_start, a.core_stop) for r, a in enumerate(self.grid.rows) if done[r].all()]

    def _band(self, r: int) -> dict[str, np.ndarray]:
        if r not in self._bands:
            a = self.grid.rows[r]
            h, w = a.core_stop - a.core_start, self.grid.width
            self._bands[r] = {"classes": np.full((h, w), NODATA, np.uint8)}
            if self.scratch.probs is not None:
                self._bands[r]["probs"] = np.zeros((self.scratch.probs.shape[0], h, w), np.uint8)
            self._added[r] = []
        return self._bands[r]

    def add(self, tile: Tile, probs: np.ndarray | None, valid: np.ndarray | None) -> None:
        """probs: (K, h, w) probabilities or (1, h, w) uint8 classes over the core; None for an all-nodata tile."""
        band = self._band(tile.row)
        c = tile.core
        rows = slice(0, int(c.height))
        cols = slice(int(c.col_off), int(c.col_off + c.width))
        if probs is not None:
            band["classes"][rows, cols] = encode(probs, valid)
            if "probs" in band:
                q = to_uint8_probs(probs)
                if valid is not None:
                    q[:, ~valid] = 0
                band["probs"][:, rows, cols] = q
        self._added[tile.row].append(tile)
        self._left[tile.row] -= 1
        if self._left[tile.row] == 0:
            self._flush(tile.row)

    def _flush(self, r: int) -> None:
        band, added = self._bands.pop(r), self._added.pop(r)
        a = self.grid.rows[r]
        rows = slice(a.core_start, a.core_stop)
        if len(added) == len(self.grid.cols):  # the whole band in one write
            spans = [(0, self.grid.width)]
        else:  # a row partly done by an earlier run: leave its finished tiles alone
            spans = [(int(t.core.col_off), int(t.core.col_off + t.core.width)) for t in added]
        for c0, c1 in spans:
            self.scratch.classes[rows, c0:c1] = band["classes"][:, c0:c1]
            if self.scratch.probs is not None:
                self.scratch.probs[:, rows, c0:c1] = band["probs"][:, :, c0:c1]
        if self.out is not None:
            if len(spans) == 1 and spans[0] == (0, self.grid.width):
                self.out(rows.start, rows.stop, band["classes"], band.get("probs"))
            else:  # the band's other tiles are in the store
                probs = self.scratch.probs
                self.out(rows.start, rows.stop, np.asarray(self.scratch.classes[rows]),
                         None if probs is None else np.asarray(probs[:, rows]))
        for t in added:
            self.scratch.mark_done(t.row, t.col)


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

    def __init__(self, grid: TileGrid, scratch: Scratch, num_classes: int, margin: int | None = None,
                 out: RowsOut | None = None):
        self.grid, self.scratch, self.k, self.out = grid, scratch, num_classes, out
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

    def finished_bands(self) -> list[tuple[int, int]]:
        """Rows an earlier run finalised, in the order a run writes them."""
        bands = [self._final_rows(r) for r in range(self.scratch.finalized_rows)]
        return [(a, b) for a, b in bands if b > a]

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
            whole = None
            if self.out is not None:  # the finished rows, whole, for the streamed outputs
                whole = (np.empty((f1 - f0, W), np.uint8),
                         None if self.scratch.probs is None else np.empty((self.k, f1 - f0, W), np.uint8))
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
                cls = encode(p, valid)
                self.scratch.classes[f0:f1, c0:c1] = cls
                if whole is not None:
                    whole[0][:, c0:c1] = cls
                if self.scratch.probs is not None:
                    q = to_uint8_probs(p)
                    q[:, ~valid] = 0
                    self.scratch.probs[:, f0:f1, c0:c1] = q
                    if whole is not None and whole[1] is not None:
                        whole[1][:, :, c0:c1] = q
            if whole is not None and self.out is not None:
                self.out(f0, f1, whole[0], whole[1])
        self.scratch.finalized_rows = r + 1
        if r - 1 >= 0:
            self.scratch.drop_accumulator(r - 1)
            self._acc.pop(r - 1, None)
        if r == len(self.grid.rows) - 1:
            self.scratch.drop_accumulator(r)
            self._acc.pop(r, None)
