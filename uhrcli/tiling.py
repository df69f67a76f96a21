"""The splitter: a grid of tiles with a halo, in rasterio windows.

Cores partition the image exactly (each output pixel is owned by one tile)
and start on multiples of the model's total stride, so every strided layer
sees the same phase in a tile as in the whole image. With border='clip' (the
default) read windows are clipped to the image: at the border the network's
own padding acts, exactly as in a whole-image forward, and the halo covers
the seams between tiles. border='mirror' reads full-size windows and mirrors
pixels past the edge (equal tile shapes, but a different function at the
border than the whole-image forward).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from rasterio.windows import Window

BORDERS = ("clip", "mirror")


def ceil_to(x: int, m: int) -> int:
    return -(-x // m) * m


@dataclass(frozen=True)
class AxisTile:
    core_start: int
    core_stop: int
    read_start: int
    read_stop: int


def axis_tiles(n: int, tile: int, multiple: int = 1, halo: int = 0, border: str = "clip") -> list[AxisTile]:
    """Tiles of one axis of length n: balanced cores, each a multiple of `multiple` long but the last."""
    if n <= 0:
        raise ValueError("axis length must be positive")
    if border not in BORDERS:
        raise ValueError(f"border must be one of {BORDERS}, got {border!r}")
    tile = ceil_to(max(tile, multiple), multiple)
    halo = ceil_to(max(0, halo), multiple)
    pieces = -(-n // tile)
    core = ceil_to(-(-n // pieces), multiple)
    out = []
    for s in range(0, n, core):
        e = min(n, s + core)
        if border == "clip":
            out.append(AxisTile(s, e, max(0, s - halo), min(n, e + halo)))
        else:  # full-size windows past the edge; the reader mirrors
            out.append(AxisTile(s, e, s - halo, s + core + halo))
    return out


@dataclass(frozen=True)
class Tile:
    row: int
    col: int
    core: Window  # the output pixels this tile owns
    read: Window  # what the model sees: the core plus the halo

    @property
    def core_in_tile(self) -> tuple[slice, slice]:
        """Slices of a read-window array that hold the core."""
        r0 = int(self.core.row_off - self.read.row_off)
        c0 = int(self.core.col_off - self.read.col_off)
        return slice(r0, r0 + int(self.core.height)), slice(c0, c0 + int(self.core.width))


class TileGrid:
    """Row-major tiles over an image of height x width."""

    def __init__(self, height: int, width: int, tile: int, halo: int = 0, multiple: int = 1,
                 border: str = "clip"):
        if tile <= 0:
            raise ValueError("tile size must be positive")
        if halo < 0:
            raise ValueError("halo must be >= 0")
        self.height, self.width = height, width
        self.multiple, self.border = multiple, border
        self.halo = ceil_to(halo, multiple)
        self.rows = axis_tiles(height, tile, multiple, self.halo, border)
        self.cols = axis_tiles(width, tile, multiple, self.halo, border)
        self.tile_h = self.rows[0].core_stop - self.rows[0].core_start
        self.tile_w = self.cols[0].core_stop - self.cols[0].core_start

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows), len(self.cols)

    @property
    def input_shape(self) -> tuple[int, int]:
        """The largest read window (an interior tile's)."""
        return (max(a.read_stop - a.read_start for a in self.rows),
                max(a.read_stop - a.read_start for a in self.cols))

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    def tile(self, r: int, c: int) -> Tile:
        a, b = self.rows[r], self.cols[c]
        return Tile(
            row=r, col=c,
            core=Window(b.core_start, a.core_start, b.core_stop - b.core_start, a.core_stop - a.core_start),
            read=Window(b.read_start, a.read_start, b.read_stop - b.read_start, a.read_stop - a.read_start),
        )

    def __iter__(self) -> Iterator[Tile]:
        for r in range(len(self.rows)):
            for c in range(len(self.cols)):
                yield self.tile(r, c)

    def out_window(self, tile: Tile, margin: int) -> Window:
        """The core grown by `margin` on the sides that have a neighbour: what a merger needs of a tile."""
        if margin <= 0:
            return tile.core
        c = tile.core
        r0 = int(c.row_off) - (margin if tile.row > 0 else 0)
        r1 = int(c.row_off + c.height) + (margin if tile.row < len(self.rows) - 1 else 0)
        c0 = int(c.col_off) - (margin if tile.col > 0 else 0)
        c1 = int(c.col_off + c.width) + (margin if tile.col < len(self.cols) - 1 else 0)
        r0, r1 = max(0, r0), min(self.height, r1)
        c0, c1 = max(0, c0), min(self.width, c1)
        return Window(c0, r0, c1 - c0, r1 - r0)


def window_slices(inner: Window, outer: Window) -> tuple[slice, slice]:
    """Slices of an array laid over `outer` that hold `inner`."""
    r0 = int(inner.row_off - outer.row_off)
    c0 = int(inner.col_off - outer.col_off)
    return slice(r0, r0 + int(inner.height)), slice(c0, c0 + int(inner.width))
