"""What runs on a Dask worker: the tasks of `uhr segment` on a cluster.

A worker process loads each model once (not per task) and keeps, per run, the raster's reader and the
inferer with its feature caches, so the passes of one raster (shallow, fusion, tiles) that land on the same
worker reuse what the earlier ones cached; a task that lands elsewhere (a worker died, the scheduler moved
it) computes the same bytes from the pixels. Every write goes to the scratch store on shared storage and is
idempotent, so a task that is run again after its worker was killed gives the same output.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace as replace_options
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ClusterError

MAX_RUNS = 2  # runs whose reader and caches a worker keeps (a folder run's split rasters go one at a time)
_lock = threading.Lock()
_models: dict["ModelSpec", tuple[Any, torch.device, bool]] = {}
_runs: "OrderedDict[str, _Run]" = OrderedDict()


WorkerSetupError = ClusterError  # what a worker raises when it cannot do its part


@dataclass(frozen=True)
class ModelSpec:
    """Which network a worker builds: what `uhr segment` was given, resolved on the worker."""

    name: str | None
    weights: str  # a file every worker reads at this path, or "random"
    digest: str  # uhrcli.scratch.weights_digest of the client's file: the worker's must match
    fold_bn: bool
    device: str
    amp: bool | None
    channels_last: bool
    kwargs: tuple = ()  # (name, value) pairs of the model's constructor options
    task: str = "segment"  # or "saliency" (built by uhrcli.saliency.load_saliency_model)


@dataclass(frozen=True)
class RasterSpec:
    """One raster split across workers: everything a worker needs to rebuild the client's grid and inferer."""

    run: str  # unique per run: the key of the worker's reader and caches
    src: str
    bands: tuple[int, ...] | None
    scaler: Any  # uhrcli.io.scaling.Scaler the client chose
    tile: int
    halo: int | None
    border: str
    grid: tuple[int, int, int, int]  # (tile_h, tile_w, halo, tiles): checked against the worker's own
    scratch: str  # the zarr scratch store, on storage every worker sees
    batch_size: int | str  # a number, or auto (sized on the worker's device)
    cache_ram: int
    cache_disk: int | None
    cache_dir: str | None


def _where() -> str:
    try:
        from distributed import get_worker

        return f"worker {get_worker().address}"
    except Exception:  # noqa: BLE001 - not on a worker (tests call the tasks directly)
        return "this process"


def load_model(spec: ModelSpec) -> tuple[Any, torch.device, bool]:
    """The network of `spec` on this worker, built once per worker process."""
    with _lock:
        hit = _models.get(spec)
        if hit is not None:
            return hit
        from ..device import default_amp, resolve_device
        from ..models import build_model
        from ..models.fuse import fold_batchnorm
        from ..scratch import weights_digest

        if spec.weights != "random":
            if not Path(spec.weights).exists():
                raise WorkerSetupError(f"{_where()} has no weights file {spec.weights}: every worker needs it at the "
                                       "same path (a shared folder)")
            if weights_digest(spec.weights) != spec.digest:
                raise WorkerSetupError(f"{_where()}: {spec.weights} is a different file from the client's: every "
                                       "worker needs the same weights")
        dev = resolve_device(spec.device)
        if spec.task == "saliency":
            from ..saliency import load_saliency_model

            net = load_saliency_model(spec.name, spec.weights, dict(spec.kwargs)).to(dev).eval()
        else:
            net = build_model(spec.name, spec.weights, **dict(spec.kwargs))
        if spec.fold_bn:
            fold_batchnorm(net.eval())
        amp = default_amp(dev) if spec.amp is None else spec.amp
        if len(_models) >= 2:  # a worker serves a run or two: keep the memory of two models at most
            _models.pop(next(iter(_models)))
        _models[spec] = (net, dev, amp)
        return _models[spec]


# -- one raster per task ---------------------------------------------------------------------------------------
def segment_raster(mspec: ModelSpec, job: Any, opts: Any, replace: bool) -> tuple[Any, list[str]]:
    """A whole raster on this worker, as `uhr segment` runs it locally; returns (SegmentResult, notes).

    A scratch store already there was left by this run's own earlier attempt (the client refused or removed
    every other before submitting): the task resumes it, so a task moved off a dead worker loses no tile."""
    from ..segment import _segment_one

    net, dev, amp = load_model(mspec)
    notes: list[str] = []
    o = replace_options(opts, on_note=notes.append, resume=opts.resume or job.scratch.exists(),
                        overwrite=opts.overwrite or replace)
    result = _segment_one(job.src, job.target, job.fmt, net, net.info, mspec.digest, dev, amp, o, None)
    return result, notes


