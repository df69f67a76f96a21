"""Class maps as georeferenced zarr that GDAL (QGIS), xarray and rioxarray open as they are.

Zarr format 2, consolidated: GDAL 3.10 (the one rasterio's wheels bundle) reads v2 stores with their
CF `grid_mapping`, but refuses v3 arrays zarr-python 3 writes ("Unsupported codec: bytes"), and
xarray reads v2 consolidated metadata (`.zmetadata`) without a warning. Chunks are zlib-compressed:
every GDAL build reads zlib (blosc and lz4 are optional there).

Layout, as rioxarray writes a dataset (CF conventions):
  classes (y, x) uint8, 255 = nodata; probs (class, y, x) uint8, x/255 (`scale_factor`);
  x, y: pixel-centre coordinates; spatial_ref: the grid mapping (crs_wkt, spatial_ref, GeoTransform);
  levels/<f>/: the same dataset reduced f times (2, 4, ...): classes by 2x2 mode of the level above,
  probs by 2x2 mean, both over valid pixels; listed in an OME-Zarr style `multiscales` attribute.
Every level is written strip by strip from the level above, so memory stays bounded by a strip.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
from affine import Affine

ZARR_FORMAT = 2
CHUNK = 512
MIN_LEVEL_SIDE = 256  # reduce until the longer side fits in this
MAX_FACTOR = 512  # a strip of 512 rows holds whole blocks of every level up to this factor
GRID_MAPPING = "spatial_ref"


def _compressor() -> Any:
    import numcodecs

    return numcodecs.Zlib(level=4)


def level_factors(height: int, width: int, strip: int) -> list[int]:
    """Reduction factors of the overview levels: 2, 4, ... until the longer side fits MIN_LEVEL_SIDE."""
    out: list[int] = []
    f = 1
    while -(-max(height, width) // f) > MIN_LEVEL_SIDE and f * 2 <= min(MAX_FACTOR, strip):
        f *= 2
        out.append(f)
    return out


def mode2x2(classes: np.ndarray, nodata: int) -> np.ndarray:
    """(h, w) -> (ceil(h/2), ceil(w/2)): the most frequent valid class of each 2x2 block (ties: the
    first in row order), nodata where the block holds none."""
    h, w = classes.shape
    a = np.full((h + h % 2, w + w % 2), nodata, classes.dtype)
    a[:h, :w] = classes
    cand = [a[0::2, 0::2], a[0::2, 1::2], a[1::2, 0::2], a[1::2, 1::2]]
    best = np.full(cand[0].shape, nodata, classes.dtype)
    best_n = np.zeros(cand[0].shape, np.uint8)
    for v in cand:
        n = sum(((v == u) & (u != nodata)).astype(np.uint8) for u in cand)
        take = n > best_n
        best = np.where(take, v, best)
        best_n = np.maximum(best_n, n)
    return best


def mean2x2(probs: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(k, h, w) uint8 -> (k, ceil(h/2), ceil(w/2)): the rounded mean over each block's valid pixels."""
    k, h, w = probs.shape
    p = np.zeros((k, h + h % 2, w + w % 2), np.float32)
    m = np.zeros((h + h % 2, w + w % 2), np.float32)
    p[:, :h, :w] = probs
    m[:h, :w] = valid
    p *= m
    s = p[:, 0::2, 0::2] + p[:, 0::2, 1::2] + p[:, 1::2, 0::2] + p[:, 1::2, 1::2]
    n = m[0::2, 0::2] + m[0::2, 1::2] + m[1::2, 0::2] + m[1::2, 1::2]
    return np.rint(np.divide(s, n, out=np.zeros_like(s), where=n > 0)).astype(np.uint8)


def _axis_attrs(crs: Any, axis: str) -> dict[str, Any]:
    geographic = crs is not None and getattr(crs, "is_geographic", False)
    if geographic:
        return {"axis": axis.upper(), "standard_name": "longitude" if axis == "x" else "latitude",
                "units": "degrees_east" if axis == "x" else "degrees_north"}
    attrs: dict[str, Any] = {"axis": axis.upper(), "standard_name": f"projection_{axis}_coordinate"}
    if crs is not None:
        try:
            unit = crs.linear_units
        except Exception:  # noqa: BLE001 - a CRS without a readable unit keeps none
            unit = None
        if unit in ("metre", "meter"):
            attrs["units"] = "m"
    return attrs


