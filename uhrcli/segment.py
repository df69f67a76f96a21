"""`uhrcli.segment(...)`: the Python API behind `uhr segment`."""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace as replace_options
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import __version__
from .device import default_amp, resolve_device
from .engine import EngineStats, Preprocess, run_tiles
from .inference.compile import auto_batch_size, compile_model
from .merge import merge_margin
from .batch import BatchReport, Job, check_existing, run_batch
from .proc import bound_heap, limit_arenas, peak_rss_mb
from .progress import ReportReads, segment_plan
from .errors import InputError, OutputError, UsageError
from .io.inputs import expand_inputs, is_zarr_store
from .io.readers import RasterReader, open_reader
from .io.radiometry import choose_scaler
from .io import writers as W
from .io.stream import MapStreams
from .featcache import CacheBudget
from .inference import InferOptions, kind_of
from .inference.raster import inferer_report, plan
from .models import build_model, list_models
from .models.checkpoint import checkpoint_metadata
from .models.fuse import fold_batchnorm
from .scratch import OutputLock, Scratch, file_identity, scratch_path, weights_digest
from .tiling import BORDERS
from .vector import check_segment_vector, vectorize_segment_output

DEFAULT_CACHE_RAM = 256 << 20
# Rasters above this size get a fixed 4 MB mmap threshold when their model runs passes over the whole raster
# (ISDNet, the deep-path baselines): without it peak RSS grew from 1.4 GB (36 MP) to 2.2 GB (1 GP,
# isdnet-r18); with it 1.4 GB at 1 GP. It costs about 10% of speed (mappings are zeroed afresh), so smaller
# rasters keep glibc's default, and so do models that run tile by tile: their tiles allocate the same sizes
# each time, which glibc reuses (identity at 1 GP: 804 MB peak and 44.9 MP/s by default, 531 MB and
# 34.2 MP/s bounded).
BOUND_HEAP_PIXELS = 256_000_000
BOUND_HEAP_KINDS = ("bipath", "deep")


def default_model_name() -> str:
    return "isdnet-r18" if "isdnet-r18" in list_models() else "fcn-tiny"


@dataclass
class SegmentResult:
    input: Path
    output: Path
    probs_output: Path | None
    height: int
    width: int
    stats: EngineStats
    seconds: float
    peak_rss_mb: float
    resumed: bool = False
    notes: list[str] = field(default_factory=list)
    scaling: str = ""  # the pixel scaling used (Scaler.describe())

    @property
    def mpix_per_s(self) -> float:
        return self.height * self.width / 1e6 / self.seconds if self.seconds > 0 else 0.0


@dataclass
class SegmentOptions:
    tile: int | None = None  # None: default_tile(model kind, device)
    halo: int | None = None  # None: what the model needs for exact output
    merge: str = "crop"
    batch_size: int | str = "auto"  # tiles per forward pass; auto: 1 on CPU, what memory holds on CUDA
    compile: bool = False  # torch.compile what the model runs per tile (uhrcli.inference.compile)
    fmt: str | None = None
    probs: bool = False
    bands: Sequence[int] | None = None
    stretch: str = "auto"
    overwrite: bool = False
    resume: bool = False
    skip_existing: bool = False  # skip inputs whose outputs all exist (finish a batch)
    amp: bool | None = None
    channels_last: bool = True
    fold_bn: bool = True  # fold BatchNorm into convs for inference (about 10% faster for ISDNet on CPU)
    preview: bool = False
    recursive: bool = False  # folders: take their subfolders' rasters too, mirrored into the output folder
    border: str = "clip"  # clip (exact: the network pads at the image border) or mirror
    cache_ram: int | None = None  # bytes of host RAM for features kept between passes (None: default)
    cache_disk: int | None = None  # bytes of disk for them (None: default)
    cache_device: int | None = None  # bytes of device memory (CUDA; None: a quarter of what is free)
    cache_dir: str | os.PathLike | None = None  # folder of the disk tier (None: beside the output)
    scaling_record: dict | None = None  # how the training data were scaled (None: the checkpoint's record)
    on_note: Callable[[str], Any] | None = None  # one-line notes (the scaling chosen), as they happen
    vector: str | os.PathLike | None = None  # also write the class map's polygons here (uhrcli.vector)
    refine: str | None = None  # refine the probabilities before the class map: guided or crf (uhrcli.refine)
    refine_options: Any = None  # a uhrcli.refine.RefineOptions (None: its defaults); method is `refine`
    scratch: str | os.PathLike | None = None  # folder of the scratch stores (None: beside each output); on a
    # cluster, storage every worker sees
    split_pixels: int = 64_000_000  # on a cluster, rasters of a folder run this large are split across workers
    # (when there are fewer of them than workers)


