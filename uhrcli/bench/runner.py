"""`run_benchmark`: the Python API behind `uhr bench`.

Measures what UHR papers tabulate (ISDNet Tables 3/4: FPS and memory at a
given input size), plus what explains those numbers on this machine: FLOPs,
achieved GFLOP/s and the fraction of the measured matmul roof.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..device import default_amp, resolve_device
from ..errors import UsageError
from .machine import MARKER, compute_roof, machine_info

DEFAULT_MODELS = ("isdnet-r18", "deeplabv3-r18", "deeplabv3-r18-down4", "pgnet")
FALLBACK_MODEL = "fcn-tiny"
DEFAULT_SIZES = (1024, 2448)
DEFAULT_PIPELINE_SIZES = (4096,)
BIPATH = ("isdnet-r18", "deeplabv3-r18")  # ISDNet's claim: the bi-path net is faster than the dilated baseline


@dataclass
class BenchConfig:
    """Everything that decides what is measured; None fields take device-dependent defaults."""

    models: Sequence[str] | None = None
    sizes: Sequence[int] | None = None
    device: str = "auto"
    batch_size: int = 1
    amp: bool | None = None  # None: as `uhr segment` runs (fp16 autocast on CUDA, fp32 elsewhere)
    channels_last: bool = True  # as `uhr segment` runs the network
    fold_bn: bool = True  # likewise: BatchNorm folded into the convs
    compile: bool = False
    warmup: int | None = None
    iters: int | None = None
    pipeline: bool = False
    tile: int | None = None  # pipeline mode: the engine's tile size (None: segment's default per model and device)
    seed: int = 0
    roof: bool = True  # measure the matmul roof (a second or two)
    roof_n: int = 2048
    isolate: bool | None = None  # a fresh process per case; default: on for CPU, off for CUDA/MPS
    cache_dir: str | os.PathLike | None = None  # pipeline rasters
    timeout_s: float | None = None  # per worker


@dataclass
class BenchReport:
    """Records (one per model and size), the machine they ran on, and notes worth printing."""

    records: list[dict[str, Any]]
    machine: dict[str, Any]
    mode: str = "model"
    roof_gflops: float | None = None
    baseline_rss_mb: float | None = None
    notes: list[str] = field(default_factory=list)

    def speedups(self) -> list[dict[str, Any]]:
        """FPS of isdnet-r18 over deeplabv3-r18 at each size where both ran (the papers' bi-path speed-up)."""
        if self.mode != "model":
            return []
        ok = {(r["model"], r["size"]): r for r in self.records if r.get("status") == "ok"}
        out = []
        for size in sorted({r["size"] for r in self.records}):
            a, b = ok.get((BIPATH[0], size)), ok.get((BIPATH[1], size))
            if a and b and b["fps"] > 0:
                out.append({"size": size, "fast": BIPATH[0], "slow": BIPATH[1], "speedup": a["fps"] / b["fps"]})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "machine": self.machine, "roof_gflops": self.roof_gflops,
                "baseline_rss_mb": self.baseline_rss_mb, "notes": self.notes,
                "speedups": self.speedups(), "records": self.records}


def parse_sizes(sizes: Sequence[Any]) -> list[int]:
    """Sizes are positive integer side lengths in pixels."""
    out = []
    for s in sizes:
        if isinstance(s, int) and not isinstance(s, bool):
            v = s
        elif isinstance(s, str) and s.strip().lstrip("+").isdigit():
            v = int(s)
        else:
            raise UsageError(f"--sizes must be positive integers, got {s!r}")
        if v <= 0:
            raise UsageError(f"--sizes must be positive integers, got {s!r}")
        out.append(v)
    if not out:
        raise UsageError("--sizes is empty")
    return out


