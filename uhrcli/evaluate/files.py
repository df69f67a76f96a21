"""Scoring class-map rasters against ground truth, streamed block by block.

Both files are read through uhrcli's readers in blocks of at most 1024 rows
(and a bounded number of columns), so a gigapixel mask is scored in the memory
of one block; the confusion matrices of the blocks simply add up.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from rasterio.windows import Window

from ..errors import InputError, UsageError
from ..io.inputs import expand_inputs, stem_of
from ..io.readers import open_reader
from .labels import IGNORE, LabelDecoder, binary_255_is_foreground, mask_histogram
from .metrics import SegMetrics, confusion_matrix, metrics_from_confusion

# name endings that differ between an image, its mask and its prediction (DeepGlobe, Inria samples, ...)
STEM_TAGS = ("_sat", "_mask", "_label", "_labels", "_gt", "_img", "_image", "_pred", "_prediction", "_seg",
             "_segmentation", "_ann", "_class")


def match_key(path: Path) -> str:
    """The stem without a trailing role tag, so 12_sat.jpg, 12_mask.png and 12_sat.tif all match '12'."""
    s = stem_of(path)
    low = s.lower()
    for tag in STEM_TAGS:
        if low.endswith(tag) and len(s) > len(tag):
            return s[: -len(tag)]
    return s


def list_rasters(path: Path) -> list[Path]:
    """A file, or a folder's raster files (not its subfolders)."""
    return [p for p, _ in expand_inputs([path], stores=False)]


def match_by_stem(preds: Sequence[Path], gts: Sequence[Path]) -> tuple[list[tuple[Path, Path]], list[Path], list[Path]]:
    """(pairs, unmatched predictions, unmatched ground truths); exact stems first, then role-tag-free keys."""
    gt_exact = {stem_of(g): g for g in gts}
    gt_key: dict[str, Path] = {}
    for g in gts:
        gt_key.setdefault(match_key(g), g)
    pairs, used = [], set()
    unmatched_pred = []
    for p in preds:
        g = gt_exact.get(stem_of(p))
        if g is None or g in used:
            g = gt_key.get(match_key(p))
        if g is None or g in used:
            unmatched_pred.append(p)
            continue
        used.add(g)
        pairs.append((p, g))
    return pairs, unmatched_pred, [g for g in gts if g not in used]


@dataclass
class FileScore:
    pred: Path
    gt: Path
    pixels: int
    miou: float


@dataclass
class EvalReport:
    metrics: SegMetrics
    files: list[FileScore] = field(default_factory=list)
    unmatched_pred: list[Path] = field(default_factory=list)
    unmatched_gt: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = self.metrics.to_dict()
        d["files"] = [{"pred": str(f.pred), "gt": str(f.gt), "pixels": f.pixels,
                       "miou": None if np.isnan(f.miou) else f.miou} for f in self.files]
        d["unmatched_pred"] = [str(p) for p in self.unmatched_pred]
        d["unmatched_gt"] = [str(p) for p in self.unmatched_gt]
        d["notes"] = list(self.notes)
        d["unlabelled_policy"] = ("predicted values outside the classes (e.g. nodata 255) where the ground truth "
                                  "is valid count as misses of the true class (column 'unlabelled')")
        return d