def cache_budget(opts: SegmentOptions, device: torch.device, default_dir: Path | None) -> CacheBudget:
    """Budgets of the feature caches: the options, else defaults sized for a 2 GB process on CPU."""
    dev = opts.cache_device
    if dev is None and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        dev = free // 4
    folder = Path(opts.cache_dir) if opts.cache_dir is not None else default_dir
    disk = opts.cache_disk
    if disk is None:  # most of what is free on the disk that will hold it
        probe = folder if folder is not None else Path(tempfile.gettempdir())
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        disk = int(shutil.disk_usage(probe).free * 0.8)
    return CacheBudget(device=int(dev or 0), ram=DEFAULT_CACHE_RAM if opts.cache_ram is None else int(opts.cache_ram),
                       disk=int(disk), dir=folder)


def plan_outputs(inputs: list[tuple[Path, Path]], output: Path, fmt: str | None, many: bool
                 ) -> list[tuple[Path, Path, str]]:
    """(input, target, format) per (input, name). Several inputs write into the output folder, by name."""
    if not many:
        f = W.infer_format(output, fmt)
        return [(inputs[0][0], output, f)]
    if output.exists() and not output.is_dir():
        raise OutputError(f"{output}: several inputs need an output directory, and this is a file")
    f = W.infer_format(Path("x.tif"), fmt)
    names: dict[str, Path] = {}
    plans = []
    for p, rel in inputs:
        key = str(rel).lower()
        if key in names:
            raise UsageError(f"two inputs would write the same output name {str(rel)!r}: {names[key]} and {p}")
        names[key] = p
        plans.append((p, output / (str(rel) + W.output_suffix(f)), f))
    return plans


def _check_bands(reader: RasterReader, info) -> None:
    if reader.count != info.in_channels:
        hint = " (choose them with --bands, e.g. --bands 1,2,3" + (" or 1,1,1 for a single band)" if reader.count == 1 else ")")
        raise InputError(f"{reader.path}: {reader.count} band(s) selected, model {info.name} expects {info.in_channels}{hint}")


