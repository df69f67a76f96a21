"""`run_saliency(...)`: the Python API behind `uhr saliency` (PGNet-style inference).

Inference follows the official PGNet test script: RGB float -> normalise with
the model's mean/std -> bilinear resize (half-pixel centres, no antialias) to
SxS -> network -> its 1/4-resolution logits resized once, straight to HxW, the
same way -> sigmoid -> x255 -> round. Photos are processed in memory; rasters above `stream_pixels` go
through uhrcli.io.resample (windowed reads in, row strips out) and are written
as tiled, deflate-compressed TIFFs, so their size is bounded by disk, not RAM.

Outputs are written under temporary names beside their targets and renamed
when complete; a failing image leaves nothing behind and does not stop the
others.
"""
from __future__ import annotations

import importlib
import os
import time
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from rasterio.windows import Window

from .device import autocast, default_amp, resolve_device
from .proc import bound_heap, peak_rss_mb
from .errors import InputError, OutputError, UhrError, UsageError, first_line
from .io import writers as W
from .io.inputs import expand_inputs
from .io.readers import RasterMeta, gdal_env, open_reader, quiet_libtiff
from .io.resample import resample_reader, upsample_strips
from .io.scaling import make_scaler
from .models.fuse import fold_batchnorm

OUTPUT_KINDS = ("map", "mask", "rgba", "overlay")
INPUT_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"}
DEFAULT_STREAM_PIXELS = 100_000_000
OVERLAY_TINT = np.array([16.0, 24.0, 64.0], np.float32)  # dark blue wash outside the object
OVERLAY_KEEP = 0.35  # fraction of the image kept in the background
# zlib level of map and mask PNGs: on a 4K map with photo-like texture level 6 took 470 ms and level 1 120 ms
# (file 23% larger); smooth maps, the usual case, take 20-30 ms at any level
MAP_PNG_LEVEL = 1
LOADERS = min(2, os.cpu_count() or 1)  # images decoded and resized at once
WRITERS = 2  # images encoded at once (and the most results waiting to be written)

ProgressFn = Callable[[str, int, int], Any]


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
@dataclass
class ImageResult:
    """One image that was written."""

    input: Path
    outputs: list[Path]
    height: int
    width: int
    seconds: float
    streamed: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass
class SaliencyReport:
    """What a run did; `ok` is False when any image failed."""

    results: list[ImageResult] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    model: str = ""
    size: int = 0
    device: str = ""

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def images_per_s(self) -> float:
        return len(self.results) / self.seconds if self.seconds > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# planning: inputs, output names
# ---------------------------------------------------------------------------------------------
@dataclass
class Job:
    """An input image and where its outputs go (without suffix: <outdir>/<rel>/<stem>)."""

    src: Path
    base: Path
    huge: bool = False
    targets: dict[str, Path] = field(default_factory=dict)


def parse_outputs(outputs: str | Iterable[str]) -> tuple[str, ...]:
    """'map,mask' or ['map', 'rgba'] -> validated, ordered, de-duplicated kinds."""
    items = [outputs] if isinstance(outputs, str) else list(outputs)
    kinds: list[str] = []
    for item in items:
        for k in str(item).split(","):
            k = k.strip().lower()
            if not k:
                continue
            if k not in OUTPUT_KINDS:
                raise UsageError(f"--output must be one of {', '.join(OUTPUT_KINDS)}, got {k!r}")
            if k not in kinds:
                kinds.append(k)
    if not kinds:
        raise UsageError(f"no output requested: pass --output {'|'.join(OUTPUT_KINDS)}")
    return tuple(k for k in OUTPUT_KINDS if k in kinds)


def _output_paths(base: Path, kinds: Sequence[str], huge: bool) -> dict[str, Path]:
    names = {
        "map": base.name + (".tif" if huge else ".png"),
        "mask": base.name + ("_mask.tif" if huge else "_mask.png"),
        "rgba": base.name + "_rgba.png",
        "overlay": base.name + "_overlay.jpg",
    }
    return {k: base.with_name(names[k]) for k in kinds if not (huge and k in ("rgba", "overlay"))}