def _blocks(height: int, width: int, rows: int) -> list[Window]:
    cols = max(rows, min(width, (1 << 23) // max(1, rows)))
    return [Window(c0, r0, min(cols, width - c0), min(rows, height - r0))
            for r0 in range(0, height, rows) for c0 in range(0, width, cols)]


def score_file(pred_path: Path, gt_path: Path, num_classes: int, decoder: LabelDecoder,
               rows: int = 1024) -> np.ndarray:
    """Confusion matrix (K, K+1) of one prediction/ground-truth pair, block by block."""
    pred = open_reader(pred_path, bands=[1], expand_palette=False)  # class maps carry a palette
    try:
        gt = open_reader(gt_path, bands=decoder.bands if decoder.kind == "deepglobe" else [1],
                         expand_palette=decoder.kind == "deepglobe")
    except Exception:
        pred.close()
        raise
    try:
        if (pred.height, pred.width) != (gt.height, gt.width):
            raise InputError(f"{pred_path}: prediction is {pred.width}x{pred.height} but ground truth {gt_path} "
                             f"is {gt.width}x{gt.height}")
        cm = np.zeros((num_classes, num_classes + 1), np.int64)
        for win in _blocks(gt.height, gt.width, rows):
            labels = decoder(gt.read(win), gt.read_mask(win))
            p = pred.read(win)[0]
            try:
                cm += confusion_matrix(p, labels, num_classes, IGNORE)
            except ValueError as exc:
                raise InputError(f"{gt_path}: {exc} (check --classes and --ignore-index)") from None
        return cm
    finally:  # GDAL environments unwind in LIFO order
        gt.close()
        pred.close()


def evaluate_pairs(pairs: Sequence[tuple[Path, Path]], num_classes: int, *, ignore_index: int | None = None,
                   class_names: Sequence[str] | None = None, decoder: LabelDecoder | None = None,
                   mean_excludes: Sequence[int] = (), rows: int = 1024,
                   progress: Callable[[Path], Any] | None = None) -> EvalReport:
    """Score (prediction, ground truth) pairs into one confusion matrix.

    ignore_index: a raw ground-truth value to leave out; None means 255 is
    ignored too, except that a two-class 0/255 mask reads 255 as class 1.
    decoder: a ready LabelDecoder (e.g. DeepGlobe colours); None builds one per file.
    """
    if num_classes < 1:
        raise UsageError("--classes must be at least 1")
    total = np.zeros((num_classes, num_classes + 1), np.int64)
    files, notes = [], []
    for pred_path, gt_path in pairs:
        dec = decoder
        if dec is None:
            ign = () if ignore_index is None else (int(ignore_index),)
            dec = LabelDecoder(num_classes, "index", ignore_values=ign)
            if num_classes == 2:
                with open_reader(gt_path, bands=[1], expand_palette=False) as r:
                    hist = mask_histogram(r, rows=rows)
                if binary_255_is_foreground(2, hist, explicit_ignore=ignore_index == 255):
                    dec.foreground_255 = True
                    if "0/255" not in " ".join(notes):
                        notes.append("ground truth stored as 0/255: 255 read as class 1")
        cm = score_file(pred_path, gt_path, num_classes, dec, rows)
        total += cm
        files.append(FileScore(Path(pred_path), Path(gt_path), int(cm.sum()),
                               metrics_from_confusion(cm, class_names, mean_excludes).miou))
        if progress is not None:
            progress(Path(pred_path))
    return EvalReport(metrics_from_confusion(total, class_names, mean_excludes), files, notes=notes)


def stored_class_names(path: Path) -> list[str] | None:
    """The class names a class map carries: `uhr segment` writes them as a GeoTIFF tag (class_names, JSON)
    or a zarr attribute; None when the file has none (or cannot say)."""
    import json

    path = Path(path)
    try:
        if path.is_dir():  # a zarr group or array
            import zarr

            node = zarr.open(str(path), mode="r")
            names = dict(node.attrs).get("class_names")
            if names is None and hasattr(node, "keys") and "classes" in node:
                names = dict(node["classes"].attrs).get("class_names")
        else:
            import rasterio

            with rasterio.open(path) as ds:
                text = ds.tags().get("class_names")
            names = json.loads(text) if text else None
    except Exception:  # noqa: BLE001 - names are a nicety; the scoring reads the file again and reports errors
        return None
    if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
        return names
    return None


def evaluate_paths(pred: str | os.PathLike, gt: str | os.PathLike, num_classes: int, **kw: Any) -> EvalReport:
    """Files or folders; folders are matched by stem and the leftovers reported, not fatal unless nothing matches."""
    preds, gts = list_rasters(Path(pred)), list_rasters(Path(gt))
    if len(preds) == 1 and len(gts) == 1 and Path(pred).is_file() and Path(gt).is_file():
        pairs, up, ug = [(preds[0], gts[0])], [], []
    else:
        pairs, up, ug = match_by_stem(preds, gts)
    if not pairs:
        raise InputError(f"no prediction in {pred} matches a ground truth in {gt} by file stem "
                         f"(e.g. {stem_of(preds[0])!r} vs {stem_of(gts[0])!r})")
    report = evaluate_pairs(pairs, num_classes, **kw)
    report.unmatched_pred, report.unmatched_gt = up, ug
    return report
