"""`uhr segment` against the loop a user would write by hand: rasterio windows in, the model, windows out.

The plain loop reads each tile with the same halo, runs the same folded, channels-last model, keeps the
core and writes it into a tiled GeoTIFF; nothing overlaps. `uhr segment` runs the same model and tile on
the same raster. Each run is a fresh process, the two alternate (`--rounds`), and the ratio is taken from
medians, so a shared machine's noise hits both alike.

    python benchmarks/plain_loop.py --sides 6000,12000 --model fcn-tiny --tile 1024
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile

from _child import child  # benchmarks/ is on sys.path when a script here runs

PLAIN = r"""
import json, time, numpy as np, rasterio, torch
from rasterio.windows import Window
from uhrcli.models import build_model
from uhrcli.models.fuse import fold_batchnorm
from uhrcli.proc import peak_rss_mb
torch.manual_seed(0)
net = build_model({model!r}, 'random').eval()
fold_batchnorm(net)
net = net.to(memory_format=torch.channels_last)
info, tile = net.info, {tile}
halo = int(info.receptive_field)
m = max(1, int(info.size_multiple))
halo = -(-halo // m) * m
mean = torch.tensor(info.mean).view(1, 3, 1, 1)
std = torch.tensor(info.std).view(1, 3, 1, 1)
t0 = time.perf_counter()
with rasterio.open({src!r}) as src:
    prof = dict(driver='GTiff', width=src.width, height=src.height, count=1, dtype='uint8', crs=src.crs,
                transform=src.transform, tiled=True, blockxsize=512, blockysize=512, compress='deflate', nodata=255)
    with rasterio.open({dst!r}, 'w', **prof) as dst, torch.inference_mode():
        for r in range(0, src.height, tile):
            for c in range(0, src.width, tile):
                h, w = min(tile, src.height - r), min(tile, src.width - c)
                r0, c0 = max(0, r - halo), max(0, c - halo)
                r1, c1 = min(src.height, r + h + halo), min(src.width, c + w + halo)
                x = torch.from_numpy(src.read(window=Window(c0, r0, c1 - c0, r1 - r0)))[None].float()
                x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
                y = net(x)[0, :, r - r0:r - r0 + h, c - c0:c - c0 + w]
                dst.write(y.argmax(0).to(torch.uint8).numpy(), 1, window=Window(c, r, w, h))
dt = time.perf_counter() - t0
print(json.dumps(dict(seconds=dt, mp_per_s=src.width * src.height / 1e6 / dt, peak_rss_mb=peak_rss_mb())))
"""

SEGMENT = r"""
import json
from uhrcli.segment import segment
from uhrcli.proc import peak_rss_mb

r = segment({src!r}, {dst!r}, model={model!r}, weights='random', overwrite=True, tile={tile})[0]
print(json.dumps(dict(seconds=r.seconds, mp_per_s=r.mpix_per_s, peak_rss_mb=peak_rss_mb())))
"""




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sides", default="6000,12000", help="raster sides (6000: 36 MP, 12000: 144 MP)")
    ap.add_argument("--model", default="fcn-tiny")
    ap.add_argument("--tile", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cache", default=None, help="folder for the synthetic rasters (default ~/.cache/uhr/bench)")
    a = ap.parse_args()
    from uhrcli.bench.synth import cached_raster

    for side in (int(s) for s in a.sides.split(",")):
        src, _ = cached_raster(side, a.cache)
        runs: dict[str, list[dict]] = {"plain": [], "segment": []}
        with tempfile.TemporaryDirectory(prefix="uhr-plain-") as td:
            for _ in range(a.rounds):
                for name, code in (("plain", PLAIN), ("segment", SEGMENT)):
                    runs[name].append(child(code.format(src=str(src), dst=f"{td}/{name}.tif", model=a.model,
                                                        tile=a.tile)))
        med = {k: statistics.median(r["mp_per_s"] for r in v) for k, v in runs.items()}
        print(json.dumps({"side": side, "megapixels": side * side / 1e6, "model": a.model, "tile": a.tile,
                          "plain_mp_per_s": round(med["plain"], 3), "segment_mp_per_s": round(med["segment"], 3),
                          "ratio": round(med["segment"] / med["plain"], 3),
                          "peak_rss_mb": {k: max(r["peak_rss_mb"] for r in v) for k, v in runs.items()}}), flush=True)


if __name__ == "__main__":
    main()