def _pixel_count(path: Path) -> int:
    """Pixels of an image without decoding it (0 when unknown: the real open reports why)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if head[:2] not in (b"II", b"MM") and path.suffix.lower() not in (".tif", ".tiff"):
            from PIL import Image

            with Image.open(path) as im:
                return int(im.size[0]) * int(im.size[1])
        r = open_reader(path, validate=False)
        try:
            return r.height * r.width
        finally:
            r.close()
    except Exception:  # noqa: BLE001 - a bad file is reported when it is processed
        return 0


def plan_jobs(inputs: Sequence[str | os.PathLike], outdir: Path, kinds: Sequence[str], recursive: bool,
              pattern: str | None, stream_pixels: int) -> list[Job]:
    """Resolve every input to its output targets; refuse two inputs that would share a name."""
    jobs: list[Job] = []
    seen: dict[Path, Path] = {}
    for src, rel in expand_inputs(inputs, INPUT_SUFFIXES, recursive=recursive, pattern=pattern, exclude=outdir):
        key = Path(str(rel).lower())
        if key in seen:
            raise UsageError(f"two inputs would write the same outputs {rel}: {seen[key]} and {src} "
                             f"(rename one, or run them into different output folders)")
        seen[key] = src
        huge = _pixel_count(src) > stream_pixels
        base = outdir / rel
        jobs.append(Job(src, base, huge, _output_paths(base, kinds, huge)))
    return jobs


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------
def _ensure_registered(name: str) -> None:
    """Import uhrcli.models.<name> if the package did not register it (a model in a newer file)."""
    from .models import list_models

    if name in list_models():
        return
    try:
        importlib.import_module(f"uhrcli.models.{name.replace('-', '_')}")
    except ModuleNotFoundError:
        pass


def load_saliency_model(model: str, weights: str | os.PathLike | None, model_kwargs: dict[str, Any] | None = None,
                        ) -> torch.nn.Module:
    """Build a one-channel saliency network; weights are required ('random' for dry runs)."""
    from .models import build_model

    if weights is None:
        raise UsageError("no weights: pass --weights FILE (a trained checkpoint) or --weights random for a dry run")
    _ensure_registered(model)
    kw = dict(model_kwargs or {})
    if str(weights) == "random" and "task" not in kw:
        # models with a segment and a saliency variant (fcn-tiny) take task=; others do not
        try:
            net = build_model(model, weights, task="saliency", **kw)
        except TypeError:
            net = build_model(model, weights, **kw)
    else:
        net = build_model(model, weights, **kw)
    info = net.info
    if info.task != "saliency":
        raise UsageError(f"model {info.name} is a {info.task} model; use `uhr {info.task}`")
    if info.num_classes != 1:
        raise UsageError(f"model {info.name} has {info.num_classes} output channels; saliency needs 1")
    return net


# ---------------------------------------------------------------------------------------------
# per-image work
# ---------------------------------------------------------------------------------------------
@dataclass
class Prepared:
    """An image resized to SxS for the network, plus what writing its outputs needs."""

    job: Job
    x: torch.Tensor  # (3, S, S) normalised
    height: int
    width: int
    t0: float
    image: np.ndarray | None = None  # (3, H, W) float32 0..255, kept only for rgba/overlay
    meta: RasterMeta | None = None  # georeferencing, copied to streamed TIFF outputs
    notes: list[str] = field(default_factory=list)


def _to_rgb(data: np.ndarray) -> np.ndarray:
    """1 band -> replicated to 3; more than 3 -> the first 3."""
    if data.shape[0] == 1:
        return np.repeat(data, 3, axis=0)
    if data.shape[0] == 2:
        return np.concatenate([data, data[:1]], axis=0)
    return data[:3]


def _prepare(job: Job, size: int, mean: torch.Tensor, std: torch.Tensor, kinds: Sequence[str],
             stream_pixels: int, strip_rows: int | None) -> Prepared:
    t0 = time.perf_counter()
    # opened and closed on the same (loader) thread: rasterio's GDAL environment is thread-local
    reader = open_reader(job.src)
    try:
        scaler = make_scaler(reader, "auto")
        notes: list[str] = []
        if reader.count > 3:
            notes.append(f"{reader.count} bands: the first 3 are used as RGB")
        huge = reader.height * reader.width > stream_pixels
        if huge != job.huge:  # the header probe could not tell; plan again with the real size
            job.huge = huge
            job.targets = _output_paths(job.base, kinds, huge)
        h, w = reader.height, reader.width
        if huge:
            m = mean.numpy()[:, None, None]
            s = std.numpy()[:, None, None]
            xs = resample_reader(reader, size, size, lambda raw: (_to_rgb(scaler(raw)) - m) / s, strip_rows=strip_rows)
            dropped = [k for k in kinds if k in ("rgba", "overlay")]
            if dropped:
                notes.append(f"{'/'.join(dropped)} not written: the image is too large for a whole-image output ({w}x{h})")
            return Prepared(job, torch.from_numpy(xs), h, w, t0, meta=reader.meta, notes=notes)
        try:
            raw = reader.read(Window(0, 0, w, h))
        except UhrError:
            raise
        except Exception as exc:  # noqa: BLE001 - decoder failures mean a bad file
            raise InputError(f"{job.src}: cannot decode pixel data ({_one_line(exc)})") from None
    finally:
        reader.close()
    if h * w > 2 * size * size and not any(k in ("rgba", "overlay") for k in job.targets):  # only the SxS view
        return Prepared(job, resized_input(raw, size, mean, std, lambda a: _to_rgb(scaler(a))), h, w, t0,
                        notes=notes)
    img = _to_rgb(scaler(raw))  # (3, H, W) float32 0..255, kept for the cut-out and overlay
    del raw
    return Prepared(job, network_input(img, size, mean, std), h, w, t0, image=img, notes=notes)


def network_input(img: np.ndarray, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(3, H, W) float 0..255 -> (3, S, S) normalised, as the official test script (cv2 INTER_LINEAR).

    Resize, then normalise: the same numbers as the reverse order (bilinear weights sum to 1, the
    normalisation is per-channel affine) without a second full-resolution float copy.
    """
    x = F.interpolate(torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None], size=(size, size),
                      mode="bilinear", align_corners=False)[0]
    return (x - mean[:, None, None]) / std[:, None, None]