def resolve_models(models: Sequence[str] | None, notes: list[str], task: str | None = None) -> list[str]:
    """Check names against the registry; None -> the paper models that are registered (or fcn-tiny)."""
    from ..models import list_models

    available = list_models()
    if models:
        unknown = [m for m in models if m not in available]
        if unknown:
            raise UsageError(f"unknown model {unknown[0]!r}; available: {', '.join(available)}")
        return list(dict.fromkeys(models))
    chosen = [m for m in DEFAULT_MODELS if m in available]
    if task is not None:
        chosen = [m for m in chosen if _task_of(m) == task]
    if not chosen:
        notes.append(f"none of {', '.join(DEFAULT_MODELS)} is registered; benchmarking {FALLBACK_MODEL} instead")
        chosen = [FALLBACK_MODEL]
    return chosen


def _task_of(name: str) -> str:
    from ..models import create_model

    with torch.device("meta"):
        return create_model(name).info.task


def run_worker(spec: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Run one case in a fresh `python -m uhrcli.bench.worker`; a killed worker becomes an OOM row."""
    base = {k: spec[k] for k in ("model", "size", "mode") if k in spec}
    try:
        proc = subprocess.run([sys.executable, "-m", "uhrcli.bench.worker"], input=json.dumps(spec),
                              capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {**base, "status": "error", "error": f"worker timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER):])
    if proc.returncode in (-signal.SIGKILL, 137):
        return {**base, "status": "oom", "error": "worker killed (SIGKILL): most likely out of memory"}
    tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    return {**base, "status": "error", "error": f"worker exited {proc.returncode}: {tail[-1] if tail else 'no output'}"}


def run_benchmark(config: BenchConfig | None = None, progress: Callable[[str], Any] | None = None,
                  **overrides: Any) -> BenchReport:
    """Measure every (model, size) case of `config` and return the report.

    Keyword overrides set BenchConfig fields (run_benchmark(models=['fcn-tiny'], sizes=[256])).
    Rows that run out of memory or fail are kept with status 'oom'/'error'; the others still run.
    """
    cfg = config or BenchConfig()
    for k, v in overrides.items():
        if not hasattr(cfg, k):
            raise TypeError(f"unknown benchmark option {k!r}")
        setattr(cfg, k, v)
    notes: list[str] = []
    device = resolve_device(cfg.device)
    if cfg.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    sizes = parse_sizes(cfg.sizes if cfg.sizes else (DEFAULT_PIPELINE_SIZES if cfg.pipeline else DEFAULT_SIZES))
    models = resolve_models(cfg.models, notes, task="segment" if cfg.pipeline else None)
    accel = device.type in ("cuda", "mps")
    warmup = cfg.warmup if cfg.warmup is not None else (10 if accel else 2)
    iters = cfg.iters if cfg.iters is not None else (50 if accel else 5)
    if warmup < 0 or iters < 1:
        raise UsageError("--warmup must be >= 0 and --iters >= 1")
    amp = default_amp(device) if cfg.amp is None else cfg.amp
    if amp and device.type == "cpu":
        notes.append("--amp ignored on CPU: fp16 autocast is CUDA/MPS only (and bf16 is never used on CPU)")
        amp = False
    isolate = (device.type == "cpu") if cfg.isolate is None else cfg.isolate
    if cfg.pipeline:
        isolate = True  # peak RSS of the whole pipeline needs its own process
    dtype = "fp16-autocast" if amp else "fp32"
    settings = {"mode": "pipeline" if cfg.pipeline else "model", "dtype": dtype, "amp": amp,
                "channels_last": cfg.channels_last, "fold_bn": cfg.fold_bn, "compile": cfg.compile,
                "batch_size": cfg.batch_size,
                "warmup": warmup, "iters": iters, "sizes": sizes, "models": models, "isolated": isolate,
                "seed": cfg.seed}
    if cfg.pipeline:
        settings.update(tile=cfg.tile, channels_last=True, fold_bn=True, compile=False)
        if not cfg.channels_last or not cfg.fold_bn or cfg.compile:
            notes.append("--no-channels-last/--no-fold-bn/--compile do not apply to --pipeline "
                         "(the engine's own settings are used)")
    machine = machine_info(device, settings)

    roof = None
    if cfg.roof:
        say(progress, f"measuring the {dtype} matmul roof ({cfg.roof_n}x{cfg.roof_n})")
        roof = compute_roof(device, n=cfg.roof_n, amp=amp)
        machine["roof_gflops"] = roof
        if device.type == "cuda":  # the other roofs a reader compares against: fp32 without and with TF32, fp16
            machine["roofs_gflops"] = {"fp32": compute_roof(device, n=cfg.roof_n, amp=False, tf32=False),
                                       "tf32": compute_roof(device, n=cfg.roof_n, amp=False, tf32=True),
                                       "fp16": compute_roof(device, n=cfg.roof_n, amp=True)}
    baseline = None
    if isolate:
        say(progress, "measuring the baseline RSS of an idle worker (torch imported)")
        b = run_worker({"mode": "baseline"}, cfg.timeout_s)
        baseline = b.get("peak_rss_mb")
        machine["baseline_rss_mb"] = baseline

    records: list[dict[str, Any]] = []
    if cfg.pipeline:
        from .synth import cache_dir, cached_raster

        folder = cache_dir(cfg.cache_dir)
        say(progress, f"cache: synthetic rasters and the runs' temporary outputs go to {folder} "
                      "(--cache-dir or UHR_CACHE_DIR moves it)")
        for size in sizes:
            say(progress, f"synthetic raster {size}x{size}")
            raster, cached = cached_raster(size, cfg.cache_dir)
            for name in models:
                say(progress, f"pipeline {name} @ {size} ({'cached' if cached else 'new'} raster {raster.name})")
                spec = {"mode": "pipeline", "model": name, "size": size, "raster": str(raster),
                        "device": str(device), "batch_size": cfg.batch_size, "amp": amp, "tile": cfg.tile,
                        "workdir": str(folder)}
                rec = run_worker(spec, cfg.timeout_s)
                rec["raster"] = str(raster)
                _finish(rec, roof, baseline)
                records.append(rec)
    else:
        for name in models:
            for size in sizes:
                say(progress, f"{name} @ {size}x{size}")
                spec = {"mode": "model", "model": name, "size": size, "device": str(device),
                        "batch_size": cfg.batch_size, "amp": amp, "channels_last": cfg.channels_last,
                        "fold_bn": cfg.fold_bn,
                        "compile": cfg.compile, "warmup": warmup, "iters": iters, "seed": cfg.seed}
                if isolate:
                    rec = run_worker(spec, cfg.timeout_s)
                else:
                    from .model import measure_model

                    rec = measure_model(spec)
                _finish(rec, roof, baseline)
                records.append(rec)
    return BenchReport(records=records, machine=machine, mode="pipeline" if cfg.pipeline else "model",
                       roof_gflops=roof, baseline_rss_mb=baseline, notes=notes)


def _finish(rec: dict[str, Any], roof: float | None, baseline: float | None) -> None:
    """Derived columns: efficiency against the roof and the model's own share of RSS."""
    rec.setdefault("status", "ok")
    if rec.get("status") != "ok":
        return
    if roof and rec.get("gflops_per_s") is not None:
        rec["efficiency"] = rec["gflops_per_s"] / roof
    if baseline is not None and rec.get("peak_rss_mb") is not None:
        rec["baseline_rss_mb"] = baseline
        rec["model_rss_mb"] = rec["peak_rss_mb"] - baseline


def say(progress: Callable[[str], Any] | None, msg: str) -> None:
    if progress is not None:
        progress(msg)


def report_from_json(path: str | os.PathLike) -> BenchReport:
    """Load a report written by write_json (to re-plot or compare runs)."""
    d = json.loads(Path(path).read_text())
    return BenchReport(records=d["records"], machine=d["machine"], mode=d.get("mode", "model"),
                       roof_gflops=d.get("roof_gflops"), baseline_rss_mb=d.get("baseline_rss_mb"),
                       notes=d.get("notes", []))


__all__ = ["BenchConfig", "BenchReport", "run_benchmark", "run_worker", "parse_sizes", "resolve_models",
           "report_from_json", "DEFAULT_MODELS"]
