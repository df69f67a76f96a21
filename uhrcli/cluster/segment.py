"""`uhrcli.segment(..., client=...)`: rasters on a Dask cluster, the same bytes as a local run.

A folder: one task per raster (`worker.segment_raster`, the local code on a worker), results and errors
gathered per file with the messages of a local batch. A large raster (or a single input) is split: the client
keeps the parts that see the whole image small and once -

  deep branch     one task; its fuse16 context map goes to the scratch store, its mean (C floats) comes back
  shallow pass    a task per tile row; per-tile sums come back and are added in the local run's order
  fusion pass     a task per tile row, on the worker that holds the row's cached features when it can
  tiles           a task per tile row (the rows are the scratch store's chunk rows), written into the store

- and streams the finished rows from the store into the GeoTIFF/COG in row order as they complete, through the
local writer. Image-wide means go to the tasks as arguments (a few hundred floats). The scratch store is the
local one (same fingerprint, same `done` marks), so --resume works after the whole cluster went away, and a
local run can finish a cluster run's store or the other way round.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import replace as replace_options
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..batch import BatchReport, Job, failure_message, interrupted_batch, plan_jobs, stops_batch
from ..engine import EngineStats
from ..errors import OutputError
from ..inference import kind_of
from ..inference.raster import default_tile
from ..io.readers import open_reader
from . import preflight, workers_of
from .worker import ModelSpec, RasterSpec, deep_task, fusion_band, release, segment_raster, shallow_band, tile_band


def _key(kind: str, run: str, *parts: object) -> str:
    return "-".join(["uhr", kind, *map(str, parts), run[:8]])


def _near(workers: list[str] | None) -> dict:
    """Placement of a task: on the worker that cached its row's features, or elsewhere when that one is busy or gone."""
    return {"workers": workers, "allow_other_workers": True} if workers else {}


def _forget(futures: list, done: dict) -> None:
    """Drop the client's hold on finished tasks whose results were taken."""
    keep = [f for f in futures if f not in done]
    futures[:] = keep
    for f in list(done):
        f.release()
    done.clear()


def _cancel(client: Any, futures) -> None:
    try:
        client.cancel(list(futures))
    except Exception:  # noqa: BLE001 - the cluster may be gone: nothing left to cancel
        pass


