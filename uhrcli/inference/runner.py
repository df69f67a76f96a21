"""How tensors reach the model: device, memory format, autocast. Shared by every inferer."""
from __future__ import annotations

import contextlib
import threading
from typing import Any

import numpy as np
import torch

from ..device import autocast


class Runner:
    """Device placement and precision for one model: one place decides them for every pass."""

    def __init__(self, device: torch.device, amp: bool = False, channels_last: bool = True):
        self.device, self.amp, self.channels_last = device, amp, channels_last
        self.bytes_in = 0  # bytes handed to the device (raw pixels, features read back from the host caches)
        self._count = threading.Lock()  # tiles may run on two threads (uhrcli.inference.workers.model_workers)

    def tensor(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(C, H, W) or (B, C, H, W) float -> a batch on the device, channels-last when asked."""
        t = torch.as_tensor(x)
        if t.ndim == 3:
            t = t[None]
        self._counted(t)
        t = t.to(self.device, non_blocking=True)
        return t.contiguous(memory_format=torch.channels_last) if self.channels_last else t

    def pixels(self, raw: np.ndarray, pre: Any) -> torch.Tensor:
        """Raw pixels (C, H, W) or (B, C, H, W), as read (uint8, uint16, ...) -> the normalised float32 batch on
        the device. Only the raw bytes cross to the device (pinned for an asynchronous copy on CUDA); scaling
        and normalisation run there, with the arithmetic of uhrcli.engine.Preprocess, so results match it."""
        t = host = torch.from_numpy(np.ascontiguousarray(raw))
        if t.ndim == 3:
            t = t[None]
        self._counted(t)
        if self.device.type == "cuda":  # pinned, copied on a stream of its own: it overlaps the previous tile
            from . import side_stream

            t = t.pin_memory()
            compute = torch.cuda.current_stream(self.device)
            stream = side_stream(self.device, "h2d")
            with torch.cuda.stream(stream):
                t = t.to(self.device, non_blocking=True)
            compute.wait_stream(stream)
            t.record_stream(compute)  # allocated on the copy stream, used on the compute stream
        else:
            t = t.to(self.device, non_blocking=True)
        c = t.shape[1]
        sc = pre.scaler
        scaled = bool(np.any(sc.offset != 0) or np.any(sc.scale != 1))
        if raw.dtype == np.uint8 and not scaled:  # uint8 - float32 is float32 in one pass: float(x) - mean exactly
            return self._divided(torch.sub(t, self._band(pre.mean, c)), self._band(pre.std, c))
        t = t.to(torch.float32)
        if t.data_ptr() == host.data_ptr():  # float32 on the CPU: still the caller's array, which stays as it is
            t = t.clone()
        if raw.dtype.kind == "f":  # NaN/inf pixels are nodata (masked); 0 keeps them from spreading through convs
            torch.nan_to_num_(t, nan=0.0, posinf=0.0, neginf=0.0)
        if scaled:
            t.sub_(self._band(sc.offset, c)).mul_(self._band(sc.scale, c))
            t.clamp_(0.0, 255.0)
        elif raw.dtype != np.uint8:
            t.clamp_(0.0, 255.0)
        return self._divided(t.sub_(self._band(pre.mean, c)), self._band(pre.std, c))

    def _divided(self, t: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """t / std, written straight into channels-last memory when asked: the arithmetic runs in (N, C, H, W),
        whose rows vectorise (over channels-last's three-value rows it ran at 8.7 ms per MP on one core, against
        4.4 for this, bits equal), and the reorder costs no pass of its own."""
        if not self.channels_last:
            return t.div_(std)
        out = torch.empty(t.shape, dtype=t.dtype, device=t.device, memory_format=torch.channels_last)
        return torch.div(t, std, out=out)

    def _counted(self, t: torch.Tensor) -> None:
        with self._count:
            self.bytes_in += t.numel() * t.element_size()

    def _band(self, values: Any, c: int) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values, np.float32)[:c], device=self.device).view(1, c, 1, 1)

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.amp)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device).eval()
        return model.to(memory_format=torch.channels_last) if self.channels_last else model
