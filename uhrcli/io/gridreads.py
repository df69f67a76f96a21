"""Reads of a tile grid's windows, in the order the engine reads them, each block of the file decoded once.

Read windows overlap by twice the halo, and a tile row's windows rarely end on the file's block rows: the
blocks across a tile row's bottom edge were decoded for that row and again for the next, since GDAL's block
cache (64 MB, a fixed bound) cannot hold a whole row of blocks of a wide raster. On a 144 MP deflate
GeoTIFF, windows of 1000 rows cost 20.5 ms of CPU per MP to read against 10.2 for windows on block rows.

So a tile row reads from the file only rows it has not seen, extended down to the next block row, and keeps
the rows the next tile row will read again (the halo overlap and the rest of the last block row), for each
column span. Along a tile row the same holds for columns: a tile reads only columns its left neighbour has
not, up to the next block column (shared blocks were decoded twice too: 14.2 against 9.9 ms per MP for
1000-column windows). A striped file (blocks as wide as the raster) is read a whole band of rows at a time: each
strip is decoded for every tile of the row otherwise. What comes out is the file's pixels whichever way
they were fetched; windows the plan does not know are read directly.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from ..tiling import Tile, ceil_to
from .readers import RasterReader

KEEP_BUDGET = 512 << 20  # bytes of rows kept between tile rows; beyond it reads go straight to the file


class GridReads(RasterReader):
    """`reader` seen through a cache for `tiles` read in this order (row-major), by one thread."""

    def __init__(self, reader: RasterReader, tiles: Sequence[Tile]):
        self.inner = reader
        self.path, self.height, self.width = reader.path, reader.height, reader.width
        self.dtype, self.meta = reader.dtype, reader.meta
        self.source_count, self.bands = reader.source_count, reader.bands
        bh, bw = reader.meta.block_shape or (1, 1)
        self.block_h = bh if 0 < bh <= 2048 else 1  # whole-image "blocks" (arrays in memory): no alignment
        self.block_w = bw if 0 < bw <= 2048 else 1
        self.full_width = bw >= self.width and len({(int(t.read.col_off), int(t.read.width)) for t in tiles}) > 1
        spans: list[tuple[int, int]] = []
        for t in tiles:
            s = (int(t.read.row_off), int(t.read.row_off + t.read.height))
            if not spans or spans[-1] != s:
                spans.append(s)
        # each row span's successor: the rows from its read start on are read again by the next tile row
        self._next = {spans[i]: spans[i + 1][0] for i in range(len(spans) - 1)}
        self._spans = set(spans)
        cols: list[tuple[int, int]] = []
        for t in tiles:
            s = (int(t.read.col_off), int(t.read.col_off + t.read.width))
            if s in cols:
                break
            cols.append(s)
        self._next_col = {cols[i]: cols[i + 1][0] for i in range(len(cols) - 1)}
        self._band: dict[str, tuple[int, int, int, np.ndarray]] = {}  # fresh rows of this tile row, by columns
        itemsize = np.dtype(reader.dtype).itemsize * max(1, reader.count + 1)
        widest = max((s[1] - n for s, n in self._next.items()), default=0) + self.block_h
        self.enabled = widest * self.width * itemsize <= KEEP_BUDGET
        self._kept: dict[str, dict[tuple[int, int], tuple[int, np.ndarray]]] = {"data": {}, "mask": {}}

    def _read_block(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        return self._cached("data", self.inner._read_block, r0, r1, c0, c1)

    def _read_mask_block(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray | None:
        return self._cached("mask", self.inner._read_mask_block, r0, r1, c0, c1)

    def _cached(self, kind: str, fetch: Callable[[int, int, int, int], Any], r0: int, r1: int, c0: int,
                c1: int) -> Any:
        nxt = self._next.get((r0, r1))
        if not self.enabled or (r0, r1) not in self._spans:
            return fetch(r0, r1, c0, c1)
        span = (0, self.width) if self.full_width else (c0, c1)
        kept = self._kept[kind]
        parts: list[np.ndarray] = []
        start = r0
        if span in kept:
            k0, held = kept[span]
            k1 = k0 + held.shape[-2]
            if k0 <= r0 < k1:
                parts.append(held[..., r0 - k0:min(r1, k1) - k0, :])
                start = min(r1, k1)
            if self.full_width and k0 <= r0 and r1 <= k1:  # the band is held: every tile of the row is a slice
                return _cols(parts[0], c0, c1, span)
        stop = min(self.height, ceil_to(r1, self.block_h)) if nxt is not None else r1
        if self.full_width:
            stop = max(stop, r1)
        if start < r1:
            fresh = self._fresh(kind, fetch, start, stop, *span)
            if fresh is None:  # every pixel valid: nothing to hold
                kept.pop(span, None)
                return None
            parts.append(fresh)
        whole = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-2)
        out = whole[..., :r1 - r0, :]
        if self.full_width:  # hold the band itself: the row's other tiles are cut from it
            kept[span] = (r0, whole)
        elif nxt is not None and nxt < r0 + whole.shape[-2]:  # rows the next tile row reads again
            lo = max(nxt, r0) - r0
            kept[span] = (r0 + lo, np.ascontiguousarray(whole[..., lo:, :]))
        else:
            kept.pop(span, None)
        return _cols(out, c0, c1, span)

    def _fresh(self, kind: str, fetch: Callable[[int, int, int, int], Any], r0: int, r1: int, c0: int,
               c1: int) -> Any:
        """Rows [r0, r1) x columns [c0, c1) from the file; columns a left neighbour fetched come from it."""
        held = self._band.get(kind)
        parts = []
        start = c0
        if held is not None and held[:2] == (r0, r1) and held[2] <= c0 < held[2] + held[3].shape[-1]:
            h0, a = held[2], held[3]
            parts.append(a[..., c0 - h0:min(c1, h0 + a.shape[-1]) - h0])
            start = min(c1, h0 + a.shape[-1])
        if start < c1:
            stop = min(self.width, ceil_to(c1, self.block_w)) if (c0, c1) in self._next_col else c1
            new = fetch(r0, r1, start, stop)
            if new is None:
                self._band.pop(kind, None)
                return None
            parts.append(new)
        whole = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)
        nxt = self._next_col.get((c0, c1))
        if nxt is not None and nxt < c0 + whole.shape[-1]:  # columns the next tile of the row reads again
            lo = max(nxt, c0) - c0
            self._band[kind] = (r0, r1, c0 + lo, np.ascontiguousarray(whole[..., lo:]))
        else:
            self._band.pop(kind, None)
        return whole[..., :c1 - c0]

    def close(self) -> None:
        self._kept = {"data": {}, "mask": {}}
        self._band = {}


def _cols(a: np.ndarray, c0: int, c1: int, span: tuple[int, int]) -> np.ndarray:
    """Columns [c0, c1) of rows held over `span`, as an array of their own (the held rows are reused)."""
    return np.ascontiguousarray(a[..., c0 - span[0]:c1 - span[0]])


def grid_reads(reader: RasterReader, tiles: Sequence[Tile]) -> RasterReader:
    """`reader` behind a GridReads for `tiles`, unless it holds the image as one block (in memory: nothing to
    decode twice) or is a GridReads already."""
    if isinstance(reader, GridReads) or len(tiles) < 2:
        return reader
    if reader.meta.block_shape is not None and tuple(reader.meta.block_shape) == (reader.height, reader.width):
        return reader
    return GridReads(reader, tiles)
