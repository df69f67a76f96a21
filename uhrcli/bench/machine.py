"""Facts about the machine a benchmark ran on, and its measured compute roof.

Numbers from two machines only compare when the hardware, library versions
and settings that produced them travel with them, so every report carries
this record. The roof (best fp32 matmul GFLOP/s) turns a model's achieved
GFLOP/s into an efficiency: how much of the hardware the network really uses.
"""
from __future__ import annotations

import os
import platform
import time
from typing import Any

import torch

from ..device import synchronize
from ..proc import peak_rss_mb  # noqa: F401  (re-exported for the bench modules)

MARKER = "UHR_BENCH_RESULT "  # prefixes the one stdout line a worker answers with


def cpu_model() -> str:
    """The CPU's marketing name (platform.processor() is empty on most Linux systems)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def to_device(obj: Any, device: torch.device) -> Any:
    """Move a tensor or module to `device` (one seam that tests replace to keep CUDA logic on the CPU)."""
    return obj.to(device)


def compute_roof(device: torch.device, n: int = 2048, reps: int = 5, amp: bool = False,
                 tf32: bool | None = None) -> float:
    """Best achieved matmul GFLOP/s over `reps` n x n products (fp16 when amp on an accelerator).

    tf32: on CUDA, measure fp32 with TF32 tensor cores allowed (True) or not (False); None leaves
    torch's setting as it is, which is how the models run."""
    if tf32 is not None and device.type == "cuda":
        before = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            return compute_roof(device, n, reps, amp)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = before
    dtype = torch.float16 if amp and device.type != "cpu" else torch.float32
    gen = torch.Generator().manual_seed(0)
    a = to_device(torch.randn(n, n, generator=gen).to(dtype), device)
    b = to_device(torch.randn(n, n, generator=gen).to(dtype), device)
    with torch.inference_mode():
        torch.mm(a, b)  # warm-up: thread pool / kernel selection
        synchronize(device)
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            torch.mm(a, b)
            synchronize(device)
            best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / max(best, 1e-12) / 1e9


def machine_info(device: torch.device, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Hardware, versions and settings, as one JSON-ready record."""
    gpu = None
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
    elif device.type == "mps":
        gpu = "Apple MPS"
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "device": str(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        **({"settings": settings} if settings is not None else {}),
    }