def saliency_chunk(mspec: ModelSpec, jobs: list, params: dict) -> tuple[list, list, list]:
    """Photos through uhrcli.saliency's local pipeline on this worker: (results, [(input, message)], notes)."""
    from ..saliency import SaliencyReport, process_jobs

    net, dev, amp = load_model(mspec)
    report = SaliencyReport()
    failed: list = []

    def fail(job: Any, msg: str) -> None:
        failed.append((job.src, msg if str(job.src) in msg else f"{job.src}: {msg}"))

    p = params
    process_jobs(jobs, net, dev, amp, p["size"], p["kinds"], p["threshold"], p["bit_depth"], p["batch_size"],
                 p["stream_pixels"], p["strip_rows"], report, fail, None)
    return report.results, failed, report.notes


# -- one raster across workers ---------------------------------------------------------------------------------
class StoredMap:
    """The deep path's context map as the client's run stored it in the scratch store (read by window)."""

    def __init__(self, array: Any):
        self.data = array
        self.shape = tuple(int(v) for v in array.shape)

    def read(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        return np.asarray(self.data[:, r0:r1, c0:c1])

    def close(self) -> None:
        pass


class BandView:
    """The scratch store as the engine sees it for one task: only the pending tiles of tile row `row`."""

    def __init__(self, scratch: Any, row: int):
        self._scratch, self.row = scratch, row
        self.classes, self.probs, self.valid = scratch.classes, scratch.probs, scratch.valid

    def done_tiles(self) -> np.ndarray:
        done = self._scratch.done_tiles()
        out = np.ones_like(done)
        out[self.row] = done[self.row]
        return out

    def mark_done(self, r: int, c: int) -> None:
        self._scratch.mark_done(r, c)

    def mark_row_done(self, r: int) -> None:
        self._scratch.mark_row_done(r)


class _Run:
    """A raster's reader, grid, inferer and scratch store on this worker, for the tasks of one run."""

    def __init__(self, mspec: ModelSpec, spec: RasterSpec):
        import zarr

        from ..engine import Preprocess
        from ..featcache import CacheBudget
        from ..inference import InferOptions
        from ..inference.raster import plan
        from ..io.readers import open_reader
        from ..scratch import Scratch

        net, dev, amp = load_model(mspec)
        self.lock = threading.Lock()  # tasks of a run on one worker take turns with its inferer
        self.reader = open_reader(spec.src, bands=list(spec.bands) if spec.bands else None)
        try:
            info = net.info
            self.preprocess = Preprocess(spec.scaler, info.mean, info.std)
            budget = CacheBudget(device=0, ram=spec.cache_ram,
                                 disk=spec.cache_disk if spec.cache_disk is not None else 64 << 30,
                                 dir=Path(spec.cache_dir) if spec.cache_dir else None)
            if dev.type == "cuda":
                budget.device = torch.cuda.mem_get_info(dev)[0] // 4
            self.inferer, self.grid = plan(net, self.reader.height, self.reader.width, dev, InferOptions(
                amp=amp, channels_last=mspec.channels_last, border=spec.border, cache=budget), spec.tile, spec.halo)
            g = self.grid
            if (g.tile_h, g.tile_w, g.halo, len(g)) != tuple(spec.grid):
                raise WorkerSetupError(f"{_where()} plans a different tile grid for {spec.src} "
                                       f"({g.tile_h}x{g.tile_w}, halo {g.halo}) than the client: run the same uhr "
                                       "version on every machine")
            if not Path(spec.scratch).exists():
                raise WorkerSetupError(f"{_where()} cannot see the scratch store {spec.scratch}: put it on storage "
                                       "every worker sees (--scratch)")
            self.scratch = Scratch(Path(spec.scratch), zarr.open_group(spec.scratch, mode="r+"))
            self.twoscale = hasattr(self.inferer, "shallow_tile")
            if self.twoscale:
                self.inferer.begin(self.grid, self.preprocess)
            else:
                self.inferer.prepare(self.reader, self.preprocess, self.grid)
        except BaseException:
            self.reader.close()
            raise

    def close(self) -> None:
        try:
            self.inferer.close()
        finally:
            self.reader.close()

    def use_deep(self) -> None:
        if self.inferer.c16 is None:
            self.inferer.use_deep(StoredMap(self.scratch.group["deep_c16"]))


def _run(mspec: ModelSpec, spec: RasterSpec) -> _Run:
    with _lock:
        hit = _runs.get(spec.run)
        if hit is not None:
            _runs.move_to_end(spec.run)
            return hit
    run = _Run(mspec, spec)
    with _lock:
        if spec.run in _runs:  # another thread of this worker built it meanwhile
            run.close()
            return _runs[spec.run]
        _runs[spec.run] = run
        while len(_runs) > MAX_RUNS:
            _runs.popitem(last=False)[1].close()
    return run


def release(run_id: str) -> bool:
    """Forget a finished run: its reader, caches and inferer (client.run calls it on every worker)."""
    with _lock:
        run = _runs.pop(run_id, None)
    if run is not None:
        run.close()
    return run is not None


def _sums(part: dict) -> dict[str, tuple[np.ndarray, int]]:
    return {k: (s.cpu().numpy(), int(n)) for k, (s, n) in part.items()}


def deep_task(mspec: ModelSpec, spec: RasterSpec) -> np.ndarray:
    """The deep path over the whole raster, once: its fuse16 context map goes into the scratch store
    (`deep_c16`, read by window by the fusion and tile tasks); returns the map's mean (1, C) float32."""
    run = _run(mspec, spec)
    with run.lock:
        c_gap16 = run.inferer.deep_context(run.reader, run.preprocess)
        c16 = run.inferer.c16
        c, h, w = c16.shape
        arr = run.scratch.group.create_array("deep_c16", shape=(c, h, w), chunks=(c, min(h, 128), min(w, 128)),
                                             dtype="float32", fill_value=0.0, overwrite=True)
        for r in range(0, h, 128):
            arr[:, r:r + 128] = c16.read(r, min(h, r + 128), 0, w)
        return c_gap16.cpu().numpy()


def shallow_band(mspec: ModelSpec, spec: RasterSpec, row: int) -> list[tuple[int, dict | None]]:
    """Pass A over tile row `row`: per tile (column, {name: (core sum, pixels)}), None for a tile with no data.
    s8 and s16 stay in this worker's cache for the next passes."""
    from ..engine import _read_tile

    run = _run(mspec, spec)
    out: list[tuple[int, dict | None]] = []
    with run.lock:
        for c in range(run.grid.shape[1]):
            t = run.grid.tile(row, c)
            item = _read_tile(run.reader, t, True)
            out.append((c, None if item.nodata else _sums(run.inferer.shallow_tile(t, item.x))))
    return out


def fusion_band(mspec: ModelSpec, spec: RasterSpec, row: int, cols: Sequence[int], mean_s16: np.ndarray,
                c_gap16: np.ndarray) -> list[tuple[int, tuple[np.ndarray, int], bool]]:
    """Pass B over the tiles `cols` (those holding data) of tile row `row`: per tile c8's core sum, and whether
    the tile was not in this worker's cache (computed again from its pixels)."""
    run = _run(mspec, spec)
    out = []
    with run.lock:
        run.use_deep()
        run.inferer.set_weights16(torch.from_numpy(mean_s16), torch.from_numpy(c_gap16))
        for c in cols:
            t = run.grid.tile(row, c)
            x = None if not run.inferer.needs_pixels(t) else run.reader.read(t.read)
            s, n = run.inferer.fusion_tile(t, x)
            out.append((c, (s.cpu().numpy(), int(n)), x is not None))  # True: its shallow branch ran again
    return out


def tile_band(mspec: ModelSpec, spec: RasterSpec, row: int, means: dict[str, np.ndarray] | None,
              c_gap16: np.ndarray | None) -> Any:
    """The tile pass over the pending tiles of tile row `row`, written into the scratch store (one write per
    chunk: bands are chunk-aligned) and marked done; returns its EngineStats."""
    from ..engine import run_tiles
    from ..segment import resolve_batch_size

    run = _run(mspec, spec)
    with run.lock:
        if run.twoscale and means is not None and c_gap16 is not None:
            run.use_deep()
            run.inferer.set_means({k: torch.from_numpy(v) for k, v in means.items()}, torch.from_numpy(c_gap16))
        before = getattr(getattr(run.inferer, "stats", None), "tiles_recomputed", 0)
        stats = run_tiles(run.reader, run.grid, run.inferer, BandView(run.scratch, row), merge="crop",
                          batch_size=resolve_batch_size(spec.batch_size, run.inferer, run.grid))
        stats.extra["recomputed"] = getattr(getattr(run.inferer, "stats", None), "tiles_recomputed", 0) - before
        return stats


# -- checks and setup --------------------------------------------------------------------------------------------
def check_paths(files: Sequence[str], probes: Sequence[tuple[str, str]]) -> str | None:
    """On a worker: the first of `files` it cannot read, or the first probe (path, token) it cannot see, as one
    line; None when all is well."""
    for f in files:
        if not os.access(f, os.R_OK):
            return f"cannot read {f}: every worker needs it at the same path (a shared folder)"
    for path, token in probes:
        try:
            seen = Path(path).read_text()
        except OSError:
            seen = None
        if seen != token:
            where = Path(path).parent
            return (f"cannot see {where} as the client does: the folder must be on storage every worker sees "
                    "(a shared file system; choose it with --scratch)")
    return None


def set_threads(n: int) -> None:
    torch.set_num_threads(max(1, int(n)))


__all__ = ["ModelSpec", "RasterSpec", "WorkerSetupError", "load_model", "segment_raster", "deep_task",
           "shallow_band", "fusion_band", "tile_band", "saliency_chunk", "release", "check_paths", "BandView", "StoredMap"]
