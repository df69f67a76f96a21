"""Salient-object-detection metrics for folders of maps: the numbers SOD papers report.

MAE, S-measure, F-measure (max/mean/adaptive), E-measure (max/mean/adaptive)
and weighted F-measure come from pysodmetrics, so they match the published
evaluation toolkits exactly; it is imported lazily because it is an optional
dependency (`pip install uhrcli[saliency-metrics]`). Boundary IoU (Cheng et al.,
CVPR 2021) is implemented here: high-resolution saliency is mostly about
getting edges right, and region metrics barely notice thin-structure errors.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, MissingDependencyError, MissingInputError, UhrError, UsageError

MAP_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".webp", ".bmp")  # preference order on a stem clash
UHR_EXTRA_SUFFIXES = ("_mask", "_rgba", "_overlay")
BOUNDARY_DILATION_RATIO = 0.02

METRIC_LABELS = {
    "mae": "MAE",
    "s_measure": "S-measure",
    "max_f": "max F-measure",
    "mean_f": "mean F-measure",
    "adaptive_f": "adaptive F-measure",
    "max_e": "max E-measure",
    "mean_e": "mean E-measure",
    "adaptive_e": "adaptive E-measure",
    "weighted_f": "weighted F-measure",
    "boundary_iou": "boundary IoU",
}


def _pysod() -> Any:
    try:
        import py_sod_metrics
    except ImportError as exc:
        raise MissingDependencyError(
            f"saliency metrics need pysodmetrics ({exc.name or 'py_sod_metrics'} could not be imported): "
            "pip install pysodmetrics  (or: pip install uhrcli[saliency-metrics])") from None
    return py_sod_metrics


# ---------------------------------------------------------------------------------------------
# boundary IoU
# ---------------------------------------------------------------------------------------------
def boundary_width(height: int, width: int, ratio: float = BOUNDARY_DILATION_RATIO) -> int:
    """d = max(1, round(ratio * image diagonal)), as in Cheng et al. 2021."""
    return max(1, int(round(ratio * float(np.hypot(height, width)))))


def mask_boundary(mask: np.ndarray, d: int) -> np.ndarray:
    """Pixels of a binary mask within d pixels of its contour (inside band).

    Matches the reference mask_to_boundary: the image border counts as a
    contour (zero padding), erosion by a 3x3 square d times.
    """
    from scipy.ndimage import binary_erosion

    m = np.asarray(mask, bool)
    eroded = binary_erosion(m, structure=np.ones((3, 3), bool), iterations=d, border_value=0)
    return m & ~eroded


def boundary_iou(pred: np.ndarray, gt: np.ndarray, ratio: float = BOUNDARY_DILATION_RATIO) -> float:
    """IoU of the boundary bands of two binary masks (1.0 when both are empty)."""
    if pred.shape != gt.shape:
        raise ValueError(f"shape mismatch {pred.shape} vs {gt.shape}")
    d = boundary_width(*gt.shape, ratio=ratio)
    bp, bg = mask_boundary(pred, d), mask_boundary(gt, d)
    union = np.count_nonzero(bp | bg)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(bp & bg) / union)


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------
def read_gray8(path: Path) -> np.ndarray:
    """A map or mask as (H, W) uint8: 16-bit scaled by 1/257, reals as 0..1, colour to luma."""
    from rasterio.windows import Window

    from ..io.readers import open_reader

    with open_reader(path, expand_palette=False) as r:
        data = r.read(Window(0, 0, r.width, r.height))
    if data.shape[0] >= 3:
        x = 0.299 * data[0].astype(np.float64) + 0.587 * data[1] + 0.114 * data[2]
        dt = data.dtype
    else:
        x, dt = data[0], data.dtype
    if dt == np.uint8:
        return np.rint(x).astype(np.uint8) if x.dtype != np.uint8 else x
    if dt.kind == "b":
        return (np.asarray(x, bool) * 255).astype(np.uint8)
    if dt.kind in "ui":
        top = float(np.iinfo(dt).max)
        return np.clip(np.rint(np.asarray(x, np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)
    return np.clip(np.rint(np.asarray(x, np.float64) * 255.0), 0, 255).astype(np.uint8)


def _index(folder: Path, what: str, drop_uhr_extras: bool) -> tuple[dict[str, Path], list[str]]:
    """relative path without suffix -> file; the notes say what was set aside."""
    if not folder.exists():
        raise MissingInputError(f"{what} folder not found: {folder}")
    if not folder.is_dir():
        raise UsageError(f"{what} must be a folder, got a file: {folder}")
    rank = {s: i for i, s in enumerate(MAP_SUFFIXES)}
    found: dict[str, Path] = {}
    notes: list[str] = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if not p.is_file() or p.suffix.lower() not in rank or any(s.startswith(".") for s in rel.parts):
            continue
        key = rel.with_suffix("").as_posix()
        if key in found:
            keep, other = sorted((found[key], p), key=lambda q: rank[q.suffix.lower()])
            notes.append(f"{what}: {key} has several files; using {keep.name}, ignoring {other.name}")
            found[key] = keep
        else:
            found[key] = p
    if drop_uhr_extras:  # `uhr saliency` writes x.png beside x_mask.png etc.: only the map is a prediction
        for key in list(found):
            for suf in UHR_EXTRA_SUFFIXES:
                if key.endswith(suf) and key[: -len(suf)] in found:
                    del found[key]
                    break
    return found, notes


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------
def _resize(pred: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(pred).resize((shape[1], shape[0]), Image.BILINEAR))


def evaluate_saliency_dirs(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike) -> dict[str, Any]:
    """Evaluate every prediction that has a ground truth with the same relative stem.

    Returns {"n_images", "metrics": {key: value}, "per_image": [...],
    "unmatched_pred", "unmatched_gt", "resized", "notes", ...}; raises when no
    stem matches. Predictions of another size are resized (bilinear) to the GT.
    """
    sod = _pysod()
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    preds, notes_p = _index(pred_dir, "--pred", drop_uhr_extras=True)
    gts, notes_g = _index(gt_dir, "--gt", drop_uhr_extras=False)
    notes = notes_p + notes_g
    keys = sorted(set(preds) & set(gts))
    unmatched_pred = sorted(set(preds) - set(gts))
    unmatched_gt = sorted(set(gts) - set(preds))
    if not keys:
        raise InputError(f"no prediction in {pred_dir} matches a ground truth in {gt_dir} by name "
                         f"({len(preds)} prediction(s), {len(gts)} ground truth(s); e.g. "
                         f"{(unmatched_pred or ['-'])[0]} vs {(unmatched_gt or ['-'])[0]})")
    if unmatched_pred:
        notes.append(f"{len(unmatched_pred)} prediction(s) without ground truth, e.g. {unmatched_pred[0]}")
    if unmatched_gt:
        notes.append(f"{len(unmatched_gt)} ground truth(s) without prediction, e.g. {unmatched_gt[0]}")

    mae, sm, em, wfm = sod.MAE(), sod.Smeasure(), sod.Emeasure(), sod.WeightedFmeasure()
    fm = sod.FmeasureV2(metric_handlers={"fm": sod.FmeasureHandler(with_dynamic=True, with_adaptive=True, beta=0.3)})
    per_image: list[dict[str, Any]] = []
    resized: list[str] = []
    for key in keys:
        try:
            p = read_gray8(preds[key])
            g = read_gray8(gts[key])
        except UhrError as exc:
            raise InputError(f"cannot evaluate {key}: {exc}") from None
        if p.shape != g.shape:
            resized.append(key)
            p = _resize(p, g.shape)
        mae.step(pred=p, gt=g)
        sm.step(pred=p, gt=g)
        em.step(pred=p, gt=g)
        wfm.step(pred=p, gt=g)
        fm.step(pred=p, gt=g)
        biou = boundary_iou(p >= 128, g > 128)
        per_image.append({"name": key, "mae": float(mae.maes[-1]) if hasattr(mae, "maes") else None,
                          "s_measure": float(sm.sms[-1]) if hasattr(sm, "sms") else None,
                          "boundary_iou": biou})
    if resized:
        notes.append(f"{len(resized)} prediction(s) resized to the ground-truth size (bilinear), e.g. {resized[0]}")

    f = fm.get_results()["fm"]
    e = em.get_results()["em"]
    metrics = {
        "mae": float(mae.get_results()["mae"]),
        "s_measure": float(sm.get_results()["sm"]),
        "max_f": float(np.max(f["dynamic"])),
        "mean_f": float(np.mean(f["dynamic"])),
        "adaptive_f": float(f["adaptive"]),
        "max_e": float(np.max(e["curve"])),
        "mean_e": float(np.mean(e["curve"])),
        "adaptive_e": float(e["adp"]),
        "weighted_f": float(wfm.get_results()["wfm"]),
        "boundary_iou": float(np.mean([r["boundary_iou"] for r in per_image])),
    }
    try:
        from importlib.metadata import version

        sod_version = version("pysodmetrics")
    except Exception:  # noqa: BLE001 - the version is informative only
        sod_version = "unknown"
    return {
        "pred_dir": str(pred_dir), "gt_dir": str(gt_dir), "n_images": len(keys), "metrics": metrics,
        "per_image": per_image, "unmatched_pred": unmatched_pred, "unmatched_gt": unmatched_gt,
        "resized": resized, "notes": notes,
        "settings": {"f_beta2": 0.3, "boundary_dilation_ratio": BOUNDARY_DILATION_RATIO,
                     "binarise_pred_at": 128, "binarise_gt_above": 128, "pysodmetrics": sod_version},
    }
