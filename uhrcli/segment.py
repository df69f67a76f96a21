"""`uhrcli.segment(...)`: the Python API behind `uhr segment`."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import __version__
from .device import default_amp, resolve_device
from .engine import EngineStats, Preprocess, peak_rss_mb, run_tiles
from .errors import InputError, MissingInputError, OutputError, UsageError
from .io.readers import IMAGE_SUFFIXES, TIFF_SUFFIXES, RasterReader, open_reader
from .io.scaling import make_scaler
from .io import writers as W
from .featcache import CacheBudget
from .inference import InferOptions
from .inference.raster import inferer_report, plan
from .models import build_model, list_models
from .models.fuse import fold_batchnorm
from .scratch import Scratch, file_identity, scratch_path, weights_digest
from .tiling import BORDERS

RASTER_SUFFIXES = TIFF_SUFFIXES | IMAGE_SUFFIXES | {".jp2", ".vrt", ".img", ".zarr"}
DEFAULT_CACHE_RAM = 1 << 30


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

    @property
    def mpix_per_s(self) -> float:
        return self.height * self.width / 1e6 / self.seconds if self.seconds > 0 else 0.0


@dataclass
class SegmentOptions:
    tile: int | None = None  # None: default_tile(model kind, device)
    halo: int | None = None  # None: what the model needs for exact output
    merge: str = "crop"
    batch_size: int = 1
    fmt: str | None = None
    probs: bool = False
    bands: Sequence[int] | None = None
    stretch: str = "auto"
    overwrite: bool = False
    resume: bool = False
    amp: bool | None = None
    channels_last: bool = True
    fold_bn: bool = True  # fold BatchNorm into convs for inference (about 10% faster for ISDNet on CPU)
    preview: bool = False
    border: str = "clip"  # clip (exact: the network pads at the image border) or mirror
    cache_ram: int | None = None  # bytes of host RAM for features kept between passes (None: default)
    cache_disk: int | None = None  # bytes of disk for them (None: default)
    cache_device: int | None = None  # bytes of device memory (CUDA; None: a quarter of what is free)
    cache_dir: str | os.PathLike | None = None  # folder of the disk tier (None: beside the output)


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


def expand_inputs(inputs: Sequence[str | os.PathLike], recursive: bool = False) -> list[Path]:
    """Files and folders -> raster files; a folder contributes its raster files (sorted)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise MissingInputError(f"input not found: {p}")
        if p.is_dir() and p.suffix != ".zarr" and not (p / "zarr.json").exists():
            it = p.rglob("*") if recursive else p.iterdir()
            found = sorted(q for q in it if q.suffix.lower() in RASTER_SUFFIXES and not q.name.startswith("."))
            if not found:
                raise InputError(f"{p}: folder holds no raster files")
            out.extend(found)
        else:
            out.append(p)
    if not out:
        raise UsageError("no input given")
    return out


def plan_outputs(inputs: list[Path], output: Path, fmt: str | None, many: bool) -> list[tuple[Path, Path, str]]:
    """(input, target, format) per input. Several inputs write into the output directory."""
    if not many:
        f = W.infer_format(output, fmt)
        return [(inputs[0], output, f)]
    if output.exists() and not output.is_dir():
        raise OutputError(f"{output}: several inputs need an output directory, and this is a file")
    f = W.infer_format(Path("x.tif"), fmt)
    stems: dict[str, Path] = {}
    plans = []
    for p in inputs:
        stem = p.name[: -len(".ome.tif")] if p.name.endswith(".ome.tif") else p.stem
        if stem in stems:
            raise UsageError(f"two inputs would write the same output name {stem!r}: {stems[stem]} and {p}")
        stems[stem] = p
        plans.append((p, output / (stem + W.output_suffix(f)), f))
    return plans




def _check_bands(reader: RasterReader, info) -> None:
    if reader.count != info.in_channels:
        hint = " (choose them with --bands, e.g. --bands 1,2,3" + (" or 1,1,1 for a single band)" if reader.count == 1 else ")")
        raise InputError(f"{reader.path}: {reader.count} band(s) selected, model {info.name} expects {info.in_channels}{hint}")


