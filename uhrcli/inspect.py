"""`uhrcli.describe(path)`: what `uhr info` reports, including the memory a run would need."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .featcache import CacheBudget
from .inference import kind_of
from .inference.estimate import estimate_cache_bytes, geometry
from .io.readers import open_reader
from .models import create_model
from .inference.raster import default_tile
from .segment import default_model_name
from .tiling import TileGrid


@dataclass
class MemoryEstimate:
    """Bytes by component for one `uhr segment` run (CPU RAM, or device memory for the model part)."""

    parts: dict[str, int] = field(default_factory=dict)
    disk: dict[str, int] = field(default_factory=dict)  # scratch disk the passes use beside the output

    @property
    def total(self) -> int:
        return sum(self.parts.values())


def estimate_memory(height: int, width: int, bands: int, model_name: str, tile: int | None = None,
                    batch_size: int = 1, merge: str = "crop", num_classes: int | None = None,
                    prefetch: int = 2, cache: CacheBudget | None = None, itemsize: int = 1
                    ) -> tuple[MemoryEstimate, TileGrid]:
    """Bounded by tile size, not image size, except what the deep path keeps of the whole raster.

    Disk parts (features that wait on disk between passes) go to MemoryEstimate.disk.
    """
    kw = {} if num_classes is None else {"num_classes": num_classes}
    model = create_model(model_name, **kw)
    info = model.info
    kind = kind_of(model)
    halo, mult = geometry(kind, info)
    tile = tile or default_tile(kind, torch.device("cpu"))
    grid = TileGrid(height, width, tile, halo, mult)
    ih, iw = grid.input_shape
    k = info.num_classes
    in_flight = (2 * max(2, prefetch * batch_size) + batch_size)  # read queue + write queue + batch
    pixels_in = 0 if kind == "deep" else ih * iw
    parts = {
        "runtime (python, torch, GDAL cache)": 420 << 20,
        "model parameters": sum(p.numel() * p.element_size() for p in model.parameters()),
        # raw pixels travel (normalised on the device); outputs cover the core: classes, or K float32 maps
        "tiles in flight (input + outputs)": in_flight * (bands * itemsize * pixels_in + (k * 4 + 1) * tile * tile),
        "model activations (estimate)": int(info.extra.get("activation_bytes_per_pixel", 96)) * pixels_in * batch_size,
        "scratch chunk writes": 2 * grid.tile_h * grid.tile_w * (1 + k),
    }
    if merge == "blend":
        from .merge import blend_margin

        m, w = blend_margin(grid), grid.width  # two horizontal strips (two rows' sums each), one row of uint8
        parts["blend seam strips and row band"] = (4 * (k + 1) * 4 * 2 * m * w + (1 + k) * grid.tile_h * w
                                                   + (k + 1) * 4 * grid.tile_h * 2 * m * len(grid.cols))
    ram, disk = estimate_cache_bytes(kind, info, height, width, cache or CacheBudget(), bands)
    parts.update(ram)
    return MemoryEstimate(parts, disk), grid


def describe(path: str | os.PathLike, model: str | None = None, tile: int | None = None) -> dict[str, Any]:
    reader = open_reader(path, validate=False)
    try:
        m = reader.meta
        d: dict[str, Any] = {
            "path": str(reader.path), "driver": m.driver, "width": reader.width, "height": reader.height,
            "bands": reader.source_count, "bands_used": reader.bands, "dtype": str(reader.dtype),
            "band_names": m.band_names, "block_shape": m.block_shape, "compression": m.compression,
            "crs": m.crs.to_string() if m.crs is not None else None,
            "crs_geographic": bool(getattr(m.crs, "is_geographic", False)),  # degrees, not metres
            "transform": list(m.transform)[:6] if m.transform is not None else None,
            "nodata": m.nodata, "mask": m.mask_kind, "overviews": m.overviews, **{k: v for k, v in m.extra.items()},
            "size_on_disk": _size(reader.path),
        }
        name = model or default_model_name()
        est, grid = estimate_memory(reader.height, reader.width, len(reader.bands), name, tile=tile,
                                    itemsize=np.dtype(reader.dtype).itemsize)
        d["segment_memory"] = {"model": name, "tile": grid.tile_h, "halo": grid.halo, "tiles": len(grid),
                               "parts": est.parts, "total": est.total, "disk": est.disk}
        return d
    finally:
        reader.close()


def _size(p: Path) -> int:
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size