class ClusterTilePass:
    """The passes of one raster as tasks on the cluster (a `tile_pass` for uhrcli.segment._segment_one)."""

    def __init__(self, client: Any, mspec: ModelSpec):
        self.client, self.mspec = client, mspec
        self.recomputed = 0

    def __call__(self, p) -> EngineStats:
        from distributed import as_completed

        client, g, scratch = self.client, p.grid, p.scratch
        opts = p.opts
        run = uuid.uuid4().hex
        dev = p.inferer.run.device
        kind = kind_of(p.inferer.model)
        spec = RasterSpec(run=run, src=str(p.reader.path), bands=tuple(opts.bands) if opts.bands else None,
                          scaler=p.preprocess.scaler, tile=opts.tile or default_tile(kind, dev), halo=opts.halo,
                          border=opts.border, grid=(g.tile_h, g.tile_w, g.halo, len(g)), scratch=str(scratch.path),
                          batch_size=opts.batch_size,
                          cache_ram=opts.cache_ram if opts.cache_ram is not None else 256 << 20,
                          cache_disk=opts.cache_disk, cache_dir=str(opts.cache_dir) if opts.cache_dir else None)
        total = p.reader.height * p.reader.width
        progress = p.progress or (lambda *a: None)
        rows, cols = g.shape
        band_px = [(a.core_stop - a.core_start) * g.width for a in g.rows]
        done = scratch.done_tiles()
        pending = [r for r in range(rows) if not done[r].all()]
        means = c_gap16 = None
        holder: dict[int, list[str]] = {}  # tile row -> the worker that cached its features
        futures: list = []
        try:
            if pending and kind == "bipath":
                means, c_gap16 = self._twoscale(p, spec, run, total, band_px, holder, futures)
            p.open_streams()
            p.tile_phase()
            t0 = time.perf_counter()
            stats = EngineStats(tiles_resumed=int(done.sum()))
            recomputed = 0
            fut_row = {}
            for r in pending:
                f = client.submit(tile_band, self.mspec, spec, r, means, c_gap16, key=_key("tiles", run, r),
                                  pure=False, **_near(holder.get(r)))
                fut_row[f] = r
            futures.extend(fut_row)
            ready = {r for r in range(rows) if done[r].all()}
            nxt = 0

            def stream() -> None:
                nonlocal nxt
                while nxt in ready:
                    a = g.rows[nxt]
                    if p.streams is not None:
                        probs = scratch.probs
                        p.streams.rows(a.core_start, a.core_stop, np.asarray(scratch.classes[a.core_start:a.core_stop]),
                                       None if probs is None else np.asarray(probs[:, a.core_start:a.core_stop]))
                    nxt += 1

            stream()
            for f in as_completed(list(fut_row)):
                st = f.result()
                r = fut_row[f]
                for name in ("pixels", "tiles", "tiles_skipped_nodata"):
                    setattr(stats, name, getattr(stats, name) + getattr(st, name))
                pend = [c for c in range(cols) if not done[r, c]]
                missing = len(pend) - st.tiles - st.tiles_skipped_nodata
                if missing > 0:  # an attempt whose worker died before its result came back did them: the
                    # scheduler ran the task again, which found the row done
                    stats.tiles += missing
                    stats.pixels += sum(int(g.tile(r, c).core.width * g.tile(r, c).core.height) for c in pend) \
                        - st.pixels
                for name in ("model_seconds", "read_seconds", "write_seconds"):
                    setattr(stats, name, getattr(stats, name) + getattr(st, name))
                recomputed += int(st.extra.get("recomputed", 0))
                progress("tile", sum(int(t.core.width * t.core.height) for t in (g.tile(r, c) for c in range(cols))
                                     if not done[r, t.col]), 0)
                ready.add(r)
                stream()
            stats.seconds = time.perf_counter() - t0
            # tiles whose shallow branch ran again (fusion and tile passes) because their task ran on another
            # worker than the shallow pass's: the price of a moved task
            stats.extra["tiles_recomputed"] = {"fusion pass": self.recomputed, "tiles": recomputed}
            stats.extra["workers"] = len(self.client.scheduler_info(n_workers=-1).get("workers", {}))
            return stats
        except BaseException:
            _cancel(client, futures)
            raise
        finally:
            futures.clear()
            try:  # not waited for: a worker that is dying or restarting must not hold the client up
                client.run(release, run, wait=False)
            except Exception:  # noqa: BLE001 - workers that died took their caches with them
                pass

    def _twoscale(self, p, spec: RasterSpec, run: str, total: int, band_px: list[int], holder: dict,
                  futures: list) -> tuple[dict[str, np.ndarray] | None, np.ndarray | None]:
        """Deep branch, shallow and fusion passes (what a resumed store already holds is not done again); returns
        the image-wide means and the deep context's mean, as the local prepare() computes them."""
        from distributed import as_completed

        client, g, group = self.client, p.grid, p.scratch.group
        progress = p.progress or (lambda *a: None)
        rows, cols = g.shape
        known = group.attrs.get("cluster_deep") if p.resumed else None
        if known is not None and "deep_c16" in group:
            c_gap16 = np.asarray(known["c_gap16"], np.float32)[None]
        else:
            progress("phase:deep branch", 0, total)
            f = client.submit(deep_task, self.mspec, spec, key=_key("deep", run), pure=False)
            futures.append(f)
            c_gap16 = np.asarray(f.result(), np.float32)
            _forget(futures, {f: None})
            group.attrs["cluster_deep"] = {"c_gap16": [float(v) for v in c_gap16[0]]}
            progress("advance", total, 0)
        state = group.attrs.get("inferer_state") if p.resumed else None
        if state and "means" in state:
            return {k: np.asarray(v, np.float32)[None] for k, v in state["means"].items()}, c_gap16
        progress("phase:shallow pass", 0, total)
        fa = {client.submit(shallow_band, self.mspec, spec, r, key=_key("shallow", run, r), pure=False): r
              for r in range(rows)}
        futures.extend(fa)
        parts: dict[int, list] = {}
        for f in as_completed(list(fa)):
            r = fa[f]
            parts[r] = f.result()
            try:
                holder[r] = list(client.who_has(f).get(f.key, ())) or None
            except Exception:  # noqa: BLE001 - a hint only
                holder[r] = None
            progress("advance", band_px[r], 0)
        _forget(futures, fa)  # their sums are here: a worker lost later must not make the scheduler redo them
        sums: dict[str, list] = {}
        live: dict[int, list[int]] = {}
        for r in range(rows):  # the local run's order: tile by tile, row-major, in float64
            for c, part in sorted(parts[r]):
                if part is None:
                    continue
                live.setdefault(r, []).append(c)
                for k, (s, n) in part.items():
                    acc = sums.setdefault(k, [0, 0])
                    acc[0] = acc[0] + torch.from_numpy(s)
                    acc[1] += n
        if not live:
            return None, c_gap16  # every tile is nodata: nothing will run
        means = {k: (s / n).float()[None] for k, (s, n) in sums.items()}
        progress("phase:fusion pass", 0, total)
        mean_s16 = means["s16"].numpy()
        fb = {client.submit(fusion_band, self.mspec, spec, r, live[r], mean_s16, c_gap16, key=_key("fusion", run, r),
                            pure=False, **_near(holder.get(r))): r for r in sorted(live)}
        futures.extend(fb)
        c8: dict[int, list] = {}
        for f in as_completed(list(fb)):
            r = fb[f]
            c8[r] = f.result()
            progress("advance", band_px[r], 0)
        _forget(futures, fb)
        c8_sum: dict[str, Any] = {}
        self.recomputed = sum(int(miss) for r in c8 for _, _, miss in c8[r])
        for r in sorted(c8):
            for _, (s, n), _ in sorted(c8[r], key=lambda item: item[0]):
                c8_sum["s"] = c8_sum.get("s", 0) + torch.from_numpy(s)
                c8_sum["n"] = c8_sum.get("n", 0) + n
        means["c8"] = (c8_sum["s"] / c8_sum["n"]).float()[None]
        out = {k: means[k].numpy() for k in ("s16", "s8", "c8")}
        group.attrs["inferer_state"] = {"means": {k: [float(v) for v in out[k][0]] for k in ("s16", "s8", "c8")}}
        return out, c_gap16