def segment(inputs: str | os.PathLike | Sequence[str | os.PathLike], output: str | os.PathLike, *,
            model: str | None = None, weights: str | os.PathLike | None = None, device: str = "auto",
            options: SegmentOptions | None = None, progress: Callable[[str, int, int], Any] | None = None,
            on_error: Callable[[Path, str], Any] | None = None, client: Any = None,
            **kw: Any) -> BatchReport[SegmentResult]:
    """Segment one raster (or several, or a folder) into a class map that keeps the georeferencing.

    progress(event, done, total) hears of every phase of the work (see uhrcli.progress for the events;
    `uhrcli.progress.JobProgress` keeps them, with rates and an ETA).
    Keyword options (tile=, halo=, merge=, ...) override `options`. Returns the results (a list) with
    `.failed` [(input, message)] and `.skipped`: in a batch a bad raster is reported (on_error(input,
    message) as it happens) and the others go on; a single input raises its error.

    client: a `distributed.Client`: the rasters run on its Dask cluster (uhrcli.cluster), one task per raster,
    a large one split into row bands across the workers; outputs are the same bytes as a local run.
    """
    opts = options or SegmentOptions()
    for k, v in kw.items():
        if not hasattr(opts, k):
            raise TypeError(f"unknown option {k!r}")
        setattr(opts, k, v)
    if opts.merge not in ("crop", "blend"):
        raise UsageError(f"--merge must be crop or blend, got {opts.merge!r}")
    if opts.border not in BORDERS:
        raise UsageError(f"--border must be {' or '.join(BORDERS)}, got {opts.border!r}")
    if opts.tile is not None and opts.tile < 16:
        raise UsageError(f"--tile must be at least 16, got {opts.tile}")
    if opts.halo is not None and opts.halo < 0:
        raise UsageError(f"--halo must be >= 0, got {opts.halo}")
    if opts.batch_size != "auto" and (not isinstance(opts.batch_size, int) or opts.batch_size < 1):
        raise UsageError(f"--batch-size must be a whole number >= 1 or auto, got {opts.batch_size!r}")
    if opts.refine is not None:
        _check_refine(opts)
    given = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    output = Path(output)
    many = len(given) > 1 or any(Path(p).is_dir() and not is_zarr_store(Path(p)) for p in given)
    paths = expand_inputs(given, recursive=opts.recursive, exclude=output if many else None)
    many = many or len(paths) > 1
    plans = plan_outputs(paths, output, opts.fmt, many)
    if opts.refine is not None and any(f not in ("tif", "cog") for _, _, f in plans):
        raise UsageError("--refine writes GeoTIFF or COG outputs (.tif), not zarr or PNG")
    if opts.vector is not None:
        check_segment_vector(opts.vector, many)
    jobs = [Job(src, target, fmt, _outputs(target, fmt, opts), scratch_path(target, opts.scratch))
            for src, target, fmt in plans]
    if many:
        check_existing(jobs, opts.overwrite, opts.skip_existing, opts.resume)
    elif opts.overwrite and opts.skip_existing:
        raise UsageError("--overwrite and --skip-existing contradict each other: pick one")

    dev = resolve_device(device)
    amp = default_amp(dev) if opts.amp is None else opts.amp
    name = model if model is not None else (None if weights not in (None, "random") else default_model_name())
    if weights is None:
        raise UsageError("no weights: pass --weights FILE (a trained checkpoint) or --weights random for a dry run")
    net = build_model(name, weights)
    info = net.info
    if info.task != "segment":
        raise UsageError(f"model {info.name} is a {info.task} model; use `uhr {info.task}`")
    if info.num_classes > W.NODATA:
        raise UsageError(f"model {info.name} has {info.num_classes} classes: class maps are 8-bit with {W.NODATA} "
                         f"as nodata, so they hold at most {W.NODATA} classes")
    if opts.fold_bn:
        fold_batchnorm(net.eval())
    if opts.compile:
        compile_model(net)
    wdigest = weights_digest(weights)
    if opts.scaling_record is None:
        opts = replace_options(opts, scaling_record=checkpoint_metadata(weights).get("extra", {}).get("scaling") or {})
    if many:
        output.mkdir(parents=True, exist_ok=True)
    if client is not None:
        from .cluster.segment import segment_on_cluster

        return segment_on_cluster(client, jobs, many=many, model=name, weights=weights, device=device, net=net,
                                  wdigest=wdigest, options=opts, progress=progress, on_error=on_error)

    def one(job: Job, replace: bool) -> SegmentResult:
        o = replace_options(opts, overwrite=True) if replace else opts
        return _segment_one(job.src, job.target, job.fmt, net, info, wdigest, dev, amp, o, progress)

    return run_batch(jobs, one, many=many, skip_existing=opts.skip_existing, resume=opts.resume, on_error=on_error)


def _outputs(target: Path, fmt: str, opts: SegmentOptions) -> list[Path]:
    """Every file a run writes for one input: the map, then its probabilities, preview and polygons if asked for."""
    ppath = W.probs_path(target, fmt) if opts.probs else None
    preview = target.with_name(target.stem + "_preview.png") if opts.preview else None
    vector = Path(opts.vector) if opts.vector is not None else None
    return [target] + [p for p in (ppath, preview, vector) if p is not None and p != target]