class _Level:
    """One dataset (level 0 or an overview) in a group: arrays plus a row buffer that writes whole chunks."""

    def __init__(self, group: Any, height: int, width: int, factor: int, spec: Any, num_classes: int,
                 with_probs: bool, class_attrs: dict[str, Any]):
        self.height, self.width, self.factor = height, width, factor
        self.spec = spec
        chunks = (min(CHUNK, height), min(CHUNK, width))
        t = spec.transform
        georef = t is not None
        gm = {"grid_mapping": GRID_MAPPING} if georef else {}
        self.classes = group.create_array(
            "classes", shape=(height, width), chunks=chunks, dtype="uint8", fill_value=spec.nodata,
            compressors=_compressor(),
            attributes={"_ARRAY_DIMENSIONS": ["y", "x"], "long_name": "class", **gm, **class_attrs})
        self.probs = None
        if with_probs:
            self.probs = group.create_array(
                "probs", shape=(num_classes, height, width), chunks=(1,) + chunks, dtype="uint8", fill_value=None,
                compressors=_compressor(),
                attributes={"_ARRAY_DIMENSIONS": ["class", "y", "x"], "long_name": "class probability",
                            "scale_factor": 1 / 255, "add_offset": 0.0, "scale": 1 / 255,
                            "class_names": list(spec.class_names), **gm})
        if georef:
            self._write_georef(group, t @ Affine.scale(factor))
        self._rows: list[np.ndarray] = []
        self._prows: list[np.ndarray] = []
        self._r0 = 0  # first level row held in the buffer

    def _write_georef(self, group: Any, t: Any) -> None:
        crs = self.spec.crs
        attrs: dict[str, Any] = {"_ARRAY_DIMENSIONS": [],
                                 "GeoTransform": " ".join(repr(float(v)) for v in (t.c, t.a, t.b, t.f, t.d, t.e))}
        if crs is not None:
            wkt = crs.to_wkt()
            attrs.update({"crs_wkt": wkt, "spatial_ref": wkt})
        ref = group.create_array(GRID_MAPPING, shape=(), dtype="int64", fill_value=None, compressors=None,
                                 attributes=attrs)
        ref[...] = 0
        if t.b == 0 and t.d == 0:  # a rotated grid has no 1-D coordinates: GeoTransform alone places it
            for axis, n, start, step in (("x", self.width, t.c, t.a), ("y", self.height, t.f, t.e)):
                arr = group.create_array(axis, shape=(n,), chunks=(min(n, 1 << 16),), dtype="float64",
                                         fill_value=None, compressors=_compressor(),
                                         attributes={"_ARRAY_DIMENSIONS": [axis], **_axis_attrs(crs, axis)})
                arr[:] = start + step * (np.arange(n, dtype=np.float64) + 0.5)

    def add(self, classes: np.ndarray, probs: np.ndarray | None) -> None:
        """Rows of this level, in order; whole chunk rows go to the store as they fill."""
        self._rows.append(classes)
        if probs is not None:
            self._prows.append(probs)
        held = sum(r.shape[0] for r in self._rows)
        if held >= CHUNK or self._r0 + held >= self.height:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        block = np.concatenate(self._rows, axis=0)
        r1 = self._r0 + block.shape[0]
        self.classes[self._r0:r1] = block
        if self.probs is not None and self._prows:
            self.probs[:, self._r0:r1] = np.concatenate(self._prows, axis=1)
        self._r0 = r1
        self._rows, self._prows = [], []


def multiscales(factors: list[int], with_probs: bool) -> list[dict[str, Any]]:
    """OME-Zarr (0.4) style description of the levels, in level-0 pixel units."""
    def entry(name: str, lead: list[dict[str, str]], kind: str, method: str) -> dict[str, Any]:
        pad = [1.0] * len(lead)
        sets = [{"path": name, "coordinateTransformations": [{"type": "scale", "scale": pad + [1.0, 1.0]}]}]
        for f in factors:
            sets.append({"path": f"levels/{f}/{name}", "coordinateTransformations": [
                {"type": "scale", "scale": pad + [float(f), float(f)]},
                {"type": "translation", "translation": [0.0] * len(lead) + [(f - 1) / 2, (f - 1) / 2]}]})
        axes = lead + [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
        return {"version": "0.4", "name": name, "axes": axes, "datasets": sets, "type": kind,
                "metadata": {"method": method}}

    ms = [entry("classes", [], "mode", "2x2 mode of the level above, nodata ignored")]
    if with_probs:
        ms.append(entry("probs", [{"name": "class", "type": "channel"}], "mean",
                        "2x2 mean of the level above over valid pixels"))
    return ms


def write_geozarr(tmp: Path, spec: Any, classes: Callable[[int, int], np.ndarray],
                  probs: Callable[[int, int], np.ndarray] | None, num_classes: int, strip: int) -> tuple[int, int, np.ndarray] | None:
    """Write the store at `tmp` strip by strip; returns the last level-0 strip (for the read-back check)."""
    import zarr

    root = zarr.open_group(str(tmp), mode="w", zarr_format=ZARR_FORMAT)
    factors = level_factors(spec.height, spec.width, strip)
    legacy: dict[str, Any] = {"class_names": list(spec.class_names), "palette": [list(p) for p in spec.palette],
                              "nodata": spec.nodata, **spec.tags}
    if spec.crs is not None:
        legacy["crs"] = spec.crs.to_wkt()  # uhr's own attributes, read by uhr's zarr reader
    if spec.transform is not None:
        legacy["transform"] = list(spec.transform)[:6]
    root.attrs.update({**legacy, "producer": "uhr", "Conventions": "CF-1.8",
                       "multiscales": multiscales(factors, probs is not None)})
    class_attrs = {**legacy, "flag_values": list(range(len(spec.class_names))),
                   "flag_meanings": " ".join("_".join(str(n).split()) or f"class_{i}"
                                             for i, n in enumerate(spec.class_names))}
    levels = [_Level(root, spec.height, spec.width, 1, spec, num_classes, probs is not None, class_attrs)]
    for f in factors:
        g = root.require_group(f"levels/{f}")
        g.attrs.update({"factor": f, "Conventions": "CF-1.8"})
        levels.append(_Level(g, -(-spec.height // f), -(-spec.width // f), f, spec, num_classes,
                             probs is not None, class_attrs))
    last = None
    for r0 in range(0, spec.height, strip):
        r1 = min(r0 + strip, spec.height)
        c = np.asarray(classes(r0, r1))
        p = np.asarray(probs(r0, r1)) if probs is not None else None
        last = (r0, r1, c)
        for i, lv in enumerate(levels):
            if i:
                valid = c != spec.nodata
                p = mean2x2(p, valid) if p is not None else None
                c = mode2x2(c, spec.nodata)
            lv.add(c, p)
    for lv in levels:
        lv.flush()
    zarr.consolidate_metadata(str(tmp), zarr_format=ZARR_FORMAT)
    return last
