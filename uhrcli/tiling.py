"""The splitter: a grid of equal-sized tiles with a halo, in rasterio windows.

Every tile has the same input size (tile + 2*halo) so tiles batch together.
Cores partition the image exactly (each output pixel is owned by one tile);
the last row and column shift inward instead of running past the edge, to a
position aligned to the model's total stride so every strided layer sees the
same phase in every tile.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from rasterio.windows import Window


def ceil_to(x: int, m: int) -> int:
    return -(-x // m) * m


def floor_to(x: int, m: int) -> int:
    return (x // m) * m


@dataclass(frozen=True)
class AxisTile:
    start: int  # tile window start (before halo)
    stop: int
    core_start: int
    core_stop: int


def axis_tiles(n: int, tile: int, multiple: int = 1) -> list[AxisTile]:
    """Tiles of one axis of length n."""
    if n <= 0:
        raise ValueError("axis length must be positive")
    tile = ceil_to(max(tile, multiple), multiple)
    if n <= tile:
        t = ceil_to(n, multiple)
        return [AxisTile(0, t, 0, n)]
    # full tiles that end before n, then one aligned tile that covers the end; it
    # overhangs by less than `multiple` pixels, which the reader mirrors
    starts = list(range(0, n - tile, tile)) + [ceil_to(n, multiple) - tile]
    out: list[AxisTile] = []
    for i, s in enumerate(starts):
        core_start = 0 if i == 0 else out[-1].core_stop
        core_stop = n if i == len(starts) - 1 else s + tile
        out.append(AxisTile(s, s + tile, core_start, core_stop))
    return out


@dataclass(frozen=True)
class Tile:
    row: int
    col: int
    core: Window  # the output pixels this tile owns
    window: Window  # the tile proper (tile x tile), may overhang the image by < multiple
    read: Window  # window plus halo on every side: what the model sees

    @property
    def core_in_tile(self) -> tuple[slice, slice]:
        """Slices of the model output (read-window coordinates) that hold the core."""
        r0 = int(self.core.row_off - self.read.row_off)
        c0 = int(self.core.col_off - self.read.col_off)
        return slice(r0, r0 + int(self.core.height)), slice(c0, c0 + int(self.core.width))


class TileGrid:
    """Row-major tiles over an image of height x width."""

    def __init__(self, height: int, width: int, tile: int, halo: int = 0, multiple: int = 1):
        if tile <= 0:
            raise ValueError("tile size must be positive")
        if halo < 0:
            raise ValueError("halo must be >= 0")
        self.height, self.width = height, width
        self.multiple = multiple
        self.halo = ceil_to(halo, multiple)
        self.rows = axis_tiles(height, tile, multiple)
        self.cols = axis_tiles(width, tile, multiple)
        self.tile_h = self.rows[0].stop - self.rows[0].start
        self.tile_w = self.cols[0].stop - self.cols[0].start

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows), len(self.cols)

    @property
    def input_shape(self) -> tuple[int, int]:
        return self.tile_h + 2 * self.halo, self.tile_w + 2 * self.halo

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    def tile(self, r: int, c: int) -> Tile:
        a, b, h = self.rows[r], self.cols[c], self.halo
        return Tile(
            row=r, col=c,
            core=Window(b.core_start, a.core_start, b.core_stop - b.core_start, a.core_stop - a.core_start),
            window=Window(b.start, a.start, b.stop - b.start, a.stop - a.start),
            read=Window(b.start - h, a.start - h, b.stop - b.start + 2 * h, a.stop - a.start + 2 * h),
        )

    def __iter__(self) -> Iterator[Tile]:
        for r in range(len(self.rows)):
            for c in range(len(self.cols)):
                yield self.tile(r, c)

    def row_band(self, r: int) -> tuple[int, int]:
        """Output rows owned by tile row r."""
        return self.rows[r].core_start, self.rows[r].core_stop