def _check_refine(opts: SegmentOptions) -> None:
    from .refine import METHODS
    from .refine.api import check_options, RefineOptions

    if opts.refine not in METHODS:
        raise UsageError(f"--refine must be {' or '.join(METHODS)}, got {opts.refine!r}")
    if opts.preview:
        raise UsageError("--preview draws the unrefined map: it does not go with --refine (yet)")
    check_options(replace_options(opts.refine_options or RefineOptions(), method=opts.refine))


def _segment_refined(src: Path, target: Path, fmt: str, net, info, wdigest: str, dev, amp: bool,
                     opts: SegmentOptions, progress) -> SegmentResult:
    """Segment into a work folder beside the target (class map and probabilities), refine the probabilities
    into the target, then drop the folder. An interrupted segmentation resumes from it with --resume."""
    from .refine import RefineOptions
    from .refine.api import refine_locked

    t_start = time.perf_counter()
    ppath = W.probs_path(target, fmt) if opts.probs else None
    outputs = [p for p in (target, ppath) if p is not None]
    W.refuse_inputs_as_outputs(outputs, [src])
    W.check_target(target, True)
    work = target.with_name(f".{target.name}.uhr-refine")
    with OutputLock(target):
        for p in outputs:
            if p.exists() and not (opts.overwrite or opts.resume):
                raise OutputError(f"output exists: {p} (pass --overwrite to replace it)")
        if opts.resume and all(p.exists() for p in outputs) and not work.exists():
            return _already_done(src, target, ppath, opts, t_start)
        work.mkdir(exist_ok=True)
        seg, seg_probs = work / "segment.tif", work / "segment_probs.tif"
        inner = replace_options(opts, probs=True, preview=False, vector=None, fmt="tif",
                                overwrite=not opts.resume)
        quiet_end = None
        if progress is not None:  # one "done"/"end" for the whole job, after the refinement
            def quiet_end(event: str, done: int, total: int) -> None:
                if event not in ("done", "end"):
                    progress(event, done, total)
        first = _segment_locked(src, seg, "tif", [seg, seg_probs], seg_probs, None, net, info, wdigest, dev, amp,
                                inner, quiet_end, local_tile_pass)
        ropts = replace_options(opts.refine_options or RefineOptions(), method=opts.refine, fmt=fmt,
                                write_probs=opts.probs, overwrite=True, bands=opts.bands, stretch=opts.stretch)
        try:
            r = refine_locked(src, seg_probs, target, fmt, ropts, quiet_end)
        finally:
            if progress is not None:
                progress("end", 0, 0)
        if progress is not None:
            progress("done", 0, 0)
        shutil.rmtree(work, ignore_errors=True)
    result = replace_options(first, output=target, probs_output=ppath, seconds=time.perf_counter() - t_start,
                             peak_rss_mb=max(first.peak_rss_mb, r.peak_rss_mb),
                             notes=[n for n in first.notes if n != "already complete"] + [f"refined: {opts.refine}"])
    if opts.vector is not None:
        vectorize_segment_output(result, Path(opts.vector), fmt, overwrite=opts.overwrite or opts.resume)
    return result


def _segment_one(src: Path, target: Path, fmt: str, net, info, wdigest: str, dev, amp: bool, opts: SegmentOptions,
                 progress, tile_pass: Callable[["TilePass"], EngineStats] | None = None) -> SegmentResult:
    if opts.refine is not None:
        return _segment_refined(src, target, fmt, net, info, wdigest, dev, amp, opts, progress)
    ppath = W.probs_path(target, fmt) if opts.probs else None
    preview = target.with_name(target.stem + "_preview.png") if opts.preview else None
    vector = Path(opts.vector) if opts.vector is not None else None
    outputs = _outputs(target, fmt, opts)
    W.refuse_inputs_as_outputs(outputs, [src])
    W.check_target(target, True)  # the folder exists and is writable (existence is judged under the lock)
    with OutputLock(target):
        result = _segment_locked(src, target, fmt, outputs, ppath, preview, net, info, wdigest, dev, amp, opts,
                                 progress, tile_pass or local_tile_pass)
    if vector is not None:
        vectorize_segment_output(result, vector, fmt, overwrite=opts.overwrite or opts.resume)
    return result


