"""uhr eval segment: hand-checked metrics, streamed == whole-array, stem matching, 0/255 and DeepGlobe masks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from uhrcli.evaluate import (LabelDecoder, confusion_matrix, evaluate_paths, evaluate_segmentation,
                             metrics_from_confusion)
from tests.conftest import run_uhr


def _write(path: Path, arr: np.ndarray, nodata: float | None = None) -> Path:
    arr = arr if arr.ndim == 3 else arr[None]
    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1], count=arr.shape[0],
                       dtype=arr.dtype, nodata=nodata) as ds:
        ds.write(arr)
    return path


def test_hand_computed_confusion_case() -> None:
    gt = np.array([0, 0, 0, 1, 1, 2, 2, 2, 255], np.uint8)
    pred = np.array([0, 0, 1, 1, 255, 2, 0, 2, 1], np.uint8)
    cm = confusion_matrix(pred, gt, 3)
    # rows gt, columns pred 0, 1, 2, unlabelled; the last pixel (gt 255) is ignored
    assert cm.tolist() == [[2, 1, 0, 0], [0, 1, 0, 1], [1, 0, 2, 0]]
    m = evaluate_segmentation(pred, gt, 3)
    # IoU0 = 2 / (3 + 3 - 2) = 1/2; IoU1 = 1 / (2 + 2 - 1) = 1/3 (the unlabelled pixel is a miss); IoU2 = 2/3
    assert np.allclose(m.iou, [0.5, 1 / 3, 2 / 3])
    assert m.miou == pytest.approx(0.5)
    assert np.allclose(m.f1, [2 / 3, 0.5, 0.8])  # 2TP / (GT + pred)
    assert m.pixel_accuracy == pytest.approx(5 / 8)
    assert m.unlabelled_fraction == pytest.approx(1 / 8)
    # excluding class 0 from the mean: (1/3 + 2/3) / 2
    assert metrics_from_confusion(cm, mean_excludes=[0]).miou == pytest.approx(0.5)


def test_gt_out_of_range_raises() -> None:
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.zeros(3, np.uint8), np.array([0, 1, 7], np.uint8), 3)


def test_streamed_equals_whole(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, (301, 257)).astype(np.uint8)
    gt[rng.random(gt.shape) < 0.05] = 255
    pred = np.where(rng.random(gt.shape) < 0.7, gt, rng.integers(0, 4, gt.shape)).astype(np.uint8)
    pred[rng.random(gt.shape) < 0.02] = 255
    _write(tmp_path / "gt.tif", gt)
    _write(tmp_path / "pred.tif", pred)
    whole = evaluate_segmentation(pred, gt, 4)
    streamed = evaluate_paths(tmp_path / "pred.tif", tmp_path / "gt.tif", 4, rows=7).metrics
    assert np.array_equal(whole.confusion, streamed.confusion)
    assert streamed.miou == pytest.approx(whole.miou)


def test_gt_0_255_maps_to_classes_and_explicit_ignore(tmp_path: Path) -> None:
    gt = np.zeros((40, 50), np.uint8)
    gt[10:20, 10:30] = 255
    pred = (gt > 0).astype(np.uint8)
    _write(tmp_path / "g.tif", gt)
    _write(tmp_path / "p.tif", pred)
    rep = evaluate_paths(tmp_path / "p.tif", tmp_path / "g.tif", 2)
    assert rep.metrics.miou == pytest.approx(1.0) and rep.metrics.confusion[1, 1] == 200
    assert any("0/255" in n for n in rep.notes)
    rep2 = evaluate_paths(tmp_path / "p.tif", tmp_path / "g.tif", 2, ignore_index=255)
    assert rep2.metrics.confusion.sum() == 40 * 50 - 200  # the 255 pixels left out


def test_unmatched_stems_reported_by_cli(tmp_path: Path) -> None:
    pd, gd = tmp_path / "pred", tmp_path / "gt"
    pd.mkdir(), gd.mkdir()
    a = np.zeros((16, 16), np.uint8)
    a[:8] = 1
    for s in ("a", "b", "c"):
        _write(pd / f"{s}.tif", a)
    for s in ("a", "b", "d"):
        _write(gd / f"{s}.tif", a)
    rep = evaluate_paths(pd, gd, 2)
    assert [p.name for p in rep.unmatched_pred] == ["c.tif"] and [p.name for p in rep.unmatched_gt] == ["d.tif"]
    assert len(rep.files) == 2
    out = run_uhr("eval", "segment", "--pred", str(pd), "--gt", str(gd), "--classes", "2", "--json",
                  str(tmp_path / "m.json"))
    assert out.returncode == 0, out.stderr
    assert "c.tif" in out.stderr and "d.tif" in out.stderr
    d = json.loads((tmp_path / "m.json").read_text())
    assert d["miou"] == pytest.approx(1.0) and d["unmatched_pred"][0].endswith("c.tif")


def test_pred_nodata_counts_as_miss(tmp_path: Path) -> None:
    gt = np.ones((10, 10), np.uint8)
    pred = np.ones((10, 10), np.uint8)
    pred[:5] = 255  # a hole in the map
    m = evaluate_segmentation(pred, gt, 2)
    assert m.iou[1] == pytest.approx(0.5) and m.confusion[1, 2] == 50


def test_deepglobe_colour_decoding() -> None:
    colours = [(0, 0, 0), (0, 255, 255), (255, 255, 0), (255, 0, 255), (0, 255, 0), (0, 0, 255), (255, 255, 255),
               (250, 6, 249)]  # the last: a slightly off magenta (resampling) -> rangeland
    raw = np.array(colours, np.uint8).T.reshape(3, 1, len(colours))
    labels = LabelDecoder(7, "deepglobe")(raw)
    assert labels[0].tolist() == [0, 1, 2, 3, 4, 5, 6, 3]


def test_stem_matching_across_role_tags(tmp_path: Path) -> None:
    from uhrcli.evaluate import match_by_stem

    pairs, up, ug = match_by_stem([Path("12_sat.tif"), Path("13_sat.tif")], [Path("12_mask.png"), Path("14_mask.png")])
    assert [(p.name, g.name) for p, g in pairs] == [("12_sat.tif", "12_mask.png")]
    assert [p.name for p in up] == ["13_sat.tif"] and [g.name for g in ug] == ["14_mask.png"]