def _splittable(net: Any, opts: Any) -> bool:
    """Row bands need a merger whose rows are independent (crop) and an inferer whose whole-image parts are
    known steps (two-scale) or absent (local models)."""
    return opts.merge == "crop" and kind_of(net) in ("bipath", "local", "plain")


def segment_on_cluster(client: Any, jobs: list[Job], *, many: bool, model: str | None, weights: Any, device: str,
                       net: Any, wdigest: str, options: Any, progress: Callable | None,
                       on_error: Callable | None) -> BatchReport:
    """What `uhrcli.segment` does, on the cluster behind `client` (see the module's docstring)."""
    from distributed import as_completed

    from ..segment import _segment_one

    opts = options
    mspec = ModelSpec(model, str(weights), wdigest, opts.fold_bn, device, opts.amp, opts.channels_last)
    wopts = replace_options(opts, on_note=None)
    split_ok = _splittable(net, opts)
    todo, skipped = plan_jobs(jobs, opts.skip_existing, opts.resume) if many else ([(jobs[0], False)], [])
    report: BatchReport = BatchReport()
    report.skipped = skipped
    if not todo:
        return report
    files = [str(j.src) for j, _ in todo[:64]] + ([str(weights)] if str(weights) != "random" else [])
    folders = {j.target.parent for j, _ in todo} | {j.scratch.parent for j, _ in todo}
    preflight(client, files, folders)
    if opts.overwrite:  # a stale store would be resumed by the tasks: a fresh run starts from nothing
        for j, _ in todo:
            if j.scratch.exists():
                import shutil

                shutil.rmtree(j.scratch, ignore_errors=True)
    elif not many and jobs[0].scratch.exists() and not opts.resume:
        raise OutputError(f"an interrupted run left {jobs[0].scratch}: pass --resume to finish it or --overwrite to "
                          "start again")
    dev = torch.device("cpu")
    amp = bool(opts.amp) if opts.amp is not None else False

    def split(job: Job, replace: bool, prog: Callable | None):
        o = replace_options(opts, overwrite=True) if replace else opts
        return _segment_one(job.src, job.target, job.fmt, net, net.info, wdigest, dev, amp, o, prog,
                            tile_pass=ClusterTilePass(client, mspec))

    def note(notes: list[str]) -> None:
        for n in notes:
            if opts.on_note is not None:
                opts.on_note(n)

    if not many:
        job = jobs[0]
        if split_ok:
            return BatchReport([split(job, False, progress)])
        f = client.submit(segment_raster, mspec, job, wopts, False, key=_key("raster", uuid.uuid4().hex, 0), pure=False)
        try:
            result, notes = f.result()
        except BaseException:
            _cancel(client, [f])
            raise
        note(notes)
        return BatchReport([result])

    sizes: dict[Path, int] = {}
    for job, _ in todo:
        try:
            with open_reader(job.src, bands=opts.bands, validate=False) as r:
                sizes[job.src] = r.height * r.width
        except Exception:  # noqa: BLE001 - a broken file: its own task reports it, as locally
            sizes[job.src] = 0
    total = sum(sizes.values())
    if progress:
        progress(f"input:{len(todo)} rasters", 0, 0)
        progress("start", 0, total)
        progress("plan:rasters=1", 0, total)
        progress("phase:rasters", 0, total)
    run = uuid.uuid4().hex
    # a large raster is split across the workers only when there are fewer of them than workers: otherwise one
    # task each keeps every worker busy without the split's barriers and its once-per-raster deep task
    big = [(j, rep) for j, rep in todo if split_ok and sizes[j.src] >= opts.split_pixels]
    if len(big) >= max(1, len(workers_of(client))):
        big = []
    futs = {client.submit(segment_raster, mspec, j, wopts, rep, key=_key("raster", run, i), pure=False): j
            for i, (j, rep) in enumerate(todo) if (j, rep) not in big}
    results: dict[Path, Any] = {}
    failed: dict[Path, str] = {}
    finished = 0

    def fail(job: Job, exc: BaseException) -> None:
        msg = failure_message(job, exc)
        if stops_batch(exc, msg):
            raise exc
        failed[job.src] = msg
        if on_error is not None:
            on_error(job.src, msg)

    try:
        for job, rep in big:  # each across the workers, while the small ones' tasks queue behind
            try:
                results[job.src] = split(job, rep, None)
            except Exception as exc:  # noqa: BLE001 - that raster's failure
                fail(job, exc)
            finished += 1
            if progress:
                progress("advance", sizes[job.src], 0)
        for f in as_completed(list(futs)):
            job = futs[f]
            try:
                result, notes = f.result()
                note(notes)
                results[job.src] = result
            except Exception as exc:  # noqa: BLE001 - that raster's failure
                fail(job, exc)
            finished += 1
            if progress:
                progress("advance", sizes[job.src], 0)
    except KeyboardInterrupt as exc:
        _cancel(client, futs)
        raise interrupted_batch(exc, todo[min(finished, len(todo) - 1)][0], len(results), len(jobs)) from None
    except BaseException:
        _cancel(client, futs)
        raise
    if progress:
        progress("done", 0, 0)
        progress("end", 0, 0)
    report.extend(results[j.src] for j, _ in todo if j.src in results)
    report.failed = [(j.src, failed[j.src]) for j, _ in todo if j.src in failed]
    return report


__all__ = ["ClusterTilePass", "segment_on_cluster"]