def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (i0, i1) and the weight of i1 along one axis, as PyTorch's bilinear resize takes them
    (align_corners=False, no antialiasing)."""
    src = np.maximum((np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * np.float32(n_in / n_out)
                     - np.float32(0.5), np.float32(0))
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    return i0, np.minimum(i0 + 1, n_in - 1), (src - i0).astype(np.float32)


def resized_input(raw: np.ndarray, size: int, mean: torch.Tensor, std: torch.Tensor,
                  to_float: Callable[[np.ndarray], np.ndarray]) -> torch.Tensor:
    """network_input(to_float(raw)) without converting the whole image: a bilinear SxS view reads just the
    4 source pixels of each output pixel, so those are gathered raw and scaled (per pixel, so the order does
    not matter). A 4K photo's 100 MB float copy and most of the arithmetic go; values agree to float rounding."""
    r0, r1, wy = _taps(raw.shape[-2], size)
    c0, c1, wx = _taps(raw.shape[-1], size)
    top, bottom = np.take(raw, r0, axis=1), np.take(raw, r1, axis=1)  # np.take: 3x faster than fancy indexing
    wx, wy = wx[None, None, :], wy[None, :, None]
    t = to_float(np.take(top, c0, axis=2)) * (1 - wx) + to_float(np.take(top, c1, axis=2)) * wx
    b = to_float(np.take(bottom, c0, axis=2)) * (1 - wx) + to_float(np.take(bottom, c1, axis=2)) * wx
    x = torch.from_numpy(np.ascontiguousarray(t * (1 - wy) + b * wy, dtype=np.float32))
    return (x - mean[:, None, None]) / std[:, None, None]


