"""Segmentation metrics from a confusion matrix that is accumulated, never the whole map.

The matrix has one extra column, 'unlabelled': predictions outside the class
range (a prediction's nodata, 255) where the ground truth is valid. Such
pixels count as misses of the true class (its IoU and recall drop) but as
nobody's false positive. A remote-sensing user wants a map with holes scored
as worse than a complete map, not silently scored on the pixels it kept.
Ground-truth pixels equal to the ignore index are left out entirely.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

IGNORE_INDEX = 255


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int | None = IGNORE_INDEX
                     ) -> np.ndarray:
    """(K, K+1) int64 counts: rows ground truth, columns prediction, last column 'unlabelled'.

    gt values outside [0, K) other than ignore_index raise ValueError (a wrong
    --classes or a mask in another encoding must not be scored silently).
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    k = int(num_classes)
    g = gt.reshape(-1).astype(np.int64, copy=False)
    p = pred.reshape(-1).astype(np.int64, copy=False)
    valid = np.ones(g.shape, bool) if ignore_index is None else g != ignore_index
    bad = valid & ((g < 0) | (g >= k))
    if bad.any():
        vals = np.unique(g[bad])[:5]
        raise ValueError(f"ground-truth values {', '.join(map(str, vals))} are outside the {k} classes "
                         f"(0..{k - 1}, ignore {ignore_index})")
    g, p = g[valid], p[valid]
    p = np.where((p < 0) | (p >= k), k, p)
    return np.bincount(g * (k + 1) + p, minlength=k * (k + 1)).reshape(k, k + 1)


@dataclass
class SegMetrics:
    """Per-class and mean scores; NaN for a class absent from both prediction and ground truth."""

    confusion: np.ndarray  # (K, K+1), last column = unlabelled prediction
    class_names: list[str]
    iou: np.ndarray
    f1: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    miou: float
    mf1: float
    pixel_accuracy: float
    unlabelled_fraction: float
    mean_excludes: list[int] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return int(self.confusion.shape[0])

    def to_dict(self) -> dict[str, Any]:
        def clean(a: np.ndarray) -> list[float | None]:
            return [None if np.isnan(v) else float(v) for v in a]

        return {
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "miou": _nan_none(self.miou),
            "mf1": _nan_none(self.mf1),
            "pixel_accuracy": _nan_none(self.pixel_accuracy),
            "unlabelled_fraction": _nan_none(self.unlabelled_fraction),
            "mean_excludes": list(self.mean_excludes),
            "iou": dict(zip(self.class_names, clean(self.iou))),
            "f1": dict(zip(self.class_names, clean(self.f1))),
            "precision": dict(zip(self.class_names, clean(self.precision))),
            "recall": dict(zip(self.class_names, clean(self.recall))),
            "confusion_matrix": {"rows": "ground truth", "columns": list(self.class_names) + ["unlabelled"],
                                 "counts": self.confusion.astype(int).tolist()},
        }


def _nan_none(v: float) -> float | None:
    return None if v is None or np.isnan(v) else float(v)


def metrics_from_confusion(cm: np.ndarray, class_names: Sequence[str] | None = None,
                           mean_excludes: Sequence[int] = ()) -> SegMetrics:
    """IoU = TP / (TP + FP + FN); FN includes the unlabelled column. Means skip NaN and `mean_excludes`."""
    cm = np.asarray(cm, np.float64)
    k = cm.shape[0]
    if cm.shape == (k, k):  # a plain square matrix: no unlabelled column
        cm = np.concatenate([cm, np.zeros((k, 1))], axis=1)
    names = list(class_names) if class_names else [f"class_{i}" for i in range(k)]
    tp = np.diag(cm[:, :k])
    gt_tot = cm.sum(1)
    pred_tot = cm[:, :k].sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        union = gt_tot + pred_tot - tp
        iou = np.where(union > 0, tp / union, np.nan)
        precision = np.where(pred_tot > 0, tp / pred_tot, np.nan)
        recall = np.where(gt_tot > 0, tp / gt_tot, np.nan)
        denom = gt_tot + pred_tot
        f1 = np.where(denom > 0, 2 * tp / denom, np.nan)
    keep = np.ones(k, bool)
    keep[[i for i in mean_excludes if 0 <= i < k]] = False

    def mean(a: np.ndarray) -> float:
        v = a[keep]
        v = v[~np.isnan(v)]
        return float(v.mean()) if v.size else float("nan")

    total = cm.sum()
    return SegMetrics(
        confusion=cm.astype(np.int64), class_names=names, iou=iou, f1=f1, precision=precision, recall=recall,
        miou=mean(iou), mf1=mean(f1), pixel_accuracy=float(tp.sum() / total) if total else float("nan"),
        unlabelled_fraction=float(cm[:, k].sum() / total) if total else float("nan"),
        mean_excludes=[int(i) for i in mean_excludes],
    )


def evaluate_segmentation(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int | None = IGNORE_INDEX,
                          class_names: Sequence[str] | None = None, mean_excludes: Sequence[int] = ()) -> SegMetrics:
    """Scores for in-memory class maps (see evaluate_files for rasters of any size)."""
    return metrics_from_confusion(confusion_matrix(pred, gt, num_classes, ignore_index), class_names, mean_excludes)
