"""End-to-end `uhr segment` throughput and memory against the model alone, on the same tiles.

Run by hand (minutes): python benchmarks/engine_throughput.py --sizes 100,1000
Each measurement runs in a fresh process so peak RSS is that run's alone.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("UHR_BENCH_CACHE", "/tmp/uhr-bench"))


def _child(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


SEGMENT = r"""
import json, resource, sys, time
from uhrcli.segment import segment
r = segment({src!r}, {dst!r}, model={model!r}, weights='random', tile={tile}, batch_size={batch}, overwrite=True)[0]
print(json.dumps(dict(seconds=r.seconds, engine_seconds=r.stats.seconds, model_seconds=r.stats.model_seconds,
    read_seconds=r.stats.read_seconds, write_seconds=r.stats.write_seconds, tiles=r.stats.tiles,
    pixels=r.height * r.width, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
"""

MODEL_ONLY = r"""
import json, resource, time, numpy as np, torch
from uhrcli.models import build_model
from uhrcli.predictors import TilePredictor
from uhrcli.tiling import TileGrid, ceil_to
from uhrcli.io.readers import open_reader
m = build_model({model!r}, 'random')
r = open_reader({src!r}); H, W = r.height, r.width; r.close()
mult = m.info.size_multiple
g = TileGrid(H, W, ceil_to({tile}, mult), ceil_to(m.info.receptive_field, mult), mult)
p = TilePredictor(m, torch.device('cpu')); p.classes_only = True  # as in the crop run
ih, iw = g.input_shape
rng = np.random.default_rng(0)
x = rng.standard_normal((min({batch}, len(g)), 3, ih, iw)).astype(np.float32)
tiles = list(g)
p(x, tiles[:len(x)])  # warm-up
t = time.perf_counter()
for i in range(0, len(tiles), len(x)):
    p(x[: len(tiles[i:i + len(x)])], tiles[i:i + len(x)])
dt = time.perf_counter() - t
print(json.dumps(dict(seconds=dt, tiles=len(tiles), pixels=H * W,
    peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="100,1000", help="megapixels, comma-separated")
    ap.add_argument("--model", default="fcn-tiny")
    ap.add_argument("--tile", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=1)
    a = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from make_raster import make_raster

    CACHE.mkdir(parents=True, exist_ok=True)
    rows = []
    for mp in [float(s) for s in a.sizes.split(",")]:
        src = CACHE / f"rgb_{int(mp)}mp.tif"
        if not src.exists():
            t = time.perf_counter()
            make_raster(src, mp)
            print(f"made {src} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        dst = CACHE / f"mask_{int(mp)}mp.tif"
        seg = _child(SEGMENT.format(src=str(src), dst=str(dst), model=a.model, tile=a.tile, batch=a.batch))
        mod = _child(MODEL_ONLY.format(src=str(src), model=a.model, tile=a.tile, batch=a.batch))
        e2e = seg["pixels"] / 1e6 / seg["seconds"]
        model_only = mod["pixels"] / 1e6 / mod["seconds"]
        row = dict(megapixels=seg["pixels"] / 1e6, tiles=seg["tiles"], e2e_seconds=round(seg["seconds"], 1),
                   e2e_mps=round(e2e, 2), model_only_mps=round(model_only, 2), ratio=round(e2e / model_only, 3),
                   peak_rss_mb=round(seg["peak_rss_mb"]), model_only_rss_mb=round(mod["peak_rss_mb"]),
                   read_s=round(seg["read_seconds"], 1), write_s=round(seg["write_seconds"], 1),
                   model_s_in_run=round(seg["model_seconds"], 1))
        rows.append(row)
        print(json.dumps(row), flush=True)
    if len(rows) > 1:
        print(json.dumps({"rss_growth_largest_vs_smallest": round(rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"] - 1, 3)}))


if __name__ == "__main__":
    main()
