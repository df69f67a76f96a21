"""How tensors reach the model: device, memory format, autocast. Shared by every inferer."""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from ..device import autocast


class Runner:
    """Device placement and precision for one model: one place decides them for every pass."""

    def __init__(self, device: torch.device, amp: bool = False, channels_last: bool = True):
        self.device, self.amp, self.channels_last = device, amp, channels_last

    def tensor(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(C, H, W) or (B, C, H, W) float -> a batch on the device, channels-last when asked."""
        t = torch.as_tensor(x)
        if t.ndim == 3:
            t = t[None]
        t = t.to(self.device, non_blocking=True)
        return t.contiguous(memory_format=torch.channels_last) if self.channels_last else t

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.amp)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device).eval()
        return model.to(memory_format=torch.channels_last) if self.channels_last else model
