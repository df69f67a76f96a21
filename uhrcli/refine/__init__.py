"""Training-free refiners of class probabilities: the guided filter (exactly tiled) and DenseCRF (optional)."""
from .api import METHODS, RefineOptions, RefineResult, refine

__all__ = ["METHODS", "RefineOptions", "RefineResult", "refine"]
