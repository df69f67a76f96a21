"""End-to-end `uhr segment` throughput and memory against the model alone, on the same tiles.

Run by hand (minutes): python benchmarks/engine_throughput.py --sizes 100,1000
Each measurement runs in a fresh process so peak RSS is that run's alone.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

from _child import child  # benchmarks/ is on sys.path when a script here runs

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
from uhrcli.inference import InferOptions
from uhrcli.inference.raster import plan
from uhrcli.io.readers import open_reader
from uhrcli.models import build_model
from uhrcli.models.fuse import fold_batchnorm
m = build_model({model!r}, 'random'); fold_batchnorm(m.eval())
r = open_reader({src!r}); H, W = r.height, r.width; r.close()
inf, g = plan(m, H, W, torch.device('cpu'), InferOptions(), tile={tile})
inf.classes_only = True  # as in the crop run
inf.prepare(None, None, g)
rng = np.random.default_rng(0)
xs = {{}}  # one random input per read-window shape: the model's work without decoding or writing
tiles = list(g)
t = time.perf_counter()
for tl in tiles:
    shape = (int(tl.read.height), int(tl.read.width))
    if shape not in xs:
        xs[shape] = rng.standard_normal((1, 3) + shape).astype(np.float32)
    inf(xs[shape], [tl])
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
    ap.add_argument("--cache", default=None, help="folder for the synthetic rasters (default ~/.cache/uhr/bench)")
    a = ap.parse_args()
    from uhrcli.bench.synth import cached_raster

    rows = []
    for mp in [float(s) for s in a.sizes.split(",")]:
        t = time.perf_counter()
        src, cached = cached_raster(int(math.sqrt(mp * 1e6)) // 16 * 16, a.cache)
        if not cached:
            print(f"made {src} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        dst = src.with_name(src.stem + "_mask.tif")
        seg = child(SEGMENT.format(src=str(src), dst=str(dst), model=a.model, tile=a.tile, batch=a.batch))
        mod = child(MODEL_ONLY.format(src=str(src), model=a.model, tile=a.tile, batch=a.batch))
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
