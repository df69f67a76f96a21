"""`uhr vectorize` on a synthetic gigapixel class map: seconds, MP/s, polygons and peak RSS.

The map (0 background, 1 building, 2 road; 0.3 m pixels in UTM 14N) is drawn strip by strip, so making it
needs little memory too: one building per 61 px cell (70% of cells), a third of them with a courtyard
(a hole), some reaching their cell's edge and joining their neighbours into terraces, and a road grid every
1000 px that connects across the whole map, the worst case of a region spanning every band (held open until
the last band). 61 is prime to the band height, so buildings cross band seams everywhere.
The vectorisation runs in a fresh process (python -m uhrcli), whose peak RSS is its own.

    nice python benchmarks/vectorize_big.py --side 32000 --out /tmp/vbig
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CELL = 61
ROAD_EVERY, ROAD_WIDTH = 1000, 6


def cell_params(n_cells_y: int, n_cells_x: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (n_cells_y, n_cells_x)
    y0 = rng.integers(2, 20, shape)
    x0 = rng.integers(2, 20, shape)
    y1 = np.minimum(y0 + rng.integers(12, 40, shape), CELL - 2)
    x1 = np.minimum(x0 + rng.integers(12, 40, shape), CELL - 2)
    x1 = np.where(rng.random(shape) < 0.15, CELL, x1)  # terraces: reach the next cell's building
    return {"y0": y0, "x0": x0, "y1": y1, "x1": x1, "present": rng.random(shape) < 0.7,
            "yard": (rng.random(shape) < 0.33) & (y1 - y0 > 12) & (np.minimum(x1, CELL - 2) - x0 > 12)}


def strip(r0: int, r1: int, width: int, p: dict[str, np.ndarray]) -> np.ndarray:
    y = np.arange(r0, r1)[:, None]
    x = np.arange(width)[None, :]
    cy, cx = y // CELL, x // CELL
    ly, lx = y - cy * CELL, x - cx * CELL
    g = lambda k: p[k][cy, cx]  # noqa: E731
    y0, x0, y1, x1 = g("y0"), g("x0"), g("y1"), g("x1")
    inside = g("present") & (ly >= y0) & (ly < y1) & (lx >= x0) & (lx < x1)
    yard = g("yard") & (ly >= y0 + 4) & (ly < y1 - 4) & (lx >= x0 + 4) & (lx < np.minimum(x1, CELL - 2) - 4)
    out = np.where(inside & ~yard, 1, 0).astype(np.uint8)
    road = (y % ROAD_EVERY < ROAD_WIDTH) | (x % ROAD_EVERY < ROAD_WIDTH)
    out[np.broadcast_to(road, out.shape)] = 2
    return out


def write_map(path: Path, side: int) -> None:
    import rasterio
    from affine import Affine

    n = -(-side // CELL) + 1
    p = cell_params(n, n)
    prof = dict(driver="GTiff", width=side, height=side, count=1, dtype="uint8", crs="EPSG:26914", nodata=255,
                transform=Affine(0.3, 0, 600000, 0, -0.3, 3400000), tiled=True, blockxsize=512, blockysize=512,
                compress="deflate", predictor=2, bigtiff="IF_SAFER")
    with rasterio.Env(GDAL_CACHEMAX=128), rasterio.open(path, "w", **prof) as dst:
        for r0 in range(0, side, 128):  # 128 rows: the int64 cell lookups stay ~30 MB each at 32k wide
            r1 = min(r0 + 128, side)
            dst.write(strip(r0, r1, side, p)[None], window=((r0, r1), (0, side)))
        dst.update_tags(class_names=json.dumps(["background", "building", "road"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=32000, help="map side in pixels (32000: 1.02 GP)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/uhr_vectorize_big"))
    ap.add_argument("--format", default="gpkg", help="output suffix: gpkg, fgb, geojson, parquet")
    ap.add_argument("--classes", default="1,2", help="classes to vectorise (default building and road)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    src = args.out / f"map_{args.side}.tif"
    if not src.exists():
        t = time.perf_counter()
        write_map(src, args.side)
        print(f"wrote {src} ({src.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.0f} s", flush=True)
    dst = args.out / f"polygons_{args.side}.{args.format}"
    cmd = [sys.executable, "-m", "uhrcli", "vectorize", str(src), "-o", str(dst), "--classes", args.classes,
           "--overwrite"]
    t = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "300"})
    wall = time.perf_counter() - t
    if run.returncode:
        sys.exit(f"uhr vectorize failed ({run.returncode}): {run.stderr.strip()}")
    line = run.stdout.strip().splitlines()[-1]
    rss = float(re.search(r"peak RSS (\d+) MB", line).group(1))
    polys = int(re.search(r": (\d+) polygons", line).group(1))
    mp = args.side * args.side / 1e6
    print(line)
    print(json.dumps({"megapixels": round(mp, 1), "seconds": round(wall, 1), "mp_per_s": round(mp / wall, 2),
                      "polygons": polys, "peak_rss_mb": rss, "output_mb": round(dst.stat().st_size / 1e6, 1),
                      "within_1gb": rss <= 1024}))


if __name__ == "__main__":
    main()
