"""Make a large tiled RGB GeoTIFF by streaming, never holding it whole in memory.

The texture is real imagery (the bundled Inria crop) mirrored and shifted
across the canvas, so compression and model behaviour resemble a real
orthomosaic rather than noise or a flat colour.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "examples" / "data" / "austin_inria_crop.tif"


def make_raster(path: Path, megapixels: float, block: int = 512, compress: str = "deflate") -> Path:
    side = int(math.sqrt(megapixels * 1e6))
    side -= side % 16
    with rasterio.open(SOURCE) as src:
        tex = src.read()
        crs = src.crs
    th, tw = tex.shape[1:]
    # a mirrored 2x2 mosaic tiles seamlessly
    mos = np.concatenate([np.concatenate([tex, tex[:, :, ::-1]], 2), np.concatenate([tex[:, ::-1], tex[:, ::-1, ::-1]], 2)], 1)
    mh, mw = mos.shape[1:]
    profile = dict(driver="GTiff", width=side, height=side, count=3, dtype="uint8", tiled=True,
                   blockxsize=block, blockysize=block, compress=compress, predictor=2, bigtiff="YES",
                   crs=crs, transform=from_origin(620000, 3350000, 0.3, 0.3), photometric="RGB")
    tmp = path.with_name(path.name + ".tmp")
    with rasterio.Env(GDAL_CACHEMAX=64), rasterio.open(tmp, "w", **profile) as dst:
        for r in range(0, side, block):
            h = min(block, side - r)
            rows = (np.arange(r, r + h) + (r // mh) * 37) % mh
            strip = mos[:, rows]
            for c in range(0, side, block):
                w = min(block, side - c)
                cols = (np.arange(c, c + w) + (c // mw) * 53) % mw
                dst.write(strip[:, :, cols], window=Window(c, r, w, h))
    tmp.rename(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", type=Path)
    ap.add_argument("--megapixels", type=float, default=100)
    a = ap.parse_args()
    make_raster(a.out, a.megapixels)


if __name__ == "__main__":
    main()
