"""One inferer per model: the code that turns a raster's tiles into what the model's whole-image
forward would give, used by `uhr segment`, `uhr eval run`, training's validation and `uhr bench`.

`make_inferer(model, device, options)` picks by what the model implements:
  - the bi-path protocol (ISDNet: deep_*, shallow, spatial8/16, fusion_weights, fuse16_context,
    fuse8_logits) -> BiPathInferer: the deep path once over the shrunk raster, then passes over
    full-resolution tiles that make the fusions' means image-wide;
  - the deep-path protocol alone (DeepLabV3: deep_*, deep_logits) -> DeepInferer: the network once
    over the (shrunk) raster, tiles are only resampled from its logits;
  - forward_logits + logit_size (fully convolutional models) -> LocalInferer: tiles with a halo,
    the final upsampling taken in the whole image's coordinates;
  - anything else -> LocalInferer on the model's own full-resolution output.
Every inferer answers `__call__(batch, tiles)` with one array per tile covering
`grid.out_window(tile, out_margin)`: uint8 classes (1, h, w) when `classes_only`; uint8 classes then
uint8 probabilities (x/255) as (1 + K, h, w) when `quantised`; else float32 probabilities (K, h, w).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch

from ..featcache import CacheBudget
from ..tiling import Tile, TileGrid
from .runner import Runner


class Inferer(Protocol):
    phases: tuple[tuple[str, float], ...]  # phases prepare() and the tile pass report, with relative costs
    num_classes: int
    halo: int  # full-resolution pixels of context a tile needs on each side
    multiple: int  # tile origins on multiples of this
    classes_only: bool  # set by the engine when no probabilities are written
    quantised: bool  # set by the engine when probabilities are written as they are (crop merge): uint8 results
    asynchronous: bool  # set by the engine, whose writer thread waits: results from CUDA may be `Pending`
    out_margin: int  # set by the engine: pixels beyond the core a merger needs (blend)

    def needs_pixels(self, tile: Tile) -> bool: ...

    def prepare(self, reader: Any, preprocess: Any, grid: TileGrid, progress: Callable | None = None,
                state: dict | None = None) -> dict | None: ...

    def __call__(self, batch: np.ndarray | None, tiles: Sequence[Tile]) -> list[np.ndarray]: ...

    def close(self) -> None: ...


@dataclass
class InferOptions:
    """How an inferer runs; budgets of the caches between passes (see uhrcli.featcache)."""

    amp: bool = False
    channels_last: bool = True
    cache: CacheBudget = field(default_factory=CacheBudget)
    cache_dtype: torch.dtype | None = None  # None: float16 under fp16 autocast, else float32 (no extra rounding)
    deep_whole_max: int | None = None  # shrunk-view pixels run in one deep pass
    deep_tile: int | None = None
    border: str = "clip"
    strict: bool = False  # raise instead of clamping when a halo is too small for exactness


def logits_to_probs(logits: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def class_map(logits: torch.Tensor) -> torch.Tensor:
    """(B, K, h, w) -> (B, 1, h, w) uint8: the best class (the first on ties; K = 1: logit >= 0).

    A running maximum over the channels: torch's argmax over a short class axis is 10-30x slower on CPU
    (0.7 s for a 2-class 2016^2 tile)."""
    if logits.shape[1] == 1:
        return (logits >= 0).to(torch.uint8)
    if logits.shape[1] == 2:  # one comparison (ties go to class 0)
        return (logits[:, 1:2] > logits[:, 0:1]).to(torch.uint8)
    best = logits[:, 0].clone()
    idx = torch.zeros(best.shape, dtype=torch.uint8, device=logits.device)
    for k in range(1, logits.shape[1]):
        idx.masked_fill_(logits[:, k] > best, k)
        torch.maximum(best, logits[:, k], out=best)
    return idx[:, None]


class Pending:
    """A result still crossing from the device: pinned host memory and the event that marks the copy done.

    The engine's writer thread waits on it, so the thread that launches the model goes on to the next tile
    while the copy (and the merge of earlier tiles) runs: a `.cpu()` per batch stalled the device each time."""

    __slots__ = ("host", "event")

    def __init__(self, host: torch.Tensor, event: Any):
        self.host, self.event = host, event

    def wait(self) -> np.ndarray:
        self.event.synchronize()
        return self.host.numpy()


def to_host(t: torch.Tensor, asynchronous: bool = False) -> np.ndarray | Pending:
    """A device tensor as a numpy array; from CUDA, with `asynchronous`, a Pending copy into pinned memory made
    on a stream of its own (after the compute that produced it), so the next tile's compute need not wait."""
    if asynchronous and t.device.type == "cuda":
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        compute = torch.cuda.current_stream(t.device)
        stream = side_stream(t.device, "d2h")
        stream.wait_stream(compute)
        with torch.cuda.stream(stream):
            host.copy_(t, non_blocking=True)
            event = torch.cuda.Event()
            event.record(stream)
        t.record_stream(stream)  # the caching allocator keeps t until the copy is done
        return Pending(host, event)
    return t.cpu().numpy()