def network_logits(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits (B, 1, h, w) before their final upsampling, where the model says where that is
    (forward_logits: PGNet's 1/4 map), else its output: upsampled once to the image size afterwards."""
    fn = getattr(net, "forward_logits", None)
    y = fn(x) if fn is not None else net(x)
    return y[0] if isinstance(y, (tuple, list)) else y


def probability(logits: torch.Tensor, height: int, width: int) -> np.ndarray:
    """(1, h, w) logits -> (H, W) float32 saliency: one bilinear resize to the image size, then the sigmoid
    (in place: a 4K map is 33 MB a copy)."""
    up = F.interpolate(logits[None].float(), size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    return up.sigmoid_().numpy()


@torch.inference_mode()
def predict_saliency(net: torch.nn.Module, image: np.ndarray, size: int, device: torch.device | str = "cpu",
                     amp: bool = False) -> np.ndarray:
    """(H, W) saliency of one (3, H, W) 0..255 image, computed as `uhr saliency` computes it."""
    info = net.info
    mean = torch.tensor(info.mean, dtype=torch.float32)
    std = torch.tensor(info.std, dtype=torch.float32)
    dev = torch.device(device)
    x = network_input(_to_rgb(image.astype(np.float32, copy=False)), size, mean, std)[None].to(dev)
    with autocast(dev, amp):
        y = network_logits(net, x)
    return probability(y[0].float().cpu(), image.shape[-2], image.shape[-1])


def device_maps(logits: torch.Tensor, height: int, width: int, kinds: Iterable[str], threshold: float,
                bit_depth: int) -> dict[str, np.ndarray]:
    """The upsampling, sigmoid and quantisation on the device (CUDA): only the finished uint8/uint16 maps cross
    back (an 8K map is 33 MB as uint8, 133 MB as float32), and the writer threads only encode. `prob` (float32)
    comes back only for the outputs that blend with the photo (rgba, overlay)."""
    up = F.interpolate(logits[None].float(), size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    up.sigmoid_()
    kinds = set(kinds)
    out: dict[str, np.ndarray] = {}
    if "map" in kinds or kinds & {"rgba", "overlay"}:
        top, dtype = (65535.0, torch.int32) if bit_depth == 16 else (255.0, torch.uint8)
        q = (up * top).round_().to(dtype).cpu().numpy()
        out["map"] = q.astype(np.uint16) if bit_depth == 16 else q
        if bit_depth == 16 and kinds & {"rgba", "overlay"}:
            out["map8"] = (up * 255.0).round_().to(torch.uint8).cpu().numpy()
    if "mask" in kinds:
        out["mask"] = ((up >= threshold).to(torch.uint8) * 255).cpu().numpy()
    if kinds & {"rgba", "overlay"}:
        out["prob"] = up.cpu().numpy()
    return out


def _quantise(prob: np.ndarray, bit_depth: int) -> np.ndarray:
    """round(p x 255) (or 65535); torch rounds half to even as np.rint does, with one temporary, not two."""
    top, dtype = (65535.0, torch.int32) if bit_depth == 16 else (255.0, torch.uint8)
    q = torch.from_numpy(prob).mul(top).round_().to(dtype).numpy()
    return q.astype(np.uint16) if bit_depth == 16 else q


def _save_pil(arr: np.ndarray, tmp: Path, fmt: str, **kw: Any) -> None:
    from PIL import Image

    Image.fromarray(arr).save(tmp, format=fmt, **kw)  # uint16 -> mode I;16: a 16-bit PNG


def _write_small(p: Prepared, logits: torch.Tensor | dict[str, np.ndarray], threshold: float, bit_depth: int,
                 targets: dict[str, Path]) -> list[tuple[Path, Path]]:
    """Whole-image outputs (PNG/JPEG) into temporary files; returns (tmp, target) pairs. `logits`: the network's
    (1, h, w) on the CPU, or the maps `device_maps` finished on the device."""
    ready = logits if isinstance(logits, dict) else {}
    prob = ready.get("prob") if ready else probability(logits, p.height, p.width)  # type: ignore[arg-type]
    done: list[tuple[Path, Path]] = []
    map8 = ready.get("map8", ready.get("map") if bit_depth == 8 else None)
    for kind, target in targets.items():
        tmp = W.temp_path(target)
        done.append((tmp, target))
        if kind == "map":
            q = ready["map"] if "map" in ready else _quantise(prob, bit_depth)
            _save_pil(q, tmp, "PNG", compress_level=MAP_PNG_LEVEL)
        elif kind == "mask":
            m = ready["mask"] if "mask" in ready else np.where(prob >= threshold, 255, 0).astype(np.uint8)
            _save_pil(m, tmp, "PNG", compress_level=MAP_PNG_LEVEL)
        else:
            if map8 is None:
                map8 = _quantise(prob, 8)
            assert p.image is not None
            rgb = np.moveaxis(p.image, 0, -1)
            if kind == "rgba":
                out = np.concatenate([np.rint(rgb).astype(np.uint8), map8[..., None]], axis=-1)
                # photo content: zlib level 3 writes a 4K cut-out ~3x faster than PIL's 6, ~15% larger
                _save_pil(out, tmp, "PNG", compress_level=3)
            else:
                a = prob[..., None].astype(np.float32)
                bg = rgb * OVERLAY_KEEP + OVERLAY_TINT * (1.0 - OVERLAY_KEEP)
                out = np.clip(np.rint(a * rgb + (1.0 - a) * bg), 0, 255).astype(np.uint8)
                _save_pil(out, tmp, "JPEG", quality=90)
    return done


def _write_huge(p: Prepared, logits: torch.Tensor, threshold: float, bit_depth: int,
                targets: dict[str, Path]) -> list[tuple[Path, Path]]:
    """Map/mask of a raster too large for memory: upsampled and written strip by strip as tiled TIFF."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    small = logits[0].float().numpy()
    meta = p.meta
    done: list[tuple[Path, Path]] = []
    dsts = {}
    with warnings.catch_warnings(), quiet_libtiff():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with gdal_env(GDAL_CACHEMAX=64):
            try:
                for kind, target in targets.items():
                    tmp = W.temp_path(target)
                    done.append((tmp, target))
                    dtype = "uint16" if (kind == "map" and bit_depth == 16) else "uint8"
                    prof = W.geotiff_profile(p.height, p.width, 1, dtype, meta.crs if meta else None,
                                             meta.transform if meta else None,
                                             predictor=2 if kind == "map" else None)
                    dsts[kind] = rasterio.open(tmp, "w", **prof)
                last: dict[str, tuple[int, int, np.ndarray]] = {}
                for r0, r1, rows in upsample_strips(small, p.height, p.width, W.STRIP):
                    prob = 1.0 / (1.0 + np.exp(-rows))
                    for kind, dst in dsts.items():
                        block = _quantise(prob, bit_depth) if kind == "map" else \
                            np.where(prob >= threshold, 255, 0).astype(np.uint8)
                        dst.write(block[None], window=((r0, r1), (0, p.width)))
                        last[kind] = (r0, r1, block)
                for kind, dst in dsts.items():
                    dst.update_tags(software="uhr saliency", content="saliency map x/255" if kind == "map" else "binary mask")
            finally:
                for dst in dsts.values():
                    dst.close()
        for kind, (tmp, _) in zip(dsts, done):
            W.verify_raster(tmp, p.height, p.width, 1, last.get(kind))
    return done


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------
def _check_existing(jobs: list[Job], overwrite: bool, skip_existing: bool) -> None:
    """Refuse the whole run before any work if it would replace outputs the user did not ask to replace."""
    if overwrite or skip_existing:
        return
    existing = [t for j in jobs for t in j.targets.values() if t.exists()]
    if existing:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise OutputError(f"output exists: {existing[0]}{more} (pass --skip-existing to resume, "
                          f"or --overwrite to replace them)")


def run_saliency(inputs: str | os.PathLike | Sequence[str | os.PathLike], outdir: str | os.PathLike, *,
                 model: str = "pgnet", weights: str | os.PathLike | None = None, size: int | None = None,
                 outputs: str | Iterable[str] = ("map",), threshold: float = 0.5, bit_depth: int = 8,
                 device: str = "auto", amp: bool | None = None, batch_size: int = 1, recursive: bool = False,
                 pattern: str | None = None, skip_existing: bool = False, overwrite: bool = False,
                 progress: ProgressFn | None = None, model_kwargs: dict[str, Any] | None = None,
                 stream_pixels: int = DEFAULT_STREAM_PIXELS, strip_rows: int | None = None,
                 on_error: Callable[[Path, str], Any] | None = None, net: torch.nn.Module | None = None,
                 compile: bool = False, client: Any = None) -> SaliencyReport:
    """Saliency maps (and masks, cut-outs, previews) for images, folders or gigapixel rasters.

    size: the SxS resolution the network sees (default: the model's
    `default_size`, else 1024); a multiple of 32. Images with more than
    `stream_pixels` pixels are streamed (map/mask as tiled TIFF). Existing
    outputs stop the run before any work unless skip_existing (an image is
    skipped only when all its outputs exist; missing ones are written) or
    overwrite. progress(event, done, total) gets ("start", 0, n_images),
    ("image", 1, 0) per image finished or failed and ("end", 0, 0);
    on_error(path, message) is called for each failed image. `net` passes an
    already built model (then model/weights are ignored). compile: torch.compile
    the network (uhrcli.inference.compile; tens of seconds to start). client: a
    `distributed.Client`: the images run as tasks on its Dask cluster, a few
    per task, the model built once per worker (uhrcli.cluster.saliency).
    """
    t_run = time.perf_counter()
    kinds = parse_outputs(outputs)
    if bit_depth not in (8, 16):
        raise UsageError(f"--bit-depth must be 8 or 16, got {bit_depth}")
    if not 0.0 < float(threshold) < 1.0:
        raise UsageError(f"--threshold must be between 0 and 1 (exclusive), got {threshold}")
    if batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    if overwrite and skip_existing:
        raise UsageError("--overwrite and --skip-existing contradict each other: pick one")
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise OutputError(f"{outdir}: the output must be a folder, and this is a file")

    if client is not None and net is not None:
        raise UsageError("a cluster run builds the model on each worker: pass model= and weights=, not net=")
    own_net = net is None  # a network we built may be folded for inference; a caller's is left as given
    if net is None:
        net = load_saliency_model(model, weights, model_kwargs)
    info = net.info
    if size is None:
        size = int(info.extra.get("default_size", 1024))
    if size < 32 or size % 32:
        raise UsageError(f"--size must be a positive multiple of 32, got {size}")

    single = isinstance(inputs, (str, os.PathLike))
    jobs = plan_jobs([inputs] if single else list(inputs), outdir, kinds, recursive, pattern, stream_pixels)
    W.refuse_inputs_as_outputs([t for j in jobs for t in j.targets.values()], [j.src for j in jobs])
    _check_existing(jobs, overwrite, skip_existing)

    dev = resolve_device(device) if client is None else torch.device("cpu")
    use_amp = default_amp(dev) if amp is None else bool(amp)
    if client is None:
        net = net.to(dev).eval()
        if own_net:
            fold_batchnorm(net)
        if compile:
            from .inference.compile import compile_model

            compile_model(net)
    report = SaliencyReport(model=info.name, size=size, device=str(dev) if client is None else "cluster")

    def fail(job: Job, msg: str) -> None:
        msg = msg if str(job.src) in msg else f"{job.src}: {msg}"
        report.failed.append((job.src, msg))
        if on_error:
            on_error(job.src, msg)
        if progress:
            progress("image", 1, 0)

    todo: list[Job] = []
    refused: list[Job] = []
    for j in jobs:
        if not j.targets:  # a huge image and only rgba/overlay asked for
            refused.append(j)
            continue
        if skip_existing:
            missing = {k: t for k, t in j.targets.items() if not t.exists()}
            if not missing:
                report.skipped.append(j.src)
                continue
            j.targets = missing  # resume: write only what is missing
        todo.append(j)
    if progress:
        progress("start", 0, len(todo) + len(refused))
    for j in refused:
        fail(j, "too large for rgba/overlay outputs (they need the image whole); ask for --output map or mask")

    try:
        if client is not None:
            from .cluster.saliency import saliency_on_cluster

            saliency_on_cluster(client, todo, report, fail, progress, model=model, weights=weights,
                                model_kwargs=model_kwargs, device=device, amp=amp, size=size, kinds=kinds,
                                threshold=threshold, bit_depth=bit_depth, batch_size=batch_size,
                                stream_pixels=stream_pixels, strip_rows=strip_rows)
        else:
            process_jobs(todo, net, dev, use_amp, size, kinds, threshold, bit_depth, batch_size, stream_pixels,
                         strip_rows, report, fail, progress)
    finally:
        report.seconds = time.perf_counter() - t_run
        report.peak_rss_mb = peak_rss_mb()
        if progress:
            progress("end", 0, 0)
    return report


def process_jobs(todo: list[Job], net: torch.nn.Module, dev: torch.device, use_amp: bool, size: int,
                 kinds: Sequence[str], threshold: float, bit_depth: int, batch_size: int, stream_pixels: int,
                 strip_rows: int | None, report: SaliencyReport, fail: Callable[[Job, str], None],
                 progress: ProgressFn | None) -> None:
    """The images of `todo` through `net` (on `dev`, in eval mode) into their outputs; results and notes go into
    `report`, failures to fail(job, message). A cluster's workers run this on their share of the images."""
    info = net.info
    mean = torch.tensor(info.mean, dtype=torch.float32)
    std = torch.tensor(info.std, dtype=torch.float32)

    def load(job: Job) -> Prepared:
        return _prepare(job, size, mean, std, kinds, stream_pixels, strip_rows)

    # two loaders and two writers each allocate and free 25-33 MB arrays per photo; in glibc's arenas these
    # fragmented to 1.33 GB of RSS over 24 4K photos, served from their own mappings 0.66 GB (5.1 photos/s
    # against 6.5 with the zero-cost model)
    bound_heap()
    writes: deque[tuple[Prepared, Future]] = deque()  # outputs being encoded, collected in input order
    try:
        with ThreadPoolExecutor(max_workers=WRITERS, thread_name_prefix="uhr-write") as wpool:
            for batch in _batches(_prefetch(load, todo, workers=LOADERS), batch_size, fail):
                x = torch.stack([p.x for p in batch]).to(dev)
                with torch.inference_mode(), autocast(dev, use_amp):
                    y = network_logits(net, x)
                if y.ndim != 4 or y.shape[1] != 1:
                    raise UsageError(f"model {info.name} returned {tuple(y.shape)}, expected (B, 1, h, w)")
                on_device = dev.type == "cuda"
                y = y.float() if on_device else y.float().cpu()
                for i, p in enumerate(batch):
                    res = device_maps(y[i], p.height, p.width, p.job.targets, threshold, bit_depth) \
                        if on_device and not p.job.huge else y[i].cpu()
                    writes.append((p, wpool.submit(_write_outputs, p, res, threshold, bit_depth)))
                    while len(writes) > WRITERS:  # bounded: RAM stays flat however long the folder
                        _record(*writes.popleft(), report, fail, progress)
            while writes:
                _record(*writes.popleft(), report, fail, progress)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"interrupted: {len(report.results)} of {len(todo)} images done (each written whole); "
                                f"rerun with --skip-existing to finish") from None


def _write_outputs(p: Prepared, logits: torch.Tensor | dict[str, np.ndarray], threshold: float, bit_depth: int
                   ) -> None:
    """Encode one image's outputs under temporary names and move them into place (on a writer thread)."""
    targets = dict(p.job.targets)
    pairs: list[tuple[Path, Path]] = []
    try:
        if not targets:
            raise UsageError("none of the requested outputs can be written for an image this large "
                             "(rgba/overlay need it whole): ask for --output map or mask")
        for t in targets.values():
            t.parent.mkdir(parents=True, exist_ok=True)
        writer = _write_huge if p.job.huge else _write_small
        pairs = writer(p, logits, threshold, bit_depth, targets)
        for tmp, target in pairs:
            W.commit(tmp, target)
    except BaseException:
        for tmp, _ in pairs:
            W.discard(tmp)
        for t in targets.values():
            W.discard(W.temp_path(t))
        raise


def _record(p: Prepared, written: Future, report: SaliencyReport, fail: Callable[[Job, str], None],
            progress: ProgressFn | None) -> None:
    """One image's result or failure, in input order, on the calling thread."""
    job = p.job
    try:
        written.result()
    except Exception as exc:  # noqa: BLE001 - one image failing must not stop the others
        fail(job, _one_line(exc))
        return
    report.results.append(ImageResult(job.src, list(job.targets.values()), p.height, p.width,
                                      time.perf_counter() - p.t0, streamed=job.huge, notes=p.notes))
    report.notes.extend(f"{job.src}: {n}" for n in p.notes)
    if progress:
        progress("image", 1, 0)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno == 28:
        return "disk full"
    line = first_line(exc, 10_000)
    return line if isinstance(exc, UhrError) else f"{type(exc).__name__}: {line}"


def _prefetch(load: Callable[[Job], Prepared], jobs: list[Job], workers: int = 1,
              depth: int | None = None) -> Iterator[tuple[Job, Prepared | BaseException]]:
    """Decode and resize the next images on `workers` threads (Pillow and GDAL decode without the GIL) while
    the network runs on the current ones; handed over in input order, at most `depth` ahead."""
    if not jobs:
        return
    depth = depth or workers + 1
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="uhr-load") as pool:
        futures: list[tuple[Job, Future]] = []
        it = iter(jobs)
        for job in it:
            futures.append((job, pool.submit(load, job)))
            if len(futures) >= depth:
                break
        while futures:
            job, fut = futures.pop(0)
            nxt = next(it, None)
            if nxt is not None:
                futures.append((nxt, pool.submit(load, nxt)))
            try:
                yield job, fut.result()
            except Exception as exc:  # noqa: BLE001 - reported per image
                yield job, exc


def _batches(items: Iterator[tuple[Job, Prepared | BaseException]], batch_size: int,
             fail: Callable[[Job, str], None]) -> Iterator[list[Prepared]]:
    """Group loaded images (all are SxS by now); failed loads are reported and left out."""
    batch: list[Prepared] = []
    for job, item in items:
        if isinstance(item, BaseException):
            fail(job, _one_line(item))
            continue
        batch.append(item)
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
