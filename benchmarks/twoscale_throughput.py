"""Two-scale ISDNet end to end (`uhr segment`, default options) against one whole-image forward at 2448.

Run by hand (tens of minutes on 2 cores):
    python benchmarks/twoscale_throughput.py --side 10000            # 100 MP
    python benchmarks/twoscale_throughput.py --side 31623 --no-whole  # 1 GP: time and peak RSS only
Every measurement runs in a fresh process (peak RSS is that run's alone); the whole-image forward is timed
before and after the segment run and averaged, so the ratio is taken in one sitting on a shared machine.
"""
from __future__ import annotations

import argparse
import json
import tempfile

from _child import child  # benchmarks/ is on sys.path when a script here runs

WHOLE = r"""
import json, time, torch
from uhrcli.models import build_model
from uhrcli.models.fuse import fold_batchnorm
torch.manual_seed(0)
m = build_model('isdnet-r18', 'random').eval()
fold_batchnorm(m)
m = m.to(memory_format=torch.channels_last)
x = torch.randn(1, 3, 2448, 2448).contiguous(memory_format=torch.channels_last)
lat = []
with torch.inference_mode():
    m(x)
    for _ in range({iters}):
        t = time.perf_counter(); m(x); lat.append(time.perf_counter() - t)
lat.sort()
print(json.dumps(dict(seconds=lat[len(lat) // 2], mp_per_s=2448 * 2448 / 1e6 / lat[len(lat) // 2])))
"""

SEGMENT = r"""
import json, resource
from uhrcli.segment import segment

r = segment({src!r}, {dst!r}, model='isdnet-r18', weights='random', overwrite=True, **{opts!r})[0]
print(json.dumps(dict(seconds=r.seconds, mp_per_s=r.mpix_per_s, pixels=r.height * r.width,
    peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, tiles=r.stats.tiles,
    tile=r.stats.extra.get('tile'), halo=r.stats.extra.get('halo'), inferer=r.stats.extra.get('inferer'))))
"""




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--side", type=int, default=10000, help="raster side in pixels (10000: 100 MP)")
    ap.add_argument("--tile", type=int, default=None, help="segment's --tile (default: its own default)")
    ap.add_argument("--cache-ram", default=None, help="segment's --cache-ram, e.g. 512M")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--no-whole", action="store_true", help="skip the whole-image forward")
    ap.add_argument("--cache", default=None, help="folder for the synthetic raster (default ~/.cache/uhr/bench)")
    a = ap.parse_args()
    from uhrcli.bench.synth import cached_raster
    from uhrcli.units import parse_size

    src, cached = cached_raster(a.side, a.cache)
    print(json.dumps({"raster": str(src), "side": a.side, "was_cached": cached}), flush=True)
    opts = {}
    if a.tile:
        opts["tile"] = a.tile
    if a.cache_ram:
        opts["cache_ram"] = parse_size(a.cache_ram)
    whole = [] if a.no_whole else [child(WHOLE.format(iters=a.iters))]
    with tempfile.TemporaryDirectory(prefix="uhr-2s-", dir=str(src.parent)) as d:
        seg = child(SEGMENT.format(src=str(src), dst=f"{d}/mask.tif", opts=opts))
    if not a.no_whole:
        whole.append(child(WHOLE.format(iters=a.iters)))
    row = {"megapixels": round(seg["pixels"] / 1e6, 1), "segment_seconds": round(seg["seconds"], 1),
           "segment_mp_per_s": round(seg["mp_per_s"], 3), "peak_rss_mb": round(seg["peak_rss_mb"]),
           "tile": seg["tile"], "halo": seg["halo"], "tiles": seg["tiles"], "inferer": seg["inferer"]}
    if whole:
        w = sum(x["mp_per_s"] for x in whole) / len(whole)
        row.update(whole_2448_mp_per_s=[round(x["mp_per_s"], 3) for x in whole],
                   ratio=round(seg["mp_per_s"] / w, 3))
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
