"""Mergers: write model outputs of tiles into the scratch store.

crop  keeps each tile's core. Exact for a fully convolutional model whose
      receptive field the halo covers; every write is independent, so resume
      works tile by tile.
blend weights each tile with a raised-cosine ramp across every seam between
      tiles (never at the image border: there is no neighbour to hand over to).
      Ramps of neighbours sum to one. Only the seam strips accumulate sums, in
      memory; a finished tile row goes out whole and the strip it shares with
      the next row is kept in the scratch store for a resumed run.
"""
from __future__ import annotations

import math
import threading
from typing import Callable, Optional

import numpy as np
import torch

from .inference import class_map
from .io.writers import NODATA
from .scratch import Scratch
from .tiling import AxisTile, Tile, TileGrid, window_slices

RowsOut = Callable[[int, int, np.ndarray, Optional[np.ndarray]], None]  # (r0, r1, classes, probs or None)


def store_beside_stream(store: Callable[[], None], stream: Callable[[], None] | None) -> None:
    """`store` (the scratch store's write of a band) on a thread of its own while `stream` (the outputs' write of
    the same band) runs here: each compresses the band, and one after the other they held the writer thread
    for both (with --probs they were 60% of it). Errors of either are raised once both are through."""
    if stream is None:
        store()
        return
    failed: list[BaseException] = []

    def run() -> None:
        try:
            store()
        except BaseException as exc:  # noqa: BLE001 - raised on the writer thread below
            failed.append(exc)

    th = threading.Thread(target=run, name="uhr-scratch", daemon=True)
    th.start()
    try:
        stream()
    finally:
        th.join()
    if failed:
        raise failed[0]


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
        """probs: (K, h, w) probabilities, (1, h, w) uint8 classes or (1 + K, h, w) uint8 classes and probabilities
        over the core; None for an all-nodata tile."""
        band = self._band(tile.row)
        c = tile.core
        rows = slice(0, int(c.height))
        cols = slice(int(c.col_off), int(c.col_off + c.width))
        if probs is not None:
            quantised = probs.dtype == np.uint8 and probs.shape[0] > 1  # classes, then probabilities x/255
            band["classes"][rows, cols] = encode(probs[:1] if quantised else probs, valid)
            if "probs" in band:
                q = probs[1:] if quantised else to_uint8_probs(probs)
                band["probs"][:, rows, cols] = q
                if valid is not None:
                    band["probs"][:, rows, cols][:, ~valid] = 0
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

        def store() -> None:
            for c0, c1 in spans:
                self.scratch.classes[rows, c0:c1] = band["classes"][:, c0:c1]
                if self.scratch.probs is not None:
                    self.scratch.probs[:, rows, c0:c1] = band["probs"][:, :, c0:c1]

        out = self.out
        if out is not None and len(spans) == 1 and spans[0] == (0, self.grid.width):
            store_beside_stream(store, lambda: out(rows.start, rows.stop, band["classes"], band.get("probs")))
        else:
            store()
            if out is not None:  # the band's other tiles are in the store
                probs = self.scratch.probs
                out(rows.start, rows.stop, np.asarray(self.scratch.classes[rows]),
                    None if probs is None else np.asarray(probs[:, rows]))
        if len(added) == len(self.grid.cols):  # one write to the done flags, not one per tile (1.7 ms each)
            self.scratch.mark_row_done(r)
        else:
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


class _Seam:
    """The horizontal strip two tile rows share: rows [core_start - m, core_start + m) of the lower row.

    The rows' weighted sums are kept apart (the upper row's, then the lower's) and added only when the strip is
    final, so every pixel's sum has the same rounding whatever order its tiles landed in."""

    def __init__(self, k: int, start: int, rows: int, width: int, masked: bool):
        self.start = start
        self.upper = np.zeros((k + 1, rows, width), np.float32)
        self.lower = np.zeros((k + 1, rows, width), np.float32)
        self.valid = np.ones((rows, width), np.uint8) if masked else None


class _RowBand:
    """A tile row's own rows (no other row's tiles reach them): final pixels as uint8, vertical seams as sums."""

    def __init__(self, k: int, start: int, stop: int, width: int, probs: bool, masked: bool):
        h = stop - start
        self.start, self.stop = start, stop
        self.classes = np.full((h, width), NODATA, np.uint8)
        self.probs = np.zeros((k, h, width), np.uint8) if probs else None
        self.valid = np.ones((h, width), bool) if masked else None
        self.seams: dict[int, np.ndarray] = {}  # column seam c (between tile columns c-1 and c): (K+1, h, 2m)
        self.left = 0  # tiles still to land


def merge_margin(grid: TileGrid, merge: str, requested: int | None = None) -> int:
    """Pixels beyond each core the merger wants from the inferer: known before the inferer prepares its
    passes, whose windows (the bi-path caches) must cover the output windows."""
    return blend_margin(grid, requested) if merge == "blend" else 0


