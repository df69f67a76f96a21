"""Streamed polygonisation: a class map read in row bands gives the polygons of the whole map.

Each band is polygonised on its own (GDAL's polygonize through rasterio.features.shapes), in pixel
coordinates so every vertex is an integer and unions are exact. A polygon that reaches the band's lower edge
stays open; at the next seam it joins the polygons of the next band it is connected to, decided from the two
pixel rows on either side of the seam (same class, and side by side for 4-connectivity, or also diagonal for
8), never from a geometric "intersects" (two squares touching at a corner are not one 4-connected region).
A group whose members no longer reach the band's lower edge is complete: it is unioned once and emitted.

Memory: two bands of pixels plus the open groups. A region that keeps reaching the next band (all land, a
river along the map) is held until it closes, so the worst case is the vertices of the largest region.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import shapely
from affine import Affine
from shapely.geometry import Polygon


@dataclass
class Region:
    """One connected region of one class, in pixel coordinates (x right, y down, integer vertices)."""

    cls: int
    geometry: shapely.Geometry
    pixels: int
    prob_sum: float = 0.0  # sum over its pixels of its class's probability (raster units), when probs are given


@dataclass
class _Group:
    cls: int
    pieces: list[shapely.Geometry] = field(default_factory=list)
    pixels: int = 0
    prob_sum: float = 0.0
    bottom: list[tuple[int, int]] = field(default_factory=list)  # [x0, x1) runs of its pixels on the band's last row


def _piece(coords: list) -> shapely.Geometry:
    return Polygon(coords[0], coords[1:])


def edge_runs(geom: shapely.Geometry, y: float) -> list[tuple[int, int]]:
    """[x0, x1) spans of the exterior ring's horizontal edges lying on the line y (holes never reach a band
    edge: a hole there would not be closed inside the band)."""
    out: list[tuple[int, int]] = []
    polys = geom.geoms if geom.geom_type == "MultiPolygon" else (geom,)
    for p in polys:
        c = shapely.get_coordinates(p.exterior)
        on = c[:, 1] == y
        idx = np.flatnonzero(on[:-1] & on[1:])
        for i in idx:
            a, b = c[i, 0], c[i + 1, 0]
            out.append((int(min(a, b)), int(max(a, b))))
    return out


class _Unions:
    """Union-find over small integer ids."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _seam_pairs(above: np.ndarray, below: np.ndarray, row_a: np.ndarray, row_b: np.ndarray,
                connectivity: int) -> np.ndarray:
    """(group, piece) pairs joined across a seam: owners on either side of it whose pixels share a class and
    touch (by an edge; with 8-connectivity also by a corner)."""
    pairs = []
    n = above.size
    for s in ((0,) if connectivity == 4 else (0, 1, -1)):  # pixel x above against pixel x + s below
        xa = slice(max(0, -s), n - max(0, s))
        xb = slice(max(0, s), n - max(0, -s))
        a, b = above[xa], below[xb]
        m = (a >= 0) & (b >= 0) & (row_a[xa] == row_b[xb])
        if m.any():
            pairs.append(np.stack([a[m], b[m]], 1))
    if not pairs:
        return np.zeros((0, 2), np.int64)
    return np.unique(np.concatenate(pairs), axis=0)


def _canonical(geom: shapely.Geometry) -> shapely.Geometry:
    """The valid form with no redundant vertices, so a region is the same geometry however it was assembled."""
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    return shapely.normalize(shapely.simplify(geom, 0.0))


