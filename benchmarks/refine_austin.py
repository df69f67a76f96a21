"""Training-free refiners on the demo: building IoU on the held-out right 30% of the Austin crop, and MP/s.

The demo model (`examples/isdnet-r18-slim-austin.safetensors`, trained on columns 0-700) segments the whole
1000 x 1000 crop with --probs (as tests/test_demo_model.py does), then `uhrcli.refine.refine` refines those
probabilities with the guided filter and with DenseCRF (if pydensecrf2 is installed), each with its defaults
and with the setting that scores best on the TRAINING columns 0-700 of a small grid (the held-out columns
700-1000 never choose anything). MP/s is the refinement's own (reading, filtering, writing the GeoTIFF),
best of --repeat runs in this process; the segmentation's is printed beside it.

    python benchmarks/refine_austin.py [--json out.json] [--repeat 2]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "examples" / "data" / "austin_inria_crop.tif"
LABELS = ROOT / "examples" / "data" / "austin_inria_crop_buildings.tif"
CKPT = ROOT / "examples" / "isdnet-r18-slim-austin.safetensors"
TRAIN, HELD_OUT = np.s_[:, :700], np.s_[:, 700:]
GUIDED_GRID = [dict(radius=r, eps=e) for r in (1, 2, 4, 8) for e in (1e-4, 1e-3, 1e-2)]
CRF_GRID = [dict(bilateral_sxy=s, bilateral_srgb=c, bilateral_compat=w, gauss_compat=g)
            for s, c, w, g in ((80, 13, 10, 3), (50, 13, 10, 3), (20, 13, 5, 3), (10, 10, 3, 1), (5, 10, 3, 1),
                               (10, 20, 1, 1), (5, 5, 1, 1))]


def iou(building: np.ndarray, truth: np.ndarray, part) -> float:
    p, t = building[part], truth[part]
    return float((p & t).sum() / max(1, (p | t).sum()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="Also write the rows here.")
    ap.add_argument("--repeat", type=int, default=2, help="Timed runs per row (best kept).")
    args = ap.parse_args()

    from uhrcli.refine import crf as C
    from uhrcli.refine import refine
    from uhrcli.refine.guided import guided_filter
    from uhrcli.segment import segment

    with rasterio.open(LABELS) as ds:
        truth = ds.read(1) > 127
    with rasterio.open(IMAGE) as ds:
        image = ds.read()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        t = time.perf_counter()
        seg = segment(str(IMAGE), d / "seg.tif", weights=CKPT, device="cpu", probs=True)[0]
        seg_s = time.perf_counter() - t
        with rasterio.open(d / "seg_probs.tif") as ds:
            probs = ds.read()
        with rasterio.open(d / "seg.tif") as ds:
            base = ds.read(1) == 1
        rows.append({"method": "none", "params": "", "chosen_by": "-", "iou_train": iou(base, truth, TRAIN),
                     "iou_held_out": iou(base, truth, HELD_OUT), "mp_s": seg.height * seg.width / 1e6 / seg_s,
                     "note": "the segmentation itself (demo model, whole image)"})

        def tune(grid, score) -> dict:
            scored = [(score(p), p) for p in grid]
            return max(scored, key=lambda s: s[0])[1]

        def run(method: str, params: dict, chosen: str, **kw) -> None:
            best = float("inf")
            for i in range(args.repeat):
                t = time.perf_counter()
                refine(IMAGE, d / "seg_probs.tif", d / f"{method}.tif", method=method, overwrite=True, **kw)
                best = min(best, time.perf_counter() - t)
            with rasterio.open(d / f"{method}.tif") as ds:
                b = ds.read(1) == 1
            rows.append({"method": method, "params": json.dumps(params), "chosen_by": chosen,
                         "iou_train": iou(b, truth, TRAIN), "iou_held_out": iou(b, truth, HELD_OUT),
                         "mp_s": image.shape[1] * image.shape[2] / 1e6 / best, "note": "refinement alone"})

        run("guided", {"radius": 4, "eps": 1e-3}, "default")
        g = tune(GUIDED_GRID, lambda p: iou(guided_filter(image, probs, p["radius"], p["eps"]).argmax(0) == 1,
                                            truth, TRAIN))
        run("guided", g, "best on train", radius=g["radius"], eps=g["eps"])
        if C.available():
            run("crf", {"bilateral_sxy": 80, "bilateral_srgb": 13, "bilateral_compat": 10}, "default")
            c = tune(CRF_GRID, lambda p: iou(C.dense_crf(image, probs / 255.0, C.CrfParams(**p)).argmax(0) == 1,
                                             truth, TRAIN))
            run("crf", c, "best on train", crf=C.CrfParams(**c))
        else:
            rows.append({"method": "crf", "params": "", "chosen_by": "-", "iou_train": float("nan"),
                         "iou_held_out": float("nan"), "mp_s": float("nan"),
                         "note": "pydensecrf2 not installed (pip install 'uhrcli[crf]')"})

    print(f"{'method':8} {'chosen by':14} {'IoU train':>9} {'IoU held-out':>12} {'MP/s':>6}  params")
    for r in rows:
        print(f"{r['method']:8} {r['chosen_by']:14} {100 * r['iou_train']:8.2f}% {100 * r['iou_held_out']:11.2f}% "
              f"{r['mp_s']:6.2f}  {r['params']} {r['note']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