_SIDE_STREAMS: dict[tuple[str, int, str], Any] = {}


def side_stream(device: torch.device, purpose: str) -> Any:
    """One CUDA stream per device and purpose (h2d, d2h): copies overlap the compute stream's work."""
    key = (device.type, device.index if device.index is not None else torch.cuda.current_device(), purpose)
    if key not in _SIDE_STREAMS:
        _SIDE_STREAMS[key] = torch.cuda.Stream(device=torch.device(device.type, key[1]))
    return _SIDE_STREAMS[key]


def resolve(out: np.ndarray | Pending | None) -> np.ndarray | None:
    return out.wait() if isinstance(out, Pending) else out


def logits_to_output(logits: torch.Tensor, classes_only: bool, quantised: bool = False,
                     asynchronous: bool = False) -> np.ndarray | Pending:
    """(1, K, h, w) logits -> (K, h, w) float32 probabilities, or (1, h, w) uint8 classes, or (1 + K, h, w) uint8
    classes and probabilities x/255 (`quantised`), all taken on the device: a quarter of the bytes come back,
    and the class map is the logits' whatever is written beside it. `asynchronous`: see `Pending`."""
    logits = logits.float()
    if classes_only:
        return to_host(class_map(logits)[0], asynchronous)
    probs = logits_to_probs(logits)
    if quantised:
        q = probs.mul_(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8)  # np.rint's rounding: half to even
        return to_host(torch.cat([class_map(logits), q], 1)[0], asynchronous)
    return to_host(probs[0], asynchronous)


def kind_of(model: torch.nn.Module) -> str:
    """'bipath', 'deep', 'local' or 'plain': which inferer a model gets."""
    if all(hasattr(model, a) for a in ("deep_backbone", "shallow", "fusion_weights", "fuse8_logits")):
        return "bipath"
    if all(hasattr(model, a) for a in ("deep_backbone", "deep_head", "deep_logits")):
        return "deep"
    if hasattr(model, "forward_logits") and hasattr(model, "logit_size"):
        return "local"
    return "plain"


def make_inferer(model: torch.nn.Module, device: torch.device, options: InferOptions | None = None) -> Inferer:
    opts = options or InferOptions()
    # channels-last is for convolutions; a model without any (identity) says so and keeps (N, C, H, W)
    runner = Runner(device, amp=opts.amp, channels_last=opts.channels_last and getattr(model, "channels_last", True))
    kind = kind_of(model)
    if opts.border != "clip" and kind in ("bipath", "deep"):
        from ..errors import UsageError

        raise UsageError(f"--border {opts.border}: model {model.info.name} sees the whole image through its deep "
                         "path; only --border clip applies")
    if kind == "bipath":
        from .bipath import BiPathInferer

        return BiPathInferer(model, runner, opts)
    if kind == "deep":
        from .deeponly import DeepInferer

        return DeepInferer(model, runner, opts)
    from .local import LocalInferer

    return LocalInferer(model, runner, opts, use_logits=kind == "local" and opts.border == "clip")


__all__ = ["Inferer", "InferOptions", "make_inferer", "kind_of", "class_map", "logits_to_output", "logits_to_probs",
           "Runner"]
