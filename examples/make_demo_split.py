"""Split the bundled Austin crop into the demo model's training (left 70%) and held-out (right 30%) parts.

Writes georeferenced GeoTIFF windows into OUT/train/{images,masks} and OUT/val/{images,masks}, masks as 0/1,
and OUT/classes.txt (background, building) for `uhr train --classes`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

HERE = Path(__file__).resolve().parent
IMAGE = HERE / "data" / "austin_inria_crop.tif"
MASK = HERE / "data" / "austin_inria_crop_buildings.tif"


def write_window(src: Path, dst: Path, win: Window, binarise: bool) -> None:
    with rasterio.open(src) as ds:
        data = ds.read(window=win)
        profile = ds.profile.copy()
        profile.update(width=int(win.width), height=int(win.height), transform=ds.window_transform(win),
                       compress="deflate", tiled=False)
    if binarise:
        data = (data > 127).astype(np.uint8)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", type=Path)
    ap.add_argument("--train-fraction", type=float, default=0.7)
    a = ap.parse_args()
    with rasterio.open(IMAGE) as ds:
        h, w = ds.height, ds.width
    split = int(round(w * a.train_fraction))
    parts = {"train": Window(0, 0, split, h), "val": Window(split, 0, w - split, h)}
    for name, win in parts.items():
        write_window(IMAGE, a.out / name / "images" / "austin.tif", win, binarise=False)
        write_window(MASK, a.out / name / "masks" / "austin.tif", win, binarise=True)
        print(f"{name}: columns {int(win.col_off)}..{int(win.col_off + win.width)} -> {a.out / name}")
    (a.out / "classes.txt").write_text("background\nbuilding\n")


if __name__ == "__main__":
    main()
