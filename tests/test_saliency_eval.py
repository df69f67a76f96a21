"""`uhr eval saliency`: metrics against pysodmetrics called directly, boundary IoU, matching by stem."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_erosion

from tests.conftest import SALIENCY_STEMS, run_uhr
from uhrcli.errors import InputError
from uhrcli.metrics.saliency import MissingDependencyError, boundary_iou, evaluate_saliency_dirs, mask_boundary

STEMS = SALIENCY_STEMS


@pytest.fixture()
def gt_dir(tmp_path: Path, saliency_pairs: Path) -> Path:
    d = tmp_path / "gt"
    d.mkdir()
    for s in STEMS:
        shutil.copy(saliency_pairs / f"{s}.png", d / f"{s}.png")
    return d


def _degrade(gt: np.ndarray) -> np.ndarray:
    """Eroded by 4 px, shifted by 9 px, softened: a plausible imperfect saliency map."""
    m = binary_erosion(gt > 128, iterations=4)
    m = np.roll(m, 9, axis=1).astype(np.float64)
    ramp = np.linspace(0.0, 0.3, m.shape[1])[None]
    return np.clip(np.rint((0.85 * m + ramp * (1 - m)) * 255), 0, 255).astype(np.uint8)


def test_perfect_prediction(gt_dir: Path, tmp_path: Path) -> None:
    res = evaluate_saliency_dirs(gt_dir, gt_dir)
    m = res["metrics"]
    assert res["n_images"] == 2 and m["mae"] == 0.0
    assert m["s_measure"] == pytest.approx(1.0) and m["max_f"] == pytest.approx(1.0)
    assert m["boundary_iou"] == 1.0 and m["weighted_f"] == pytest.approx(1.0)


def test_degraded_prediction_matches_pysodmetrics(gt_dir: Path, tmp_path: Path) -> None:
    import py_sod_metrics as sod

    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    mae, sm, em, wfm = sod.MAE(), sod.Smeasure(), sod.Emeasure(), sod.WeightedFmeasure()
    fm = sod.FmeasureV2(metric_handlers={"fm": sod.FmeasureHandler(with_dynamic=True, with_adaptive=True, beta=0.3)})
    for s in STEMS:
        gt = np.asarray(Image.open(gt_dir / f"{s}.png"))
        pred = _degrade(gt)
        Image.fromarray(pred).save(pred_dir / f"{s}.png")
        for metric in (mae, sm, em, wfm, fm):
            metric.step(pred=pred, gt=gt)
    res = evaluate_saliency_dirs(pred_dir, gt_dir)["metrics"]
    f, e = fm.get_results()["fm"], em.get_results()["em"]
    assert res["mae"] == pytest.approx(mae.get_results()["mae"], abs=1e-12)
    assert res["s_measure"] == pytest.approx(sm.get_results()["sm"], abs=1e-12)
    assert res["max_f"] == pytest.approx(f["dynamic"].max(), abs=1e-12)
    assert res["mean_f"] == pytest.approx(f["dynamic"].mean(), abs=1e-12)
    assert res["adaptive_f"] == pytest.approx(f["adaptive"], abs=1e-12)
    assert res["max_e"] == pytest.approx(e["curve"].max(), abs=1e-12)
    assert res["mean_e"] == pytest.approx(e["curve"].mean(), abs=1e-12)
    assert res["adaptive_e"] == pytest.approx(e["adp"], abs=1e-12)
    assert res["weighted_f"] == pytest.approx(wfm.get_results()["wfm"], abs=1e-12)
    assert 0.0 < res["boundary_iou"] < 1.0 and res["mae"] > 0 and res["s_measure"] < 1


def test_boundary_iou_reference_cases() -> None:
    a = np.zeros((100, 100), bool)
    a[20:80, 20:80] = True
    d = 3  # round(0.02 * hypot(100, 100)) = round(2.83)
    band = mask_boundary(a, d)
    assert band.sum() == 60 * 60 - 54 * 54  # a 3-pixel inner band
    assert boundary_iou(a, a) == 1.0 and boundary_iou(np.zeros_like(a), np.zeros_like(a)) == 1.0
    b = np.roll(a, 2, axis=1)
    got = boundary_iou(b, a)
    bb = mask_boundary(b, d)
    assert got == pytest.approx((band & bb).sum() / (band | bb).sum()) and got < 1
    full = np.ones((10, 10), bool)  # the image border is a contour, as in the reference code
    assert mask_boundary(full, 1).sum() == 100 - 64


def test_matching_resizing_and_json_cli(gt_dir: Path, tmp_path: Path) -> None:
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    gt = np.asarray(Image.open(gt_dir / f"{STEMS[0]}.png"))
    Image.fromarray(gt).resize((427, 240), Image.BILINEAR).save(pred_dir / f"{STEMS[0]}.png")  # half size
    Image.fromarray(gt).save(pred_dir / f"{STEMS[0]}_mask.png")  # uhr saliency's extra outputs are ignored
    Image.fromarray(gt).save(pred_dir / "stray.png")
    out = tmp_path / "res" / "metrics.json"
    r = run_uhr("eval", "saliency", "--pred", str(pred_dir), "--gt", str(gt_dir), "--json", str(out))
    assert r.returncode == 0, r.stderr
    assert "resized" in r.stderr and "stray" in r.stderr and STEMS[1] in r.stderr
    assert "boundary IoU" in r.stdout
    res = json.loads(out.read_text())
    assert res["n_images"] == 1 and res["unmatched_pred"] == ["stray"]
    assert res["unmatched_gt"] == [STEMS[1]] and res["resized"] == [STEMS[0]]
    assert res["metrics"]["mae"] < 0.02 and res["per_image"][0]["name"] == STEMS[0]
    with pytest.raises(InputError, match="no prediction"):
        evaluate_saliency_dirs(tmp_path / "res", gt_dir)


def test_missing_pysodmetrics_is_one_clear_error(gt_dir: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "py_sod_metrics", None)
    with pytest.raises(MissingDependencyError, match=r"pip install pysodmetrics.*uhrcli\[saliency-metrics\]"):
        evaluate_saliency_dirs(gt_dir, gt_dir)
