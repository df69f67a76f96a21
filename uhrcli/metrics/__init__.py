"""Evaluation metrics. Heavy metric libraries are imported only when a metric runs."""
from .saliency import boundary_iou, evaluate_saliency_dirs, mask_boundary

__all__ = ["boundary_iou", "evaluate_saliency_dirs", "mask_boundary"]