def _segment_locked(src: Path, target: Path, fmt: str, outputs: list[Path], ppath: Path | None, preview: Path | None,
                    net, info, wdigest: str, dev, amp: bool, opts: SegmentOptions, progress,
                    tile_pass: Callable[["TilePass"], EngineStats]) -> SegmentResult:
    t_start = time.perf_counter()
    scratch_dir = scratch_path(target, opts.scratch)
    if scratch_dir.exists() and Scratch.moved(scratch_dir):  # a finished run died before cleaning up
        shutil.rmtree(scratch_dir, ignore_errors=True)
    elif scratch_dir.exists() and Scratch.incomplete(scratch_dir):  # died creating it: it holds nothing
        shutil.rmtree(scratch_dir, ignore_errors=True)
    if opts.resume and not scratch_dir.exists() and all(p.exists() for p in outputs):
        return _already_done(src, target, ppath, opts, t_start)
    replace = opts.overwrite or (opts.resume and scratch_dir.exists())  # a resumable store decides the outputs
    for p in outputs:
        if p.exists() and not replace:
            raise OutputError(f"output exists: {p} (pass --overwrite to replace it)")
    if scratch_dir.exists() and not opts.resume and not opts.overwrite:
        raise OutputError(f"an interrupted run left {scratch_dir}: pass --resume to finish it or --overwrite to start again")

    reader = open_reader(src, bands=opts.bands)
    inferer = None
    scratch = None
    grid = None
    try:
        _check_bands(reader, info)
        limit_arenas()
        if reader.height * reader.width > BOUND_HEAP_PIXELS and kind_of(net) in BOUND_HEAP_KINDS:
            bound_heap()  # RSS stays flat over thousands of tiles (see uhrcli.proc)
        scaler, note = choose_scaler(reader, opts.stretch, opts.scaling_record)
        if note and opts.on_note is not None:
            opts.on_note(note)
        preprocess = Preprocess(scaler, info.mean, info.std)
        inferer, grid = plan(net, reader.height, reader.width, dev, InferOptions(
            amp=amp, channels_last=opts.channels_last, border=opts.border,
            cache=cache_budget(opts, dev, scratch_dir / "features")), opts.tile, opts.halo)
        fingerprint = {
            "uhr": __version__, "input": file_identity(src), "bands": reader.bands, "model": info.name,
            "weights": wdigest, "classes": info.num_classes, "tile": grid.tile_h, "halo": grid.halo,
            "merge": opts.merge, "probs": bool(opts.probs), "scaler": scaler.describe(), "border": opts.border,
        }
        resumed = opts.resume and scratch_dir.exists()
        if resumed:
            scratch = Scratch.resume(scratch_dir, fingerprint)
        else:
            scratch = Scratch.create(scratch_dir, fingerprint, reader.height, reader.width, info.num_classes,
                                     (grid.tile_h, grid.tile_w), grid.shape, bool(opts.probs),
                                     masked=reader.meta.mask_kind != "none")
        total = reader.height * reader.width
        if progress:
            progress(f"input:{src}", 0, 0)
            progress("start", 0, total)
            progress(segment_plan(inferer, bool(opts.probs)), 0, total)
        spec = W.OutputSpec(
            height=reader.height, width=reader.width, class_names=info.class_names, palette=info.palette,
            crs=reader.meta.crs, transform=reader.meta.transform,
            tags={"model": info.name, "software": f"uhr {__version__}"},
        )
        tp = TilePass(reader, preprocess, inferer, grid, scratch, resumed, opts, progress,
                      lambda: _open_streams(spec, target, fmt, ppath, info.num_classes))
        try:
            stats = tile_pass(tp)
            streams = tp.streams
            stats.extra.update({"tile": grid.tile_h, "halo": grid.halo, "tiles": len(grid),
                                "inferer": inferer_report(inferer)})
            extra = []
            reads = scratch
            if progress:
                progress("phase:writing", 0, total)
                # streamed outputs were written with the tiles: only the preview (and closing) are left
                reads = ReportReads(scratch, progress, (preview is not None) + (0 if streams is not None else
                                                                                1 + (scratch.probs is not None)))
            if preview is not None:
                from .io.preview import write_preview

                tmp_preview = W.temp_path(preview)
                write_preview(tmp_preview, reader, lambda d: np.clip(scaler(d), 0, 255).astype(np.uint8),
                              lambda a, b, step: np.asarray(reads.classes[a:b:step, ::step]), info.palette)
                extra.append((tmp_preview, preview))
            _finalize(reads, spec, target, fmt, ppath, info.num_classes, extra, streams)
            tp.closed = True
            if isinstance(reads, ReportReads):
                reads.finish(total)
            scratch.mark_moved()
            if progress:
                progress("done", 0, 0)
        except InputError:
            scratch.remove()  # the input itself is broken: resuming cannot help
            raise
        finally:
            if tp.streams is not None and not tp.closed:  # stopped before the outputs were finished:
                tp.streams.abort()  # half-written files go
            if progress:
                progress("end", 0, 0)
        scratch.remove()
    except KeyboardInterrupt:
        done = int(scratch.done_tiles().sum()) if scratch is not None else 0
        of = f" of {len(grid)}" if grid is not None else ""
        keep = "; rerun with --resume" if scratch is not None and scratch_dir.exists() else ""
        raise KeyboardInterrupt(f"interrupted: {done}{of} tiles of {target.name} done{keep}") from None
    except OSError as exc:
        if isinstance(exc, W.ReadBackError) or exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise W.write_failed(target, exc) from None
        raise
    finally:
        if inferer is not None:
            inferer.close()
        reader.close()
    return SegmentResult(src, target, ppath, reader.height, reader.width, stats, time.perf_counter() - t_start,
                         peak_rss_mb(), resumed=resumed, scaling=scaler.describe())


