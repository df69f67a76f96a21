"""Segmentation evaluation: confusion matrices accumulated block by block, IoU/F1/accuracy from them."""
from .files import EvalReport, FileScore, evaluate_pairs, evaluate_paths, match_by_stem, match_key, score_file
from .labels import DEEPGLOBE_CLASSES, DEEPGLOBE_COLOURS, LabelDecoder, binary_255_is_foreground, mask_histogram
from .metrics import IGNORE_INDEX, SegMetrics, confusion_matrix, evaluate_segmentation, metrics_from_confusion

__all__ = ["EvalReport", "FileScore", "evaluate_pairs", "evaluate_paths", "match_by_stem", "match_key", "score_file",
           "DEEPGLOBE_CLASSES", "DEEPGLOBE_COLOURS", "LabelDecoder", "binary_255_is_foreground", "mask_histogram",
           "IGNORE_INDEX", "SegMetrics", "confusion_matrix", "evaluate_segmentation", "metrics_from_confusion"]
