"""A small overlay PNG (image with the class map tinted over it) for people to look at.

Built by strided reads, so it costs a fraction of a pass even for gigapixel rasters.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from rasterio.windows import Window

from .readers import RasterReader

MAX_SIDE = 2048


def overlay_rgb(image: np.ndarray, classes: np.ndarray, palette: Sequence[Sequence[int]], alpha: float = 0.45,
                nodata: int = 255) -> np.ndarray:
    """(3,h,w) uint8 image + (h,w) classes -> (h,w,3) uint8; class 0 and nodata stay untinted."""
    img = np.moveaxis(image[:3] if image.shape[0] >= 3 else np.repeat(image[:1], 3, 0), 0, -1).astype(np.float32)
    pal = np.zeros((256, 3), np.float32)
    pal[: len(palette)] = np.asarray(palette, np.float32)
    tint = (classes != 0) & (classes != nodata)
    out = img.copy()
    out[tint] = (1 - alpha) * img[tint] + alpha * pal[classes[tint]]
    return np.clip(out, 0, 255).astype(np.uint8)


def write_preview(target: Path, reader: RasterReader, to_uint8: Callable[[np.ndarray], np.ndarray],
                  classes: Callable[[int, int, int], np.ndarray], palette: Sequence[Sequence[int]],
                  max_side: int = MAX_SIDE) -> Path:
    """classes(r0, r1, step) returns rows r0..r1 of the class map, every `step`-th pixel."""
    step = max(1, math.ceil(max(reader.height, reader.width) / max_side))
    rows_img, rows_cls = [], []
    block = step * max(1, 512 // step)
    for r in range(0, reader.height, block):
        h = min(block, reader.height - r)
        data = reader.read(Window(0, r, reader.width, h))[:, ::step, ::step]
        rows_img.append(to_uint8(data))
        rows_cls.append(classes(r, r + h, step))
    rgb = overlay_rgb(np.concatenate(rows_img, 1), np.concatenate(rows_cls, 0), palette)
    from PIL import Image

    Image.fromarray(rgb).save(target, format="PNG")  # the caller writes a temporary name and moves it
    return target