@dataclass
class TilePass:
    """What the tile pass of one raster works with: the local pass runs it here, uhrcli.cluster on workers."""

    reader: RasterReader
    preprocess: Preprocess
    inferer: Any
    grid: Any
    scratch: Scratch
    resumed: bool
    opts: SegmentOptions
    progress: Callable[[str, int, int], Any] | None
    _open: Callable[[], MapStreams | None]
    streams: MapStreams | None = None
    closed: bool = False

    def open_streams(self) -> MapStreams | None:
        """The streamed outputs (GeoTIFF, COG), opened once the passes before the tiles are through."""
        self.streams = self._open()
        return self.streams

    @property
    def rows_out(self):
        return self.streams.rows if self.streams is not None else None

    def tile_phase(self) -> None:
        if self.progress:
            self.progress("phase:tiles", _done_pixels(self.grid, self.scratch), self.reader.height * self.reader.width)


def local_tile_pass(p: TilePass) -> EngineStats:
    """The inferer's passes before the tiles (once, on a fresh or a resumed store), then the tiles, in this
    process; finished row bands go to the streamed outputs as they are merged."""
    state = p.scratch.group.attrs.get("inferer_state") if p.resumed else None
    pending = int(len(p.grid) - p.scratch.done_tiles().sum())
    p.inferer.out_margin = merge_margin(p.grid, p.opts.merge)  # the passes' windows must cover the merger's
    if pending:
        new_state = p.inferer.prepare(p.reader, p.preprocess, p.grid, p.progress, state=state)
        if new_state is not None:
            p.scratch.group.attrs["inferer_state"] = new_state
    p.open_streams()
    p.tile_phase()
    progress = p.progress
    batch_size = resolve_batch_size(p.opts.batch_size, p.inferer, p.grid)
    stats = run_tiles(p.reader, p.grid, p.inferer, p.scratch, merge=p.opts.merge, batch_size=batch_size,
                      out=p.rows_out,
                      on_tile=(lambda t: progress("tile", int(t.core.width * t.core.height), 0)) if progress else None)
    stats.extra["batch_size"] = batch_size
    return stats


def resolve_batch_size(batch_size: int | str, inferer: Any, grid: Any) -> int:
    """--batch-size as a number: `auto` sized from the device's free memory and the tile's read window."""
    if batch_size != "auto":
        return int(batch_size)
    run = inferer.run
    read_px = (grid.tile_h + 2 * grid.halo) * (grid.tile_w + 2 * grid.halo)
    return auto_batch_size(inferer.model, read_px, run.device, run.amp)