class BlendMerger:
    """Weighted accumulation across seams, in memory.

    A pixel at least m from every interior seam has one tile's weight, exactly 1: it is final when its tile
    lands and goes straight into its row's uint8 buffers (what dividing its sum by its weight would give, to
    the bit). Only the seam strips accumulate float sums: a vertical strip 2m wide between neighbours of a tile
    row, and a horizontal strip 2m tall across the image between tile rows. So no compressed chunk is
    rewritten per tile, and memory holds one row of uint8 outputs and two strips, whatever the raster's size.
    When a tile row is complete its finished rows go out; the strip it shares with the next row is saved in
    the scratch store first, so a resumed run restarts at the next tile row with it.
    """

    def __init__(self, grid: TileGrid, scratch: Scratch, num_classes: int, margin: int | None = None,
                 out: RowsOut | None = None):
        self.grid, self.scratch, self.k, self.out = grid, scratch, num_classes, out
        self.m = self.margin = blend_margin(grid, margin)
        self._masked = scratch.valid is not None
        self._bands: dict[int, _RowBand] = {}
        self._seams: dict[int, _Seam] = {}  # by the lower tile row

    def band(self, r: int) -> tuple[int, int]:
        """Rows tile row r reaches: its cores grown by the ramps."""
        a = self.grid.rows[r]
        lo = a.core_start - (self.m if r > 0 else 0)
        hi = a.core_stop + (self.m if r < len(self.grid.rows) - 1 else 0)
        return max(0, lo), min(self.grid.height, hi)

    def _own(self, r: int) -> tuple[int, int]:
        a, last = self.grid.rows[r], len(self.grid.rows) - 1
        return a.core_start + (self.m if r > 0 else 0), a.core_stop - (self.m if r < last else 0)

    def pending(self) -> list[Tile]:
        start = self.scratch.finalized_rows  # tile rows whose output is final
        if 0 < start < len(self.grid.rows) and self.m > 0:
            seam = self._seam(start)
            seam.upper[...], valid = self.scratch.load_seam(start)
            if seam.valid is not None and valid is not None:
                seam.valid[...] = valid
        return [t for t in self.grid if t.row >= start]

    def finished_bands(self) -> list[tuple[int, int]]:
        """Rows an earlier run finalised, in the order a run writes them."""
        bands = [self._final_rows(r) for r in range(self.scratch.finalized_rows)]
        return [(a, b) for a, b in bands if b > a]

    def _seam(self, r: int) -> _Seam:
        if r not in self._seams:
            start = self.grid.rows[r].core_start - self.m
            self._seams[r] = _Seam(self.k, start, 2 * self.m, self.grid.width, self._masked)
        return self._seams[r]

    def _band(self, r: int) -> _RowBand:
        if r not in self._bands:
            a, b = self._own(r)
            self._bands[r] = _RowBand(self.k, a, b, self.grid.width, self.scratch.probs is not None, self._masked)
            self._bands[r].left = len(self.grid.cols)
        return self._bands[r]

    def add(self, tile: Tile, probs: np.ndarray | None, valid: np.ndarray | None) -> None:
        """probs (K, h, w) and valid (h, w) cover grid.out_window(tile, margin): the core grown by the ramps."""
        g, m, r = self.grid, self.m, tile.row
        band = self._band(r)
        ow = g.out_window(tile, m)
        r0, c0 = int(ow.row_off), int(ow.col_off)
        r1, c1 = r0 + int(ow.height), c0 + int(ow.width)
        core = tile.core
        k0, k1 = int(core.row_off), int(core.row_off + core.height)
        j0, j1 = int(core.col_off), int(core.col_off + core.width)
        if valid is not None and self._masked:  # the valid mask of the core, where finalising will read it
            sr, sc = window_slices(core, ow)
            v = valid[sr, sc]
            self._put_valid(band, r, k0, k1, j0, j1, v)
        if probs is not None:
            wy = ramp_weights(g.rows, r, m, r0, r1)
            wx = ramp_weights(g.cols, tile.col, m, c0, c1)
            last_r, last_c = len(g.rows) - 1, len(g.cols) - 1
            if r > 0:  # the strip shared with the row above
                self._accumulate(self._seam(r).lower, probs, wy, wx, 0, 2 * m, c0)
            if r < last_r:  # the strip shared with the row below
                self._accumulate(self._seam(r + 1).upper, probs, wy, wx, r1 - r0 - 2 * m, r1 - r0, c0)
            a, b = band.start - r0, band.stop - r0  # the own rows, in the tile's array
            if b > a:
                left = (c0, c0 + 2 * m) if tile.col > 0 else (c0, c0)
                right = (c1 - 2 * m, c1) if tile.col < last_c else (c1, c1)
                for (x0, x1), seam_col in ((left, tile.col), (right, tile.col + 1)):
                    if x1 > x0:
                        acc = band.seams.get(seam_col)
                        if acc is None:
                            acc = band.seams[seam_col] = np.zeros((self.k + 1, b - a, 2 * m), np.float32)
                        w = wy[a:b, None] * wx[None, x0 - c0:x1 - c0]
                        acc[: self.k] += probs[:, a:b, x0 - c0:x1 - c0] * w
                        acc[self.k] += w
                # between the seams each pixel has this tile's weight alone, exactly 1: final now
                x0, x1 = left[1], right[0]
                if x1 > x0:
                    self._write_final(band, probs[:, a:b, x0 - c0:x1 - c0], x0, x1)
        band.left -= 1
        if band.left == 0:
            self._finalize(r)

    @staticmethod
    def _accumulate(acc: np.ndarray, probs: np.ndarray, wy: np.ndarray, wx: np.ndarray, a: int, b: int,
                    c0: int) -> None:
        k = acc.shape[0] - 1
        w = wy[a:b, None] * wx[None, :]
        c1 = c0 + w.shape[1]
        acc[:k, :, c0:c1] += probs[:, a:b] * w
        acc[k, :, c0:c1] += w

    def _put_valid(self, band: _RowBand, r: int, k0: int, k1: int, j0: int, j1: int, v: np.ndarray) -> None:
        if band.valid is not None and band.stop > band.start:
            band.valid[:, j0:j1] = v[band.start - k0:band.stop - k0]
        for s in (r, r + 1):  # the strips this core reaches
            if 0 < s < len(self.grid.rows) and self.m > 0:
                seam = self._seam(s)
                a, b = max(k0, seam.start), min(k1, seam.start + 2 * self.m)
                if b > a and seam.valid is not None:
                    seam.valid[a - seam.start:b - seam.start, j0:j1] = v[a - k0:b - k0]

    def _write_final(self, band: _RowBand, p: np.ndarray, x0: int, x1: int) -> None:
        valid = None if band.valid is None else band.valid[:, x0:x1]
        band.classes[:, x0:x1] = encode(p, valid)
        if band.probs is not None:
            q = to_uint8_probs(p)
            if valid is not None:
                q[:, ~valid] = 0
            band.probs[:, :, x0:x1] = q

    def _normalised(self, total: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None,
                                                                               np.ndarray]:
        wsum = total[self.k]
        p = np.where(wsum > 0, total[: self.k] / np.maximum(wsum, 1e-12), 0.0).astype(np.float32)
        ok = (wsum > 0) if valid is None else (valid.astype(bool) & (wsum > 0))
        cls = encode(p, ok)
        q = None
        if self.scratch.probs is not None:
            q = to_uint8_probs(p)
            q[:, ~ok] = 0
        return cls, q, ok

    def _final_rows(self, r: int) -> tuple[int, int]:
        start = self.grid.rows[r].core_start - (self.m if r > 0 else 0)
        stop = self.grid.height if r == len(self.grid.rows) - 1 else self.grid.rows[r].core_stop - self.m
        return max(0, start), stop

    def _finalize(self, r: int) -> None:
        """Tile row r is complete: its strip with the row above and its own rows are final."""
        f0, f1 = self._final_rows(r)
        W = self.grid.width
        band = self._bands.pop(r)
        for c, acc in band.seams.items():  # the vertical seams of the own rows
            x0 = self.grid.cols[c].core_start - self.m
            valid = None if band.valid is None else band.valid[:, x0:x0 + 2 * self.m]
            cls, q, _ = self._normalised(acc, valid)
            band.classes[:, x0:x0 + 2 * self.m] = cls
            if band.probs is not None and q is not None:
                band.probs[:, :, x0:x0 + 2 * self.m] = q
        parts_c, parts_p = [], []
        if r > 0 and self.m > 0:  # the strip shared with the row above, final now
            seam = self._seam(r)
            del self._seams[r]
            cls, q, _ = self._normalised(seam.upper + seam.lower, seam.valid)
            parts_c.append(cls)
            parts_p.append(q)
        parts_c.append(band.classes)
        parts_p.append(band.probs)
        classes = parts_c[0] if len(parts_c) == 1 else np.concatenate(parts_c, axis=0)
        probs = None
        if self.scratch.probs is not None:
            probs = parts_p[0] if len(parts_p) == 1 else np.concatenate(parts_p, axis=1)
        assert classes.shape == (f1 - f0, W), (classes.shape, f0, f1)
        if f1 > f0:
            def store() -> None:
                self.scratch.classes[f0:f1] = classes
                if probs is not None:
                    self.scratch.probs[:, f0:f1] = probs

            out = self.out
            store_beside_stream(store, None if out is None else lambda: out(f0, f1, classes, probs))
        nxt = self._seams.get(r + 1)
        if nxt is not None:  # what this row gave the strip below, for a resumed run
            self.scratch.save_seam(r + 1, nxt.upper, nxt.valid)
        self.scratch.finalized_rows = r + 1
        self.scratch.drop_seam(r)
        self.scratch.mark_row_done(r)