def segment(inputs: str | os.PathLike | Sequence[str | os.PathLike], output: str | os.PathLike, *,
            model: str | None = None, weights: str | os.PathLike | None = None, device: str = "auto",
            options: SegmentOptions | None = None, progress: Callable[[str, int, int], Any] | None = None,
            **kw: Any) -> list[SegmentResult]:
    """Segment one raster (or several, or a folder) into a class map that keeps the georeferencing.

    progress(event, done, total) is called with ("start", 0, pixels), ("tile", pixels, 0) and ("end", 0, 0).
    Keyword options (tile=, halo=, merge=, ...) override `options`.
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
    if opts.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    single = isinstance(inputs, (str, os.PathLike))
    paths = expand_inputs([inputs] if single else list(inputs))
    many = len(paths) > 1 or (not single) and len(list(inputs)) > 1 or any(Path(p).is_dir() and Path(p).suffix != ".zarr" for p in ([inputs] if single else inputs))
    output = Path(output)
    plans = plan_outputs(paths, output, opts.fmt, many)
    if many:
        output.mkdir(parents=True, exist_ok=True)

    dev = resolve_device(device)
    amp = default_amp(dev) if opts.amp is None else opts.amp
    name = model if model is not None else (None if weights not in (None, "random") else default_model_name())
    if weights is None:
        raise UsageError("no weights: pass --weights FILE (a trained checkpoint) or --weights random for a dry run")
    net = build_model(name, weights)
    info = net.info
    if info.task != "segment":
        raise UsageError(f"model {info.name} is a {info.task} model; use `uhr {info.task}`")
    if opts.fold_bn:
        fold_batchnorm(net.eval())
    wdigest = weights_digest(weights)

    results = []
    for src, target, fmt in plans:
        results.append(_segment_one(src, target, fmt, net, info, wdigest, dev, amp, opts, progress))
    return results


def _segment_one(src: Path, target: Path, fmt: str, net, info, wdigest: str, dev, amp: bool, opts: SegmentOptions,
                 progress) -> SegmentResult:
    t_start = time.perf_counter()
    W.check_target(target, opts.overwrite or False)
    ppath = W.probs_path(target, fmt) if opts.probs else None
    extra_outputs = [ppath] if ppath is not None and ppath != target else []
    if opts.preview:
        extra_outputs.append(target.with_name(target.stem + "_preview.png"))
    for p in extra_outputs:
        if p.exists() and not opts.overwrite:
            raise OutputError(f"output exists: {p} (pass --overwrite to replace it)")
    scratch_dir = scratch_path(target)
    if scratch_dir.exists() and not opts.resume and not opts.overwrite:
        raise OutputError(f"an interrupted run left {scratch_dir}: pass --resume to finish it or --overwrite to start again")

    reader = open_reader(src, bands=opts.bands)
    inferer = None
    try:
        _check_bands(reader, info)
        scaler = make_scaler(reader, opts.stretch)
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
            progress("start", 0, total)
        ok = False
        try:
            state = scratch.group.attrs.get("inferer_state") if resumed else None
            pending = int(len(grid) - scratch.done_tiles().sum())
            if pending:
                new_state = inferer.prepare(reader, preprocess, grid, progress, state=state)
                if new_state is not None:
                    scratch.group.attrs["inferer_state"] = new_state
            if progress:
                progress("phase:tiles", 0, total)
            stats = run_tiles(reader, grid, inferer, preprocess, scratch, merge=opts.merge,
                              batch_size=opts.batch_size,
                              on_tile=(lambda t: progress("tile", int(t.core.width * t.core.height), 0)) if progress else None)
            stats.extra.update({"tile": grid.tile_h, "halo": grid.halo, "tiles": len(grid),
                                "inferer": inferer_report(inferer)})
            spec = W.OutputSpec(
                height=reader.height, width=reader.width, class_names=info.class_names, palette=info.palette,
                crs=reader.meta.crs, transform=reader.meta.transform,
                tags={"model": info.name, "software": f"uhr {__version__}"},
            )
            _finalize(scratch, spec, target, fmt, ppath, info.num_classes)
            if opts.preview:
                from .io.preview import write_preview

                preview_path = target.with_name(target.stem + "_preview.png")
                write_preview(preview_path, reader, lambda d: np.clip(scaler(d), 0, 255).astype(np.uint8),
                              lambda a, b, step: np.asarray(scratch.classes[a:b:step, ::step]), info.palette)
            ok = True
        except InputError:
            scratch.remove()  # the input itself is broken: resuming cannot help
            raise
        finally:
            if progress:
                progress("end", 0, 0)
        if ok:
            scratch.remove()
    finally:
        if inferer is not None:
            inferer.close()
        reader.close()
    return SegmentResult(src, target, ppath, reader.height, reader.width, stats, time.perf_counter() - t_start,
                         peak_rss_mb(), resumed=resumed)


def _finalize(scratch: Scratch, spec: W.OutputSpec, target: Path, fmt: str, ppath: Path | None, k: int) -> None:
    """Scratch -> final files under temporary names, then move them into place together."""
    classes = lambda a, b: np.asarray(scratch.classes[a:b])  # noqa: E731
    probs = (lambda a, b: np.asarray(scratch.probs[:, a:b])) if scratch.probs is not None else None  # noqa: E731
    tmp_main = W.temp_path(target)
    tmps: list[tuple[Path, Path]] = []
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
            gtiff_tmp = tmp_main if fmt == "tif" else tmp_main.with_name(tmp_main.name + ".stage.tif")
            W.write_geotiff(gtiff_tmp, spec, classes, 1, colormap=True, descriptions=["class"], nodata=spec.nodata)
            if fmt == "cog":
                W.to_cog(gtiff_tmp, tmp_main, resampling="MODE")
                W.discard(gtiff_tmp)
            tmps.append((tmp_main, target))
            if ppath is not None and probs is not None:
                tmp_p = W.temp_path(ppath)
                stage = tmp_p if fmt == "tif" else tmp_p.with_name(tmp_p.name + ".stage.tif")
                W.write_geotiff(stage, spec, probs, k, colormap=False,
                                descriptions=[f"p({n})" for n in spec.class_names], nodata=None)
                if fmt == "cog":
                    W.to_cog(stage, tmp_p, resampling="AVERAGE")
                    W.discard(stage)
                tmps.append((tmp_p, ppath))
        for tmp, final in tmps:
            W.commit(tmp, final)
    except BaseException:
        for tmp, _ in tmps:
            W.discard(tmp)
        W.discard(tmp_main)
        for extra in target.parent.glob(f".{target.stem}*.uhr-tmp*"):
            W.discard(extra)
        raise