def _done_pixels(grid, scratch: Scratch) -> int:
    """Pixels of the tiles an interrupted run finished (what --resume starts the tile pass from)."""
    done = scratch.done_tiles()
    return sum(int(t.core.width * t.core.height) for t in grid if done[t.row, t.col])


def _already_done(src: Path, target: Path, ppath: Path | None, opts: SegmentOptions, t_start: float) -> SegmentResult:
    """--resume on an output a finished run wrote: nothing to do."""
    with open_reader(src, bands=opts.bands, validate=False) as r:
        h, w = r.height, r.width
    return SegmentResult(src, target, ppath, h, w, EngineStats(), time.perf_counter() - t_start, peak_rss_mb(),
                         resumed=True, notes=["already complete"])


def _open_streams(spec: W.OutputSpec, target: Path, fmt: str, ppath: Path | None, k: int) -> MapStreams | None:
    """GeoTIFF and COG outputs are written while the tiles run (COG from a GeoTIFF stage); zarr and PNG after."""
    if fmt not in ("tif", "cog"):
        return None
    tmps = [W.temp_path(p) if p is not None else None for p in (target, ppath)]
    if fmt == "cog":
        tmps = [t.with_name(t.name + ".stage.tif") if t is not None else None for t in tmps]
    return MapStreams(spec, tmps[0], tmps[1], k)


def _finalize(scratch: Scratch, spec: W.OutputSpec, target: Path, fmt: str, ppath: Path | None, k: int,
              extra: list[tuple[Path, Path]] | None = None, streams: MapStreams | None = None) -> None:
    """Finish the outputs under temporary names (read back), then move them into place together.

    Streamed outputs (GeoTIFF, COG) are closed here; zarr and PNG are written now from the scratch store."""
    if streams is not None:
        tmps: list[tuple[Path, Path]] = list(extra or [])
        try:
            streams.close()
            for s, final in ((streams.classes, target), (streams.probs, ppath)):
                if s is None or final is None:
                    continue
                if fmt == "cog":
                    tmp = W.temp_path(final)
                    tmps.append((tmp, final))
                    W.to_cog(s.tmp, tmp, resampling="MODE" if s is streams.classes else "AVERAGE",
                             predictor=s is not streams.classes)
                    W.discard(s.tmp)
                else:
                    tmps.append((s.tmp, final))
            for tmp, final in tmps:
                W.commit(tmp, final)
        except BaseException:
            streams.abort()
            for tmp, _ in tmps:
                W.discard(tmp)
            raise
        return
    classes = lambda a, b: np.asarray(scratch.classes[a:b])  # noqa: E731
    probs = (lambda a, b: np.asarray(scratch.probs[:, a:b])) if scratch.probs is not None else None  # noqa: E731
    tmp_main = W.temp_path(target)
    tmps: list[tuple[Path, Path]] = list(extra or [])
    try:
        if fmt == "zarr":
            W.write_zarr(tmp_main, spec, classes, probs if ppath else None, k)
            tmps.append((tmp_main, target))
        elif fmt == "png":
            W.write_png(tmp_main, spec, classes(0, spec.height), palette=True)
            tmps.append((tmp_main, target))
            if ppath is not None and probs is not None:
                p = probs(0, spec.height)
                img = p[1] if k == 2 else (p[0] if k == 1 else p[: min(k, 3)])
                tmp_p = W.temp_path(ppath)
                W.write_png(tmp_p, spec, img, palette=False)
                tmps.append((tmp_p, ppath))
        else:
            raise ValueError(f"{fmt} outputs are streamed (see _open_streams)")
        for tmp, final in tmps:
            W.commit(tmp, final)
    except BaseException:
        for tmp, _ in tmps:
            W.discard(tmp)
        W.discard(tmp_main)
        for extra in target.parent.glob(f".{target.stem}*.uhr-tmp*"):
            W.discard(extra)
        raise