def polygonize_bands(read_band: Callable[[int, int], np.ndarray], height: int, width: int, wanted: np.ndarray,
                     rows: int, connectivity: int = 4,
                     read_probs: Callable[[int, int, np.ndarray], np.ndarray] | None = None,
                     on_band: Callable[[int, int], None] | None = None) -> Iterator[Region]:
    """Regions of the wanted classes of a (height, width) integer map read band by band; each region is yielded
    once, complete, as soon as the band that closes it has been read.

    read_band(r0, r1) -> (r1-r0, width) classes; wanted: a lookup table, wanted[value] is True for classes to
    keep (values past its end are not wanted). read_probs(r0, r1, classes) -> (r1-r0, width) float, each pixel's
    probability of its own class.
    """
    from rasterio import features

    if connectivity not in (4, 8):
        raise ValueError("connectivity must be 4 or 8")
    pending: list[_Group] = []  # groups reaching the previous band's last row
    prev_row: np.ndarray | None = None
    for r0 in range(0, height, rows):
        r1 = min(r0 + rows, height)
        data = np.asarray(read_band(r0, r1))
        if data.dtype not in (np.uint8, np.uint16, np.int16, np.int32):
            data = data.astype(np.int32)
        in_lut = data < wanted.size
        if data.dtype.kind == "i":
            in_lut &= data >= 0
        mask = np.zeros(data.shape, bool)
        mask[in_lut] = wanted[data[in_lut]]
        shift = Affine.translation(0, r0)
        pieces: list[shapely.Geometry] = []
        classes: list[int] = []
        if mask.any():
            for g, v in features.shapes(data, mask=mask, connectivity=connectivity, transform=shift):
                pieces.append(_piece(g["coordinates"]))
                classes.append(int(v))
        n = len(pieces)
        if connectivity == 8 and n:  # GDAL's 8-connected rings may touch themselves at a corner
            bad = ~shapely.is_valid(np.asarray(pieces, dtype=object))
            for i in np.flatnonzero(bad):
                pieces[i] = shapely.make_valid(pieces[i])
        arr = np.asarray(pieces, dtype=object) if n else np.zeros(0, object)
        pix = np.rint(shapely.area(arr)).astype(np.int64) if n else np.zeros(0, np.int64)
        psum = np.zeros(n)
        if read_probs is not None and n:
            labels = features.rasterize(((p, i + 1) for i, p in enumerate(pieces)), out_shape=data.shape,
                                        transform=shift, fill=0, dtype="int32")
            p = np.asarray(read_probs(r0, r1, data), dtype=np.float64)
            psum = np.bincount(labels.ravel(), weights=p.ravel(), minlength=n + 1)[1:]
        bounds = shapely.bounds(arr) if n else np.zeros((0, 4))
        touches_top = (bounds[:, 1] == r0) & (r0 > 0)
        touches_bottom = (bounds[:, 3] == r1) & (r1 < height)

        # join across the seam at row r0: pending groups (ids 0..G-1) with this band's pieces (G..G+n-1)
        G = len(pending)
        uf = _Unions(G + n)
        if G and touches_top.any():
            above = np.full(width, -1, np.int64)
            for gid, grp in enumerate(pending):
                for x0, x1 in grp.bottom:
                    above[x0:x1] = gid
            below = np.full(width, -1, np.int64)
            for i in np.flatnonzero(touches_top):
                for x0, x1 in edge_runs(pieces[i], r0):
                    below[x0:x1] = i
            for a, b in _seam_pairs(above, below, prev_row, data[0], connectivity):
                uf.union(int(a), G + int(b))
        members: dict[int, list[int]] = {}
        for node in range(G + n):
            members.setdefault(uf.find(node), []).append(node)
        new_pending: list[_Group] = []
        for nodes in members.values():
            grp = _Group(cls=-1)
            open_piece = False
            for node in nodes:
                if node < G:
                    old = pending[node]
                    grp.cls = old.cls
                    grp.pieces.extend(old.pieces)
                    grp.pixels += old.pixels
                    grp.prob_sum += old.prob_sum
                else:
                    i = node - G
                    grp.cls = classes[i]
                    grp.pieces.append(pieces[i])
                    grp.pixels += int(pix[i])
                    grp.prob_sum += float(psum[i])
                    if touches_bottom[i]:
                        open_piece = True
                        grp.bottom.extend(edge_runs(pieces[i], r1))
            if open_piece:
                new_pending.append(grp)
            else:
                yield _finish(grp)
        pending = new_pending
        prev_row = data[-1].copy()
        if on_band is not None:
            on_band(r0, r1)
    for grp in pending:  # only when the last band was never read (height 0)
        yield _finish(grp)


def _finish(grp: _Group) -> Region:
    geom = grp.pieces[0] if len(grp.pieces) == 1 else shapely.union_all(grp.pieces)
    return Region(cls=grp.cls, geometry=_canonical(geom), pixels=grp.pixels, prob_sum=grp.prob_sum)
