"""The shipped demo checkpoint: it loads from its own metadata and really finds the buildings it was not
trained on (the right 30% of the bundled image, held out in examples/make_demo_split.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio

from uhrcli.segment import segment

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CKPT = EXAMPLES / "isdnet-r18-slim-austin.safetensors"
IMAGE = EXAMPLES / "data" / "austin_inria_crop.tif"
MASK = EXAMPLES / "data" / "austin_inria_crop_buildings.tif"


def test_demo_checkpoint_held_out_building_iou(tmp_path: Path) -> None:
    out = tmp_path / "mask.tif"
    segment(str(IMAGE), out, weights=CKPT, device="cpu", preview=True)
    with rasterio.open(out) as ds, rasterio.open(IMAGE) as src, rasterio.open(MASK) as gt_ds:
        pred, truth = ds.read(1), gt_ds.read(1) > 127
        assert ds.crs == src.crs and ds.transform == src.transform
    held_out = np.s_[:, 700:]
    p, t = pred[held_out] == 1, truth[held_out]
    iou = (p & t).sum() / (p | t).sum()
    assert iou > 0.45, iou  # measured 0.498 here; examples/README.md reports 0.528 for the part alone (`uhr eval`)
    assert (tmp_path / "mask_preview.png").stat().st_size > 0
