"""Seconds per 4K photo and peak RSS of `uhr saliency` over a folder, as a user runs it.

Run by hand (a minute or two): python benchmarks/saliency_folder.py --images 10 --size 1024
The folder is made from the real 3492x2328 photo in ../shared/data/photos (public, MIT): each image is a
different crop, flip and tint of it resized to 3840x2160 JPEG, so no two files are alike. The command
runs in a fresh process; its peak RSS is read from the kernel's accounting of that child.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
PHOTO = HERE.parent.parent / "shared" / "data" / "photos" / "cascadepsp_aeroplane.jpg"


def make_folder(n: int, out: Path, size: tuple[int, int] = (3840, 2160)) -> list[Path]:
    """n distinct 4K JPEGs cut from the real photo (cached)."""
    out.mkdir(parents=True, exist_ok=True)
    src = Image.open(PHOTO).convert("RGB")
    w, h = src.size
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = out / f"img{i:02d}.jpg"
        paths.append(p)
        if p.exists():
            continue
        cw, ch = int(w * rng.uniform(0.7, 1.0)), int(h * rng.uniform(0.7, 1.0))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        im = src.crop((x0, y0, x0 + cw, y0 + ch)).resize(size, Image.BILINEAR)
        if i % 2:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        arr = np.asarray(im).astype(np.float32) * rng.uniform(0.85, 1.15, size=3)
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(p, quality=92)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--size", type=int, default=1024, help="the high-resolution branch's input side")
    ap.add_argument("--model", default="pgnet")
    ap.add_argument("--weights", default="random")
    ap.add_argument("--output", default="map", help="uhr saliency --output kinds")
    ap.add_argument("--cache-dir", default=None, help="folder for the photos and maps (default: as uhr bench's, "
                    "$UHR_CACHE_DIR/bench or ~/.cache/uhr/bench)")
    a = ap.parse_args()
    from uhrcli.bench.synth import cache_dir

    cache = cache_dir(a.cache_dir)
    print(f"photos and maps go to {cache}", file=sys.stderr)
    if not PHOTO.exists():
        raise SystemExit(f"needs the real photo {PHOTO}")
    folder = cache / f"photos4k_{a.images}"
    make_folder(a.images, folder)
    out = cache / "saliency_out"
    cmd = [sys.executable, "-m", "uhrcli", "saliency", str(folder), "-o", str(out), "--model", a.model,
           "--weights", a.weights, "--size", str(a.size), "--output", a.output, "--overwrite", "--quiet"]
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if res.returncode != 0:
        raise SystemExit(res.stderr)
    rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"images": a.images, "image_size": "3840x2160", "model": a.model, "size": a.size,
                      "wall_s": round(wall, 2), "s_per_image": round(wall / a.images, 3),
                      "s_per_image_note": "wall clock of the whole command, start-up and model build included",
                      "peak_rss_mb": round(rss_mb, 1)}, indent=2))


if __name__ == "__main__":
    main()
