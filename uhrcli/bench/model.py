"""One model-only case: a seeded random network timed on one input size.

Runs inside the process that measures it: a fresh worker per case on the CPU
(so peak RSS is that case's alone), in the calling process on CUDA/MPS (where
the allocator's own peak counters are reset per case).
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from ..device import autocast, synchronize
from ..errors import first_line
from ..models.fuse import fold_batchnorm
from ..tiling import ceil_to
from .machine import peak_rss_mb, to_device

FAKE_OOM_ENV = "UHR_BENCH_FAKE_OOM"
"""Test hook: comma-separated `model@size` (raise MemoryError) or `model@size:kill` (the worker SIGKILLs
itself, as the kernel's OOM killer would); lets the OOM path be tested without exhausting memory."""


class CaseOOM(Exception):
    """The case ran out of memory; the row is marked OOM and the others go on."""


def is_oom(exc: BaseException) -> bool:
    """True for every way PyTorch and Python say 'out of memory'."""
    if isinstance(exc, (MemoryError, CaseOOM)):
        return True
    oom_cls = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_cls is not None and isinstance(exc, oom_cls):
        return True
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in msg or "not enough memory" in msg
                                              or "can't allocate memory" in msg)


def fake_oom(model: str, size: int) -> str | None:
    """'raise' or 'kill' when the test hook asks this case to fail, else None."""
    for item in os.environ.get(FAKE_OOM_ENV, "").split(","):
        item = item.strip()
        if not item:
            continue
        key, _, how = item.partition(":")
        if key == f"{model}@{size}":
            return how or "raise"
    return None


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(name: str, model: nn.Module, shape: tuple[int, ...], device: torch.device,
                model_kwargs: dict[str, Any] | None = None) -> tuple[int, str]:
    """FLOPs of one forward on `shape` (batch 1), and how they were counted.

    A meta-device copy is counted first (shapes only, milliseconds even at
    5000x5000 on a CPU); a network that cannot run on meta tensors is counted
    on a real forward.
    """
    from ..models.flops import count_flops as _count

    try:
        return _count(model, shape, device="meta"), "meta"
    except Exception:  # noqa: BLE001 - data-dependent code (e.g. .item()) cannot run on meta tensors
        return _count(model, shape, device=device), "forward"


def _cpu_timer(device: torch.device) -> Callable[[Callable[[], Any]], float]:
    def timed(fn: Callable[[], Any]) -> float:
        t = time.perf_counter()
        fn()
        synchronize(device)
        return (time.perf_counter() - t) * 1000.0

    return timed


def _cuda_timer(device: torch.device) -> Callable[[Callable[[], Any]], float]:
    """Milliseconds between CUDA events around the call: the GPU's time, not the launch overhead."""

    def timed(fn: Callable[[], Any]) -> float:
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))

    return timed


def input_side(size: int, multiple: int, task: str = "saliency") -> int:
    """The side fed to the network: segmentation networks run at any size (as `uhr segment` runs them,
    and as the papers time them: 2448 is not a multiple of 32); saliency inputs are resized to a multiple."""
    return size if task == "segment" else ceil_to(size, max(1, multiple))


def measure_model(spec: dict[str, Any]) -> dict[str, Any]:
    """Time one (model, size) case and return its record (status 'ok', 'oom' or 'error')."""
    name, size = spec["model"], int(spec["size"])
    device = torch.device(spec.get("device", "cpu"))
    rec: dict[str, Any] = {"model": name, "size": size, "mode": "model", "status": "ok", "device": str(device)}
    try:
        rec.update(_measure(spec, name, size, device))
    except Exception as exc:  # noqa: BLE001 - one failed row must not stop the others
        first = first_line(exc, 10_000) if str(exc).strip() else ""
        if is_oom(exc):
            rec.update(status="oom", error=f"{type(exc).__name__}: out of memory")
        else:
            rec.update(status="error", error=f"{type(exc).__name__}: {first}")
    if rec["status"] != "ok" and device.type == "cuda":
        # outside the except clause: the traceback (and the tensors its frames hold) is gone by now
        import gc

        gc.collect()
        torch.cuda.empty_cache()
    if device.type == "cpu":
        rec["peak_rss_mb"] = round(peak_rss_mb(), 1)
        if rec["status"] == "ok":
            rec["peak_mem_mb"] = rec["peak_rss_mb"]
    return rec


def _measure(spec: dict[str, Any], name: str, size: int, device: torch.device) -> dict[str, Any]:
    from ..models import build_model

    batch = int(spec.get("batch_size", 1))
    amp = bool(spec.get("amp", False)) and device.type != "cpu"
    channels_last = bool(spec.get("channels_last", True))
    fold_bn = bool(spec.get("fold_bn", True))
    warmup, iters = int(spec.get("warmup", 2)), int(spec.get("iters", 5))
    how = fake_oom(name, size)
    if how == "kill":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    if how is not None:
        raise MemoryError(f"{FAKE_OOM_ENV}: simulated out-of-memory for {name}@{size}")

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model = build_model(name, "random", seed=int(spec.get("seed", 0)))
    info = model.info
    side = input_side(size, info.size_multiple, info.task)
    # optional non-square input (`uhr bench --table isdnet`: Cityscapes 1024 x 2048); default side x side
    hin, win = int(spec.get("height") or side), int(spec.get("width") or side)
    params = count_params(model)
    flops, flops_how = count_flops(name, model, (1, info.in_channels, hin, win), torch.device("cpu"))
    model = to_device(model, device).eval()
    if fold_bn:  # as `uhr segment` and `uhr saliency` run the network
        fold_batchnorm(model)
    gen = torch.Generator().manual_seed(int(spec.get("seed", 0)))
    x = to_device(torch.randn(batch, info.in_channels, hin, win, generator=gen), device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    compile_s = None
    fwd = model
    if spec.get("compile"):
        fwd = torch.compile(model)
    timed = _cuda_timer(device) if device.type == "cuda" else _cpu_timer(device)

    def step() -> None:
        with autocast(device, amp):
            fwd(x)

    with torch.inference_mode():
        if spec.get("compile"):
            t = time.perf_counter()
            step()  # the first call compiles; its time is reported apart from latency
            synchronize(device)
            compile_s = time.perf_counter() - t
        for _ in range(warmup):
            step()
        synchronize(device)
        lat = [timed(step) for _ in range(max(1, iters))]

    med = float(np.median(lat))
    p90 = float(np.percentile(lat, 90))
    fps = batch / (med / 1000.0)
    gflops = flops / 1e9
    out: dict[str, Any] = {
        "task": info.task, "input_side": side, "input_hw": [hin, win], "batch_size": batch,
        "latency_ms_median": round(med, 3), "latency_ms_p90": round(p90, 3),
        "latency_ms_min": round(min(lat), 3), "iters": len(lat), "warmup": warmup,
        "fps": fps, "mp_per_s": fps * hin * win / 1e6,
        "params": params, "params_m": params / 1e6,
        "flops": flops, "gflops": gflops, "flops_counted_on": flops_how,
        "gflops_per_s": gflops * fps,
        "compile_s": compile_s,
    }
    if device.type == "cuda":
        out["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["peak_reserved_mb"] = torch.cuda.max_memory_reserved(device) / 2**20
        out["mem_source"] = "cuda_max_memory_allocated"
    elif device.type == "cpu":
        out["mem_source"] = "peak_rss_fresh_process"
    else:
        cur = getattr(torch.mps, "driver_allocated_memory", None)
        out["peak_mem_mb"] = cur() / 2**20 if cur else None
        out["mem_source"] = "mps_driver_allocated"
    return out
