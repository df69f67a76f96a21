"""What a class map says about itself: class names, nodata, and the probability raster that goes with it."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from rasterio.windows import Window

from ..errors import InputError
from ..io.readers import RasterReader, gdal_env, open_reader

UHR_NODATA = 255


def open_class_map(path: str | Path) -> RasterReader:
    """A single-band integer raster, read as its values (a palette is the class map's colours, not data)."""
    reader = open_reader(path, expand_palette=False)
    try:
        if reader.count != 1:
            raise InputError(f"{reader.path}: {reader.count} bands; a class map has one band of class ids")
        dt = np.dtype(reader.dtype)
        if dt.kind not in "ub" and not (dt.kind == "i" and dt.itemsize <= 4) or (dt.kind == "u" and dt.itemsize > 2):
            raise InputError(f"{reader.path}: pixel type {dt} is not a class map's (8- to 16-bit unsigned or "
                             f"signed integers)")
    except BaseException:
        reader.close()
        raise
    return reader


def class_names(reader: RasterReader) -> list[str]:
    """Names uhr stored with the map (GeoTIFF/COG tags, zarr attributes); empty when there are none (PNG)."""
    names = None
    path = reader.path
    if reader.meta.driver.startswith("zarr"):
        names = dict(getattr(reader, "_z").attrs).get("class_names")
    else:
        import rasterio

        try:
            with warnings.catch_warnings(), gdal_env():
                warnings.simplefilter("ignore")
                with rasterio.open(path) as ds:
                    tags = ds.tags()
        except rasterio.errors.RasterioError:
            tags = {}
        raw = tags.get("class_names")
        if raw:
            try:
                names = json.loads(raw)
            except ValueError:
                names = None
        if names is None:
            found = {int(k[6:]): v for k, v in tags.items() if k.startswith("class_") and k[6:].isdigit()}
            names = [found.get(i, f"class_{i}") for i in range(max(found) + 1)] if found else None
    return [str(n) for n in names] if isinstance(names, list) else []


def nodata_value(reader: RasterReader) -> int | None:
    """The map's declared nodata; a map that declares none uses uhr's 255."""
    nd = reader.meta.nodata
    if nd is None:
        return UHR_NODATA
    return int(nd) if float(nd).is_integer() else None


def probs_reader(path: str | Path, reader: RasterReader, n_classes: int) -> tuple[RasterReader, Callable]:
    """A probability raster of the map's size and a function giving each pixel's probability of its own class.

    One band per class (uhr's `--probs` output: uint8 as x/255, or real values as they are), or one band for a
    two-class map (the probability of class 1, as uhr's PNG probabilities store it).
    """
    p = open_reader(path, expand_palette=False)
    try:
        if (p.height, p.width) != (reader.height, reader.width):
            raise InputError(f"{p.path}: {p.width}x{p.height} pixels, the class map has {reader.width}x{reader.height}")
        scale = 1 / 255 if np.dtype(p.dtype) == np.uint8 else 1.0
        if n_classes is not None and p.count != n_classes and not (p.count == 1 and n_classes <= 2):
            raise InputError(f"{p.path}: {p.count} band(s) of probabilities for a map of {n_classes} classes "
                             "(expected one band per class)")
        if p.count == 1 and n_classes <= 2:
            def own(r0: int, r1: int, classes: np.ndarray) -> np.ndarray:
                p1 = p.read(Window(0, r0, p.width, r1 - r0))[0].astype(np.float64) * scale
                return np.where(classes == 1, p1, 1.0 - p1)
        elif p.count >= 2:
            def own(r0: int, r1: int, classes: np.ndarray) -> np.ndarray:
                block = p.read(Window(0, r0, p.width, r1 - r0))
                idx = np.clip(classes.astype(np.int64), 0, block.shape[0] - 1)
                out = np.take_along_axis(block, idx[None], 0)[0].astype(np.float64) * scale
                out[(classes < 0) | (classes >= block.shape[0])] = np.nan
                return out
        else:
            raise InputError(f"{p.path}: {p.count} band(s) of probabilities for a map of {n_classes} classes "
                             "(expected one band per class)")
    except BaseException:
        p.close()
        raise
    return p, own
