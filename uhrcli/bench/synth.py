"""Synthetic tiled RGB GeoTIFFs of any size, written by streaming and cached.

Pipeline benchmarks need rasters far larger than memory, and the same ones
on every run so results compare. Each block is written as soon as it is made;
the whole image never exists in RAM. The texture is the bundled Inria aerial
crop when the source tree is present (compression and model behaviour then
resemble a real orthomosaic), otherwise a seeded procedural texture.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

VERSION = 1  # bump when the generator's output changes, so stale cache entries are not reused
_INRIA = Path(__file__).resolve().parents[2] / "examples" / "data" / "austin_inria_crop.tif"


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """Where synthetic rasters (and pipeline runs' outputs) live: `path` (--cache-dir), else $UHR_CACHE_DIR/bench
    ($UHR_CACHE, its older name), else ~/.cache/uhr/bench."""
    env = os.environ.get("UHR_CACHE_DIR") or os.environ.get("UHR_CACHE")
    if path is not None:
        d = Path(path)
    elif env:
        d = Path(env) / "bench"
    else:
        d = Path.home() / ".cache" / "uhr" / "bench"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _texture() -> tuple[np.ndarray, str]:
    """(3, h, w) uint8 texture that tiles seamlessly, and its name (part of the cache key)."""
    if _INRIA.exists():
        import rasterio

        with rasterio.open(_INRIA) as src:
            tex = src.read()[:3]
        name = "inria"
    else:
        rng = np.random.default_rng(0)
        n = 256
        yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
        base = rng.integers(0, 256, (3, n // 16, n // 16)).astype(np.float32)
        coarse = np.kron(base, np.ones((16, 16), np.float32))  # blocky "parcels"
        streets = ((yy % 64 < 4) | (xx % 64 < 4)).astype(np.float32) * 90
        noise = rng.normal(0, 12, (3, n, n))
        tex = np.clip(coarse * 0.7 + streets + noise + 20, 0, 255).astype(np.uint8)
        name = "proc"
    # a mirrored 2x2 mosaic repeats without seams
    mos = np.concatenate([np.concatenate([tex, tex[:, :, ::-1]], 2),
                          np.concatenate([tex[:, ::-1], tex[:, ::-1, ::-1]], 2)], 1)
    return np.ascontiguousarray(mos), name


def make_raster(path: str | os.PathLike, side: int, block: int = 512, compress: str = "deflate") -> Path:
    """Write a side x side 3-band uint8 tiled GeoTIFF to `path` block by block (atomically)."""
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    if side <= 0:
        raise ValueError(f"raster side must be positive, got {side}")
    path = Path(path)
    mos, _ = _texture()
    mh, mw = mos.shape[1:]
    block = min(block, max(16, 16 * (side // 16))) if side < block else block
    profile = dict(driver="GTiff", width=side, height=side, count=3, dtype="uint8", tiled=True,
                   blockxsize=block, blockysize=block, compress=compress, predictor=2, bigtiff="IF_SAFER",
                   crs=CRS.from_epsg(32614), transform=from_origin(620000, 3350000, 0.3, 0.3), photometric="RGB")
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    try:
        with rasterio.Env(GDAL_CACHEMAX=64), rasterio.open(tmp, "w", **profile) as dst:
            for r in range(0, side, block):
                h = min(block, side - r)
                rows = (np.arange(r, r + h) + (r // mh) * 37) % mh
                strip = mos[:, rows]
                for c in range(0, side, block):
                    w = min(block, side - c)
                    cols = (np.arange(c, c + w) + (c // mw) * 53) % mw
                    dst.write(strip[:, :, cols], window=Window(c, r, w, h))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def cached_raster(side: int, cache: str | os.PathLike | None = None) -> tuple[Path, bool]:
    """The synthetic raster of this side from the cache, made first if missing; (path, was_cached)."""
    tex = "inria" if _INRIA.exists() else "proc"
    path = cache_dir(cache) / f"synth_v{VERSION}_{tex}_{side}.tif"
    if path.exists():
        return path, True
    return make_raster(path, side), False
