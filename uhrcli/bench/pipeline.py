"""One pipeline case: the whole `uhr segment` path on a synthetic raster, then the model alone on the same tiles.

The ratio of the two throughputs says how much reading, normalising, merging
and writing cost on top of the network: close to 1 means the engine keeps
the model busy. Runs in a fresh worker so peak RSS is this run's alone.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import first_line
from ..device import default_amp, synchronize
from ..models.fuse import fold_batchnorm
from .machine import peak_rss_mb
from .model import fake_oom, is_oom


def measure_pipeline(spec: dict[str, Any]) -> dict[str, Any]:
    """Run segment() on spec['raster'] and the model-only loop; return one record."""
    name, size = spec["model"], int(spec["size"])
    device = torch.device(spec.get("device", "cpu"))
    rec: dict[str, Any] = {"model": name, "size": size, "mode": "pipeline", "status": "ok", "device": str(device)}
    try:
        how = fake_oom(name, size)
        if how == "kill":
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        if how is not None:
            raise MemoryError(f"simulated out-of-memory for {name}@{size}")
        rec.update(_run(spec, name, device))
    except Exception as exc:  # noqa: BLE001 - report the row, let the others run
        first = first_line(exc, 10_000) if str(exc).strip() else ""
        rec.update(status="oom" if is_oom(exc) else "error", error=f"{type(exc).__name__}: {first}")
    return rec


def _run(spec: dict[str, Any], name: str, device: torch.device) -> dict[str, Any]:
    from ..inference import InferOptions
    from ..inference.raster import infer_raster
    from ..io.readers import ArrayReader
    from ..models import build_model
    from ..segment import SegmentOptions, segment

    batch = int(spec.get("batch_size", 1))
    amp = spec.get("amp")
    amp = default_amp(device) if amp is None else bool(amp) and device.type != "cpu"
    opts = SegmentOptions(tile=int(spec["tile"]) if spec.get("tile") else None, batch_size=batch, overwrite=True,
                          amp=amp)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory(prefix="uhr-bench-", dir=spec.get("workdir")) as td:
        res = segment(str(spec["raster"]), Path(td) / "mask.tif", model=name, weights="random",
                      device=str(device), options=opts)[0]
    e2e_rss = peak_rss_mb()
    out: dict[str, Any] = {
        "height": res.height, "width": res.width, "pixels": res.height * res.width,
        "seconds": res.seconds, "e2e_mp_per_s": res.mpix_per_s,
        "tiles": res.stats.tiles, "read_s": res.stats.read_seconds, "model_s": res.stats.model_seconds,
        "write_s": res.stats.write_seconds, "peak_rss_mb": round(e2e_rss, 1), "peak_mem_mb": round(e2e_rss, 1),
        "batch_size": batch, "amp": amp,
        # what crossed to the device per output pixel: raw pixels (plus the halo's and the deep branch's reads);
        # with normalisation on the host it would be 4 bytes x bands
        "bytes_to_device_per_px": res.stats.extra.get("inferer", {}).get("bytes_to_device", 0) / max(1, res.height * res.width),
    }
    if device.type == "cuda":
        out["gpu_peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20

    # the model alone on the same raster held in memory: the same inferer, grid and batching, without
    # decoding, merging into a scratch store or writing
    net = build_model(name, "random")
    info = net.info
    if opts.fold_bn:
        fold_batchnorm(net.eval())
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (info.in_channels, res.height, res.width), dtype=np.uint8)
    synchronize(device)
    t = time.perf_counter()
    pred = infer_raster(net, ArrayReader(arr), device=device, tile=opts.tile, batch_size=batch,
                        options=InferOptions(amp=amp, channels_last=opts.channels_last))
    synchronize(device)
    dt = time.perf_counter() - t
    tiles = pred.stats.tiles
    model_mps = res.height * res.width / 1e6 / max(dt, 1e-12)
    out.update({
        "model_only_s": dt, "model_only_mp_per_s": model_mps, "model_only_tiles": tiles,
        "ratio": out["e2e_mp_per_s"] / model_mps if model_mps > 0 else None,
    })
    return out
