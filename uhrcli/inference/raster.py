"""A raster's whole prediction through the same inferer and engine as `uhr segment`, into memory.

Training's validation, `uhr bench`'s model-only loop and tests use this, so
the map they score is the map deployment writes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..engine import EngineStats, Preprocess, run_tiles
from ..merge import merge_margin
from ..io.readers import RasterReader
from ..io.scaling import make_scaler
from ..scratch import MemoryScratch
from ..tiling import TileGrid
from . import Inferer, InferOptions, kind_of, make_inferer


def default_tile(kind: str, device: torch.device) -> int:
    """Tile edge by inferer kind and device: the halo's share of the work falls as tiles grow, memory rises."""
    if kind == "bipath":
        return 4096 if device.type == "cuda" else 2048
    return 2048 if device.type == "cuda" else 1024


def plan(model: torch.nn.Module, height: int, width: int, device: torch.device, options: InferOptions,
         tile: int | None = None, halo: int | None = None) -> tuple[Inferer, TileGrid]:
    """The model's inferer and the tile grid it runs on (default tile and exact halo unless given)."""
    inferer = make_inferer(model, device, options)
    tile = tile or default_tile(kind_of(model), device)
    grid = TileGrid(height, width, tile, inferer.halo if halo is None else halo, inferer.multiple, options.border)
    return inferer, grid


def inferer_report(inferer: Inferer) -> dict:
    """What an inferer did, as plain numbers (phase seconds, shallow runs, cache tiers), for reports."""
    st = getattr(inferer, "stats", None)
    out = {} if st is None else {k: v for k, v in vars(st).items() if k != "means"}
    run = getattr(inferer, "run", None)
    if run is not None:
        out["bytes_to_device"] = int(run.bytes_in)
    return out


@dataclass
class Prediction:
    classes: np.ndarray  # (H, W) uint8, 255 where the input is nodata
    probs: np.ndarray | None  # (K, H, W) uint8, p x 255
    stats: EngineStats


def infer_raster(model: torch.nn.Module, reader: RasterReader, *, device: torch.device | str = "cpu",
                 preprocess: Preprocess | None = None, stretch: str = "auto", tile: int | None = None,
                 halo: int | None = None, probs: bool = False, merge: str = "crop", batch_size: int = 1,
                 options: InferOptions | None = None, progress: Callable | None = None) -> Prediction:
    """Class map (and probabilities) of a whole raster, computed as `uhr segment` computes it."""
    device = torch.device(device)
    info = model.info
    pre = preprocess or Preprocess(make_scaler(reader, stretch), info.mean, info.std)
    inferer, grid = plan(model, reader.height, reader.width, device, options or InferOptions(), tile, halo)
    scratch = MemoryScratch(reader.height, reader.width, info.num_classes, grid.shape, probs,
                            masked=reader.meta.mask_kind != "none")
    try:
        inferer.out_margin = merge_margin(grid, merge)
        inferer.prepare(reader, pre, grid, progress)
        stats = run_tiles(reader, grid, inferer, scratch, merge=merge, batch_size=batch_size)
    finally:
        inferer.close()
    return Prediction(scratch.classes, scratch.probs, stats)
