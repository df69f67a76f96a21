"""`uhrcli.refine.refine(...)`: the Python API behind `uhr refine` and `uhr segment --refine`.

Reads an image and the probabilities `uhr segment --probs` wrote for it (uint8, x/255, one band per class,
same grid), refines them tile by tile and streams a class map (and, if asked, the refined probabilities) to
GeoTIFF under a temporary name, moved into place when complete. Memory stays bounded by one row of tiles.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import __version__
from ..errors import InputError, OutputError, UsageError
from ..io import writers as W
from ..io.radiometry import choose_scaler
from ..io.readers import RasterReader, open_reader
from ..merge import encode, to_uint8_probs
from ..proc import peak_rss_mb
from ..tiling import TileGrid
from . import guided as G
from .crf import CrfParams, dense_crf

METHODS = ("guided", "crf")
DEFAULT_TILE = 512  # the guided filter ran at 0.55 MP/s on 512 px tiles, 0.25 on 1024 (cache-bound)


@dataclass
class RefineOptions:
    method: str = "guided"
    radius: int = G.DEFAULT_RADIUS  # guided filter: box radius (pixels)
    eps: float = G.DEFAULT_EPS  # guided filter: regularisation, on 0..1 values
    crf: CrfParams = field(default_factory=CrfParams)
    tile: int = DEFAULT_TILE
    halo: int | None = None  # None: the guided filter's exact reach, DenseCRF's default_halo()
    bands: list[int] | None = None  # image bands (1-based) for the guide: 1 or 3 of them
    stretch: str = "auto"  # how the image is scaled to 0..255 (uhrcli.io.radiometry)
    fmt: str | None = None  # tif or cog (None: tif)
    write_probs: bool = False  # also write the refined probabilities (<name>_probs.tif)
    overwrite: bool = False


@dataclass
class RefineResult:
    image: Path
    probs: Path
    output: Path
    probs_output: Path | None
    height: int
    width: int
    method: str
    tiles: int
    seconds: float
    peak_rss_mb: float
    notes: list[str] = field(default_factory=list)

    @property
    def mpix_per_s(self) -> float:
        return self.height * self.width / 1e6 / self.seconds if self.seconds > 0 else 0.0


def check_options(opts: RefineOptions) -> None:
    if opts.method not in METHODS:
        raise UsageError(f"--method must be {' or '.join(METHODS)}, got {opts.method!r}")
    if opts.radius < 1:
        raise UsageError(f"--radius must be >= 1, got {opts.radius}")
    if not opts.eps > 0:
        raise UsageError(f"--eps must be > 0, got {opts.eps}")
    if opts.tile < 16:
        raise UsageError(f"--tile must be at least 16, got {opts.tile}")
    if opts.halo is not None and opts.halo < 0:
        raise UsageError(f"--halo must be >= 0, got {opts.halo}")
    if opts.method == "crf":
        from .crf import _backend

        _backend()  # a missing extra fails before any reading


def output_format(output: Path, fmt: str | None) -> str:
    f = W.infer_format(output, fmt)
    if f not in ("tif", "cog"):
        raise UsageError(f"-o {output}: refined maps are written as GeoTIFF or COG (.tif), not {f}")
    return f


def refine(image: str | os.PathLike, probs: str | os.PathLike, output: str | os.PathLike, *,
           options: RefineOptions | None = None, progress: Callable[[str, int, int], Any] | None = None,
           **kw: Any) -> RefineResult:
    """Refine `probs` (as `uhr segment --probs` writes them) with `image` as the guide into a class map.

    Keyword options (method=, radius=, ...) override `options`. progress(event, done, total) hears
    ("phase:refining", 0, pixels), ("tile", pixels, 0) per tile and ("done", 0, 0)."""
    opts = options or RefineOptions()
    for k, v in kw.items():
        if not hasattr(opts, k):
            raise TypeError(f"unknown option {k!r}")
        setattr(opts, k, v)
    check_options(opts)
    image, probs, output = Path(image), Path(probs), Path(output)
    fmt = output_format(output, opts.fmt)
    W.check_target(output, opts.overwrite)
    from ..scratch import OutputLock

    with OutputLock(output):
        return refine_locked(image, probs, output, fmt, opts, progress)


def refine_locked(image: Path, probs: Path, output: Path, fmt: str, opts: RefineOptions,
                  progress: Callable[[str, int, int], Any] | None = None) -> RefineResult:
    """refine() once the options are checked and the output's lock is held (uhr segment --refine holds it)."""
    ppath = W.probs_path(output, fmt) if opts.write_probs else None
    outputs = [output] + ([ppath] if ppath is not None else [])
    W.refuse_inputs_as_outputs(outputs, [image, probs])
    for p in outputs:
        if p.exists() and not opts.overwrite:
            raise OutputError(f"output exists: {p} (pass --overwrite to replace it)")
    t0 = time.perf_counter()
    img = open_reader(image, bands=opts.bands)
    try:
        prb = open_reader(probs, expand_palette=False)
        try:
            names = _check_inputs(img, prb, opts)
            tiles = _run(img, prb, names, output, fmt, ppath, opts, progress)
        finally:
            prb.close()
    finally:
        img.close()
    return RefineResult(image, probs, output, ppath, img.height, img.width, opts.method, tiles,
                        time.perf_counter() - t0, peak_rss_mb())


