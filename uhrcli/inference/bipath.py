"""Bi-path models (ISDNet) on rasters of any size, equal to the whole-image forward.

The deep path runs once over the shrunk raster (uhrcli.inference.deep). The
full-resolution part is local except for the means the two Relation-Aware
Fusions pool and the resizes between scales, so it runs in passes over the
tiles, the image-wide means computed between them:

  A  shallow branch and the fusions' spatial branches (s8, s16)  -> means of s8, s16
  B  fuse16 with its now image-wide weights -> fuse8's context c8  -> mean of c8
  C  fuse8 and the classifier: the engine's pass, tile by tile

The shallow branch runs once per tile: what B and C need of a tile (s8, s16,
then c8: about 5 bytes per pixel in fp16) waits in a tiered cache (device,
RAM, disk, with budgets); a tile beyond every budget is computed again from
its pixels. Every resize between scales is sampled in the whole image's
coordinates (uhrcli.geometry) and every window is clipped to the image, so
the network's own zero padding acts at the image border exactly as in the
whole-image forward. Tiles with no valid pixel are skipped in every pass; the
image-wide means are taken over the tiles that hold data.

Windows per tile, in cells of each map (all clipped to the map):
  L    logits (1/8) the output window's bilinear upsampling reads
  W8   L +- 3: s8 and fuse8's context (context_head, smooth, the classifier's 3x3)
  S16  the 1/16 cells whose upsampling W8 reads: c8
  W16  S16 +- 3: s16 and fuse16's context (context_head, smooth, c8's 3x3)
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..engine import prefetch_tiles
from ..featcache import FeatureStore, TileCache, Tiers
from ..geometry import Placement, halvings, resize_window, source_span
from ..proc import trim_heap
from ..tiling import Tile, TileGrid
from . import InferOptions, logits_to_output
from .deep import DeepBranch, map_strips
from .runner import Runner

Span = tuple[int, int]
MARGIN = 3  # cells of context the three 3x3 convolutions after each window need


@dataclass
class BiPathStats:
    """What the passes did, for reports and tests."""

    deep_shape: tuple[int, int] = (0, 0)
    deep_tiled: bool = False
    tiles_computed: int = 0  # shallow branch runs in passes A and B
    tiles_recomputed: int = 0  # shallow branch runs in pass C (cache misses, resumed runs)
    cache_tiers: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    means: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class Windows:
    core8: tuple[Span, Span]
    core16: tuple[Span, Span]
    L: tuple[Span, Span]
    W8: tuple[Span, Span]
    S16: tuple[Span, Span]
    W16: tuple[Span, Span]


def _grow(span: Span, m: int, n: int) -> Span:
    return max(0, span[0] - m), min(n, span[1] + m)


def _union(a: Span, b: Span) -> Span:
    return min(a[0], b[0]), max(a[1], b[1])


def _crop(t: torch.Tensor, origin: tuple[int, int], rows: Span, cols: Span, strict: bool = True) -> torch.Tensor:
    """Cells rows x cols (global) of a map whose first cell is `origin`.

    A tile whose halo is smaller than the model's reach (a user's --halo) may not hold the whole window:
    then strict raises, else the missing cells are zeros (the output is no longer exact there).
    """
    h, w = t.shape[-2:]
    r0, r1 = rows[0] - origin[0], rows[1] - origin[0]
    c0, c1 = cols[0] - origin[1], cols[1] - origin[1]
    if r0 >= 0 and c0 >= 0 and r1 <= h and c1 <= w:
        return t[..., r0:r1, c0:c1]
    if strict:
        raise ValueError(f"a tile's map holds cells [{origin[0]}, {origin[0] + h}) x [{origin[1]}, {origin[1] + w}), "
                         f"needed {rows} x {cols}: the halo is too small")
    part = t[..., max(0, r0):max(0, r1), max(0, c0):max(0, c1)]
    top, left = max(0, -r0), max(0, -c0)
    bottom, right = (r1 - r0) - top - part.shape[-2], (c1 - c0) - left - part.shape[-1]
    return torch.nn.functional.pad(part, (left, right, top, bottom))


def _sum(t: torch.Tensor, origin: tuple[int, int], core: tuple[Span, Span]) -> tuple[torch.Tensor, int]:
    part = _crop(t, origin, *core)
    if part.device.type == "mps":  # no float64 there: the exact sum on the CPU
        part = part.cpu()
    return part.sum(dim=(0, 2, 3), dtype=torch.float64), part.shape[-2] * part.shape[-1]


class BiPathInferer:
    # phases it reports and their relative cost per pixel (isdnet-r18, 100 MP on CPU: see uhrcli.progress)
    phases = (("deep branch", 0.17), ("shallow pass", 0.64), ("fusion pass", 0.05), ("tiles", 0.12))

    def __init__(self, model: torch.nn.Module, runner: Runner, options: InferOptions):
        self.model = runner.prepare_model(model)
        self.run, self.opts = runner, options
        info = model.info
        self.num_classes = info.num_classes
        self.halo = int(info.receptive_field)
        self.multiple = max(16, int(info.size_multiple))
        self.classes_only = False
        self.quantised = False
        self.asynchronous = False
        self.out_margin = 0
        self.stats = BiPathStats()
        self._tiers = Tiers(options.cache, runner.device)
        dtype = options.cache_dtype or (torch.float16 if runner.amp and runner.device.type != "cpu" else torch.float32)
        self._cache = TileCache(self._tiers, dtype)
        self._c16: FeatureStore | None = None
        self._grid: TileGrid | None = None
        self._pre = None
        self._w: dict[str, torch.Tensor] = {}

    # -- geometry ------------------------------------------------------------------------------------
    def _sizes(self) -> None:
        g = self._grid
        assert g is not None
        self.H, self.W = g.height, g.width
        self.g8 = (halvings(self.H, 3), halvings(self.W, 3))
        self.g16 = (halvings(self.H, 4), halvings(self.W, 4))

    def windows(self, tile: Tile) -> Windows:
        g = self._grid
        assert g is not None
        ow = g.out_window(tile, self.out_margin)
        o = ((int(ow.row_off), int(ow.row_off + ow.height)), (int(ow.col_off), int(ow.col_off + ow.width)))
        c = tile.core
        core = ((int(c.row_off), int(c.row_off + c.height)), (int(c.col_off), int(c.col_off + c.width)))

        def cells(span: Span, s: int, n: int) -> Span:
            return span[0] // s, min(n, -(-span[1] // s))

        core8 = (cells(core[0], 8, self.g8[0]), cells(core[1], 8, self.g8[1]))
        core16 = (cells(core[0], 16, self.g16[0]), cells(core[1], 16, self.g16[1]))
        L = (source_span(self.g8[0], self.H, *o[0]), source_span(self.g8[1], self.W, *o[1]))
        W8 = tuple(_union(_grow(L[i], MARGIN, self.g8[i]), core8[i]) for i in range(2))
        S16 = tuple(_union(source_span(self.g16[i], self.g8[i], *W8[i]), core16[i]) for i in range(2))
        W16 = tuple(_grow(S16[i], MARGIN, self.g16[i]) for i in range(2))
        return Windows(core8, core16, L, W8, S16, W16)  # type: ignore[arg-type]

    # -- the stages, per tile -----------------------------------------------------------------------------
    def _spatial(self, x: np.ndarray, tile: Tile, win: Windows) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Pass A's work on a tile's pixels: s8 on W8 and s16 on W16 (rounded as cached), plus core sums."""
        m = self.model
        r, c = int(tile.read.row_off), int(tile.read.col_off)
        strict = self.opts.strict
        in8 = tuple(_grow(win.W8[i], 1, self.g8[i]) for i in range(2))
        in16 = tuple(_grow(win.W16[i], 1, self.g16[i]) for i in range(2))
        with self.run.autocast():
            feat8, feat16 = m.shallow(self.run.pixels(x, self._pre), Placement(r, c, self.H, self.W))
            f8 = _crop(feat8, (r // 8, c // 8), *in8, strict=strict)
            f16 = _crop(feat16, (r // 16, c // 16), *in16, strict=strict)
            del feat8, feat16
            s8 = m.spatial8(f8).float()
            s16 = m.spatial16(f16).float()
        o8, o16 = (in8[0][0], in8[1][0]), (in16[0][0], in16[1][0])
        sums = {"s8": _sum(s8, o8, win.core8), "s16": _sum(s16, o16, win.core16)}
        q = self._cache.quantise
        return q(_crop(s8, o8, *win.W8)), q(_crop(s16, o16, *win.W16)), sums

    def _context8(self, s16: torch.Tensor, win: Windows) -> torch.Tensor:
        """Pass B's work: fuse16 over W16 with image-wide weights, then c8 on S16 (not yet rounded)."""
        assert self._c16 is not None
        _, dh, dw = self._c16.shape
        (a, b), (c, d) = win.W16
        rs, cs = source_span(dh, self.g16[0], a, b), source_span(dw, self.g16[1], c, d)
        src = torch.from_numpy(self._c16.read(*rs, *cs)).to(self.run.device)[None] * self._w["c_w16"]
        ctx16 = resize_window(src, (rs[0], cs[0]), (dh, dw), (a, b, c, d), self.g16)
        with self.run.autocast():
            c8 = self.model.fuse16_context(s16, ctx16, self._w["s_w16"]).float()
        return _crop(c8, (a, c), *win.S16)

    def _logits(self, s8: torch.Tensor, c8: torch.Tensor, win: Windows, tile: Tile) -> np.ndarray:
        """Pass C: fuse8 and the classifier over W8, upsampled onto the output window."""
        (a, b), (c, d) = win.W8
        src = c8 * self._w["c_w8"]
        ctx8 = resize_window(src, (win.S16[0][0], win.S16[1][0]), self.g16, (a, b, c, d), self.g8)
        with self.run.autocast():
            logits = self.model.fuse8_logits(s8, ctx8, self._w["s_w8"]).float()
        logits = _crop(logits, (a, c), *win.L)
        g = self._grid
        assert g is not None
        ow = g.out_window(tile, self.out_margin)
        r0, c0 = int(ow.row_off), int(ow.col_off)
        out = resize_window(logits, (win.L[0][0], win.L[1][0]), self.g8,
                            (r0, r0 + int(ow.height), c0, c0 + int(ow.width)), (self.H, self.W))
        return logits_to_output(out, self.classes_only, self.quantised, self.asynchronous)

    # -- passes ----------------------------------------------------------------------------------------------
    def needs_pixels(self, tile: Tile) -> bool:
        return (tile.row, tile.col) not in self._cache

    @torch.inference_mode()
    def prepare(self, reader, preprocess, grid: TileGrid, progress: Callable | None = None,
                state: dict | None = None) -> dict | None:
        self._grid, self._pre = grid, preprocess
        self._sizes()
        self._cache.close()
        if self._c16 is not None:
            self._c16.close()
        deep = DeepBranch(self.model, self.run, self._tiers, self.opts.deep_whole_max, self.opts.deep_tile)
        dev = self.run.device
        # the deep path first, while the caches are empty: its activations are this inferer's largest
        c_gap16 = self._deep(deep, reader, preprocess, progress)
        if state and "means" in state:  # a resumed run: the image-wide means are known
            means = {k: torch.tensor(v, dtype=torch.float32, device=dev)[None] for k, v in state["means"].items()}
            self._set_weights(means, c_gap16.to(dev))
            return state
        tiles = list(grid)
        t0 = time.perf_counter()
        sums: dict[str, Any] = {}

        def add(part: dict) -> None:
            for k, (s, n) in part.items():
                acc = sums.setdefault(k, [0, 0])
                acc[0] = acc[0] + s
                acc[1] += n

        if progress:
            progress("phase:shallow pass", 0, self.H * self.W)
        live = []
        for t, x, _ in prefetch_tiles(reader, tiles):
            if x is not None:
                add(self.shallow_tile(t, x))
                live.append(t)
            if progress:
                progress("advance", int(t.core.height * t.core.width), 0)
            trim_heap()
        self.stats.seconds["shallow pass"] = time.perf_counter() - t0
        if not live:
            return None  # every tile is nodata: nothing will run
        means = {k: (s / n).float()[None].to(dev) for k, (s, n) in sums.items()}
        s_w16, c_w16 = self.model.fusion_weights(16, means["s16"], c_gap16.to(dev))
        self._w = {"s_w16": s_w16, "c_w16": c_w16}
        t0 = time.perf_counter()
        if progress:
            progress("phase:fusion pass", 0, self.H * self.W)
        missing = [t for t in live if (t.row, t.col) not in self._cache]
        reread = prefetch_tiles(reader, missing) if missing else iter(())
        c8_sum: dict[str, Any] = {}
        for t in live:
            x = None if (t.row, t.col) in self._cache else next(reread)[1]
            s, n = self.fusion_tile(t, x)
            c8_sum["s"] = c8_sum.get("s", 0) + s
            c8_sum["n"] = c8_sum.get("n", 0) + n
            if progress:
                progress("advance", int(t.core.height * t.core.width), 0)
            trim_heap()
        means["c8"] = (c8_sum["s"] / c8_sum["n"]).float()[None].to(dev)
        self._set_weights(means, c_gap16.to(dev))
        self.stats.seconds["fusion pass"] = time.perf_counter() - t0
        self.stats.cache_tiers = dict(self._cache.counts)
        return {"means": {k: [float(v) for v in means[k][0].cpu()] for k in ("s16", "s8", "c8")}}

    # -- the passes' work on one tile, as steps (prepare runs them in order; uhrcli.cluster runs them as tasks)
    def begin(self, grid: TileGrid, preprocess) -> None:
        """Take a raster's grid and preprocessing, with empty caches (the first step of prepare)."""
        self._grid, self._pre = grid, preprocess
        self._sizes()
        self._cache.close()

    @torch.inference_mode()
    def shallow_tile(self, tile: Tile, x: np.ndarray) -> dict:
        """Pass A on one tile: s8 and s16 kept in the cache; returns the sums of their core {name: (sum, n)}."""
        s8, s16, part = self._spatial(x, tile, self.windows(tile))
        self._cache.put((tile.row, tile.col), {"s8": s8, "s16": s16})
        self.stats.tiles_computed += 1
        return part

    @torch.inference_mode()
    def fusion_tile(self, tile: Tile, x: np.ndarray | None) -> tuple[torch.Tensor, int]:
        """Pass B on one tile (pixels x when it is not cached): c8 replaces s16 in the cache; returns c8's core sum.

        Needs the deep context (`use_deep`) and fuse16's image-wide weights (`set_weights16`)."""
        win = self.windows(tile)
        key = (tile.row, tile.col)
        if key in self._cache:
            s16 = self._cache.get(key)["s16"]
        else:
            assert x is not None, "a tile missing from the cache needs its pixels"
            _, s16, _ = self._spatial(x, tile, win)
            self.stats.tiles_computed += 1
        c8 = self._context8(s16, win)
        s, n = _sum(c8, (win.S16[0][0], win.S16[1][0]), win.core16)
        if key in self._cache:  # s8 stays where it is; c8 replaces s16
            self._cache.drop(key, "s16")
            self._cache.put(key, {"c8": self._cache.quantise(c8)})
        return s, n

    @torch.inference_mode()
    def deep_context(self, reader, preprocess, progress: Callable | None = None) -> torch.Tensor:
        """The deep path over the whole raster (begin() first): fuse16's context map is kept (`c16`); returns its
        mean (1, C)."""
        if self._c16 is not None:
            self._c16.close()
            self._c16 = None
        deep = DeepBranch(self.model, self.run, self._tiers, self.opts.deep_whole_max, self.opts.deep_tile)
        return self._deep(deep, reader, preprocess, progress)

    @property
    def c16(self) -> Any:
        return self._c16

    def use_deep(self, c16: Any) -> None:
        """The deep path's fuse16 context map (anything with .shape and .read(r0, r1, c0, c1), e.g. a FeatureStore)."""
        if self._c16 is not None and self._c16 is not c16:
            self._c16.close()
        self._c16 = c16

    def set_weights16(self, mean_s16: torch.Tensor, c_gap16: torch.Tensor) -> None:
        """fuse16's weights from the image-wide mean of s16 and the deep context's mean (pass B needs them)."""
        s_w16, c_w16 = self.model.fusion_weights(16, mean_s16.to(self.run.device), c_gap16.to(self.run.device))
        self._w = {"s_w16": s_w16, "c_w16": c_w16}

    def set_means(self, means: dict[str, torch.Tensor], c_gap16: torch.Tensor) -> None:
        """Every fusion weight from the image-wide means (s16, s8, c8; each (1, C)): pass C is then tile by tile."""
        dev = self.run.device
        self._set_weights({k: v.to(dev) for k, v in means.items()}, c_gap16.to(dev))

    def _deep(self, deep: DeepBranch, reader, preprocess, progress: Callable | None) -> torch.Tensor:
        """The deep path over the whole raster, then fuse16's context on it (kept); returns that context's mean."""
        t0 = time.perf_counter()
        feat = deep(reader, preprocess, progress)
        self.stats.deep_shape, self.stats.deep_tiled = deep.view_shape, deep.tiled
        try:
            self._c16, c_gap16 = map_strips(feat, self.model.deep_context, self.run, reach=1)
        finally:
            feat.close()
        self.stats.seconds["deep"] = time.perf_counter() - t0
        return c_gap16

    def _set_weights(self, means: dict[str, torch.Tensor], c_gap16: torch.Tensor) -> None:
        s_w16, c_w16 = self.model.fusion_weights(16, means["s16"], c_gap16)
        s_w8, c_w8 = self.model.fusion_weights(8, means["s8"], means["c8"])
        self._w = {"s_w16": s_w16, "c_w16": c_w16, "s_w8": s_w8, "c_w8": c_w8}
        self.stats.means = {**means, "c16": c_gap16}

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray | None, tiles: Sequence[Tile]) -> list[np.ndarray]:
        out = []
        for i, t in enumerate(tiles):
            win = self.windows(t)
            key = (t.row, t.col)
            if key in self._cache:
                cached = self._cache.get(key)
                s8, c8 = cached["s8"], cached["c8"]
                self._cache.pop(key)
            else:  # beyond every cache budget, or a resumed run: the same arithmetic from the pixels
                assert batch is not None, "a tile missing from the cache needs its pixels"
                s8, s16, _ = self._spatial(batch[i], t, win)
                c8 = self._cache.quantise(self._context8(s16, win))
                self.stats.tiles_recomputed += 1
            out.append(self._logits(s8, c8, win, t))
        return out

    def close(self) -> None:
        self._cache.close()
        if self._c16 is not None:
            self._c16.close()
            self._c16 = None
        self._tiers.close()
