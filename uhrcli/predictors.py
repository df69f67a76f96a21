"""Predictors turn a batch of normalised tiles into class probabilities.

The engine only calls `prepare` once and then `__call__` per batch, so a
model that needs more than the tile (ISDNet's global deep branch) plugs in by
supplying its own predictor without the engine changing.
"""
from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np
import torch
import torch.nn as nn

from .device import autocast
from .tiling import Tile, TileGrid


class Predictor(Protocol):
    num_classes: int

    def prepare(self, reader, preprocess, grid: TileGrid, progress=None) -> None: ...

    def __call__(self, batch: np.ndarray, tiles: Sequence[Tile]) -> np.ndarray: ...


def logits_to_probs(logits: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def logits_to_output(logits: torch.Tensor, classes_only: bool) -> np.ndarray:
    """Probabilities (B,K,h,w) float32, or, when only the class map is wanted, (B,1,h,w) uint8.

    The class map is taken on the device: far cheaper than shipping K float
    maps to the host and reducing them there.
    """
    logits = logits.float()
    if classes_only:
        cls = (logits >= 0) if logits.shape[1] == 1 else logits.argmax(1, keepdim=True)
        return cls.to(torch.uint8).cpu().numpy()
    return logits_to_probs(logits).cpu().numpy()


class TilePredictor:
    """Runs a fully convolutional model on each tile on its own."""

    def __init__(self, model: nn.Module, device: torch.device, amp: bool = False, channels_last: bool = True):
        self.model = model.to(device).eval()
        self.device, self.amp = device, amp
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.num_classes = model.info.num_classes
        self.classes_only = False  # set by the engine when no probabilities are needed

    def prepare(self, reader, preprocess, grid: TileGrid, progress=None) -> None:
        return None

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray, tiles: Sequence[Tile]) -> np.ndarray:
        x = torch.from_numpy(batch).to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.amp):
            logits = self.model(x)
        return logits_to_output(logits, self.classes_only)