def _check_inputs(img: RasterReader, prb: RasterReader, opts: RefineOptions) -> list[str]:
    """One clear line for inputs that do not belong together; the class names (from the probabilities' tags)."""
    if np.dtype(prb.dtype) != np.uint8:
        raise InputError(f"{prb.path}: {np.dtype(prb.dtype).name} bands; probabilities are uint8 (x/255, one band "
                         f"per class), as `uhr segment --probs` writes them")
    if (prb.height, prb.width) != (img.height, img.width):
        raise InputError(f"{prb.path} is {prb.width}x{prb.height} but {img.path} is {img.width}x{img.height}: "
                         f"the probabilities must be on the image's grid")
    crs_i, crs_p = img.meta.crs, prb.meta.crs
    if crs_i is not None and crs_p is not None and (crs_i != crs_p or img.meta.transform != prb.meta.transform):
        raise InputError(f"{prb.path} and {img.path} have the same size but different georeferencing")
    need = (3,) if opts.method == "crf" else (1, 3)
    if img.count not in need:
        want = "3 bands (RGB)" if opts.method == "crf" else "1 or 3 bands"
        raise InputError(f"{img.path}: {img.count} band(s) selected; the {opts.method} refiner's guide takes {want} "
                         f"(choose them with --bands, e.g. --bands 1,2,3)")
    if prb.count > W.NODATA:
        raise InputError(f"{prb.path}: {prb.count} bands; class maps hold at most {W.NODATA} classes")
    names = [f"class_{i}" for i in range(prb.count)]
    try:
        import rasterio

        with rasterio.open(prb.path) as ds:
            got = json.loads(ds.tags().get("class_names", "null"))
        if isinstance(got, list) and len(got) == prb.count:
            names = [str(n) for n in got]
    except Exception:  # noqa: BLE001 - names are a nicety: a file without them keeps the defaults
        pass
    return names


def _refine_tile(guide: np.ndarray, p: np.ndarray, opts: RefineOptions) -> np.ndarray:
    """Refined probabilities (K, h, w) in 0..1 over the read window."""
    if opts.method == "guided":
        q = np.clip(G.guided_filter(guide, p, opts.radius, opts.eps), 0.0, 1.0)
    else:
        q = dense_crf(guide, p.astype(np.float32) / 255.0, opts.crf)
    if q.shape[0] > 1:  # the filter is linear: sums stay near one; clipping and rounding move them a little
        s = q.sum(0, keepdims=True)
        q = np.where(s > 0, q / np.maximum(s, 1e-12), q)
    return q


def _run(img: RasterReader, prb: RasterReader, names: list[str], output: Path, fmt: str, ppath: Path | None,
         opts: RefineOptions, progress) -> int:
    from ..models import default_palette
    from ..segment import _finalize, _open_streams

    scaler, _ = choose_scaler(img, opts.stretch, None)
    halo = opts.halo if opts.halo is not None else (G.reach(opts.radius) if opts.method == "guided"
                                                    else opts.crf.default_halo())
    grid = TileGrid(img.height, img.width, opts.tile, halo=halo)
    k = prb.count
    spec = W.OutputSpec(height=img.height, width=img.width, class_names=tuple(names), palette=default_palette(k),
                        crs=img.meta.crs or prb.meta.crs, transform=img.meta.transform or prb.meta.transform,
                        tags={"refine": opts.method, "software": f"uhr {__version__}"})
    total = img.height * img.width
    if progress:
        progress("phase:refining", 0, total)
    streams = _open_streams(spec, output, fmt, ppath, k)
    try:
        for r, a in enumerate(grid.rows):
            h = a.core_stop - a.core_start
            classes = np.empty((h, img.width), np.uint8)
            band_p = np.empty((k, h, img.width), np.uint8) if ppath is not None else None
            for c in range(len(grid.cols)):
                t = grid.tile(r, c)
                raw = img.read(t.read)
                guide = np.rint(np.clip(scaler(raw), 0, 255)).astype(np.uint8)
                p = prb.read(t.read)
                valid = img.read_mask(t.read)
                q = _refine_tile(guide, p, opts)
                sr, sc = t.core_in_tile
                q = q[:, sr, sc]
                # all-zero probabilities: nodata in the segmentation (a single band of 0 is a sure background)
                ok = p[:, sr, sc].any(0) if k > 1 else np.ones(q.shape[1:], bool)
                if valid is not None:
                    ok &= valid[sr, sc]
                cols = slice(int(t.core.col_off), int(t.core.col_off + t.core.width))
                classes[:, cols] = encode(q, ok)
                if band_p is not None:
                    qq = to_uint8_probs(q)
                    qq[:, ~ok] = 0
                    band_p[:, :, cols] = qq
                if progress:
                    progress("tile", int(t.core.width * t.core.height), 0)
            streams.rows(a.core_start, a.core_stop, classes, band_p)
        _finalize(None, spec, output, fmt, ppath, k, None, streams)  # type: ignore[arg-type]
        streams = None
    finally:
        if streams is not None:
            streams.abort()
    if progress:
        progress("done", 0, 0)
    return len(grid)
