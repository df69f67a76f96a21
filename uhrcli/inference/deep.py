"""The deep path, run once over a whole raster: the image shrunk by the model's down ratio.

ISDNet's deep branch and the DeepLabV3 baselines see the whole image through
a dilated ResNet and an ASPP (or PSP) head whose image pooling averages the
whole map. Here the shrunk view is taken with PyTorch's own nearest indices
(so it equals the model's in-memory shrink), run in one pass when it is small
and otherwise in view tiles clipped to the view (so every convolution pads
where the whole-view forward pads) with a halo covering the backbone's reach;
the head's pooled mean comes from the sum over all tiles, and the head runs on
c4 tiles clipped the same way. The result is the deep feature map of the whole
image, kept in a FeatureStore.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from rasterio.windows import Window

from ..engine import Preprocess
from ..featcache import FeatureStore, Tiers
from ..geometry import nearest_indices
from ..proc import trim_heap
from ..io.readers import RasterReader
from ..tiling import TileGrid, ceil_to
from .runner import Runner

DEEP_WHOLE_MAX = 2560 * 2560  # shrunk-view pixels run in one pass (about 150 bytes a view pixel, before
# the shallow pass fills the caches: under that pass's peak)
DEEP_TILE = 2048  # view pixels per deep tile beyond that
HEAD_STEP = 128  # c4 cells per head tile (each side)


class ShrunkView:
    """The raster as the deep path sees it: every pixel (ratio 1) or PyTorch's nearest shrink.

    A shrunk view is decimated once into memory (or a zarr array when it exceeds the RAM budget),
    reading row bands of the raster; ratio 1 reads the raster itself.
    """

    def __init__(self, reader: RasterReader, ratio: int, tiers: Tiers, progress: Callable | None = None):
        self.reader, self.ratio = reader, ratio
        self.height, self.width = reader.height // ratio, reader.width // ratio
        if self.height < 1 or self.width < 1:
            raise ValueError(f"{reader.path}: {reader.height}x{reader.width} is smaller than the deep path's "
                             f"shrink factor {ratio}")
        self._store: FeatureStore | None = None
        if ratio > 1:
            self._store = FeatureStore((reader.count, self.height, self.width), str(reader.dtype), tiers)
            self._decimate(progress)

    def _decimate(self, progress: Callable | None, band_rows: int = 256, band_cols: int = 4096) -> None:
        rows = nearest_indices(self.reader.height, self.height)
        cols = nearest_indices(self.reader.width, self.width)
        for a in range(0, self.height, band_rows):
            b = min(self.height, a + band_rows)
            r0, r1 = int(rows[a]), int(rows[b - 1]) + 1
            for c in range(0, self.width, band_cols):
                d = min(self.width, c + band_cols)
                c0, c1 = int(cols[c]), int(cols[d - 1]) + 1
                block = self.reader.read(Window(c0, r0, c1 - c0, r1 - r0))
                self._store.write(a, c, block[:, rows[a:b] - r0][:, :, cols[c:d] - c0])
            if progress:
                progress("advance", (b - a) * self.ratio * self.reader.width, 0)  # full-res pixels read

    def read(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        if self._store is None:
            return self.reader.read(Window(c0, r0, c1 - c0, r1 - r0))
        return self._store.read(r0, r1, c0, c1)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


class DeepBranch:
    """deep_feat of a whole raster for a model with the DeepPath protocol (uhrcli.models.isdnet)."""

    def __init__(self, model: torch.nn.Module, runner: Runner, tiers: Tiers, whole_max: int | None = None,
                 tile: int | None = None):
        self.model, self.run, self.tiers = model, runner, tiers
        self.whole_max = DEEP_WHOLE_MAX if whole_max is None else whole_max
        self.tile = DEEP_TILE if tile is None else tile
        self.reach = model.deep_reach()
        self.tiled = False
        self.view_shape = (0, 0)

    @torch.inference_mode()
    def __call__(self, reader: RasterReader, preprocess: Preprocess, progress: Callable | None = None
                 ) -> FeatureStore:
        """deep_feat of the raster. The phase reports full-resolution pixels: half for reading the view (when
        shrunk), the rest for the network."""
        ratio = int(self.model.down_ratio)
        total = reader.height * reader.width
        hv, wv = reader.height // ratio, reader.width // ratio
        if (hv * wv > self.whole_max and not self.reach.get("backbone_tileable", True)
                and not hasattr(self.model, "chain_maps")):  # chained means (STDC-Seg) tile in passes instead
            from ..errors import UsageError

            raise UsageError(f"{self.model.info.name}: its {self.reach.get('image_wide', 'image-wide ops')} "
                             f"cannot be tiled and the {hv}x{wv} view exceeds the one-pass limit of "
                             f"{self.whole_max} view pixels; use a smaller raster or a -down variant")
        if progress:
            progress("phase:deep branch", 0, total)
        read_share = 0.5 if ratio > 1 else 0.0
        view = ShrunkView(reader, ratio, self.tiers, _scaled(progress, read_share))
        done = _scaled(progress, (1.0 - read_share) * total / max(1, view.height * view.width) if progress else 0)
        try:
            self.view_shape = (view.height, view.width)
            chained = not self.reach.get("backbone_tileable", True)  # image-wide means inside the backbone
            if view.height * view.width <= self.whole_max or (chained and not hasattr(self.model, "chain_maps")):
                x = self.run.pixels(view.read(0, view.height, 0, view.width), preprocess)
                with self.run.autocast():
                    c4 = self.model.deep_backbone(x).float()
                    mean = self.model.deep_pool(c4) / (c4.shape[-2] * c4.shape[-1])
                    deep = self.model.deep_head(c4, pooled_mean=mean).float()
                del c4, x
                store = FeatureStore(tuple(deep.shape[1:]), "float32", self.tiers)
                store.write(0, 0, deep[0].cpu().numpy())
                if done:
                    done("advance", view.height * view.width, 0)
                return store
            self.tiled = True
            if chained:
                return self._chained(view, preprocess, done)
            return self._tiled(view, preprocess, done)
        finally:
            view.close()

    def _tiled(self, view: ShrunkView, preprocess: Preprocess, progress: Callable | None) -> FeatureStore:
        stride = int(self.reach["backbone_stride"])
        grid = TileGrid(view.height, view.width, self.tile, ceil_to(int(self.reach["backbone_radius"]), stride),
                        stride)
        hc, wc = -(-view.height // stride), -(-view.width // stride)
        c4_store: FeatureStore | None = None
        pool_sum = None
        for t in grid:
            r0, c0 = int(t.read.row_off), int(t.read.col_off)
            x = self.run.pixels(view.read(r0, r0 + int(t.read.height), c0, c0 + int(t.read.width)), preprocess)
            with self.run.autocast():
                c4 = self.model.deep_backbone(x).float()
            rows, cols = _cells(t.core, t.read, stride, (hc, wc))
            core = c4[:, :, rows, cols]
            if c4_store is None:  # fp32 (in RAM or on disk): rounding it would move the output
                c4_store = FeatureStore((c4.shape[1], hc, wc), "float32", self.tiers)
            c4_store.write(int(t.core.row_off) // stride, int(t.core.col_off) // stride,
                           core[0].cpu().numpy().astype(c4_store.dtype, copy=False))
            s = float64(self.model.deep_pool(core))
            pool_sum = s if pool_sum is None else pool_sum + s
            del c4, core, x
            trim_heap()
            if progress:
                progress("advance", int(t.core.height * t.core.width), 0)
        assert c4_store is not None and pool_sum is not None
        mean = (pool_sum / (hc * wc)).float()
        try:
            return self._head(c4_store, mean)
        finally:
            c4_store.close()

    def _chained(self, view: ShrunkView, preprocess: Preprocess, progress: Callable | None) -> FeatureStore:
        """A backbone whose means are image-wide and chained (STDC-Seg's context path): one pass over view
        tiles per link of the chain, each summing, over the tiles' cores, the maps whose means the next pass
        needs; a last pass stores the backbone's map. Tiles are placed in the whole view, so the model
        resizes between its scales with the whole image's rule."""
        from ..geometry import Placement, halvings

        stride = int(self.reach["backbone_stride"])
        grid = TileGrid(view.height, view.width, self.tile, int(self.reach["backbone_radius"]), 32)
        passes = len(self.model.chain_strides)
        means: list[torch.Tensor] = []
        store: FeatureStore | None = None
        for p in range(passes + 1):
            sums: list[torch.Tensor] | None = None
            for t in grid:
                r0, c0 = int(t.read.row_off), int(t.read.col_off)
                x = self.run.pixels(view.read(r0, r0 + int(t.read.height), c0, c0 + int(t.read.width)), preprocess)
                place = Placement(r0, c0, view.height, view.width)
                with self.run.autocast():
                    maps = [m.float() for m in self.model.chain_maps(x, means, place)]
                strides = self.model.chain_strides[p] if p < passes else (stride,)
                cores = []
                for m, s in zip(maps, strides):
                    lv = s.bit_length() - 1
                    rows, cols = _cells(t.core, t.read, s, (halvings(view.height, lv), halvings(view.width, lv)))
                    cores.append(m[:, :, rows, cols])
                if p < passes:
                    s_ = [float64(c).sum(dim=(2, 3)) for c in cores]
                    sums = s_ if sums is None else [a + b for a, b in zip(sums, s_)]
                else:
                    if store is None:
                        store = FeatureStore((cores[0].shape[1], halvings(view.height, 3), halvings(view.width, 3)),
                                             "float32", self.tiers)
                    store.write(int(t.core.row_off) // stride, int(t.core.col_off) // stride,
                                cores[0][0].cpu().numpy())
                del x, maps, cores
                trim_heap()
                if progress:
                    progress("advance", int(t.core.height * t.core.width) // (passes + 1), 0)
            if p < passes:
                assert sums is not None
                for v, s in zip(sums, self.model.chain_strides[p]):
                    lv = s.bit_length() - 1
                    means.append((v / (halvings(view.height, lv) * halvings(view.width, lv))).float())
        assert store is not None
        try:
            return self._head(store, means[-1])
        finally:
            store.close()

    def _head(self, c4: FeatureStore, mean: torch.Tensor) -> FeatureStore:
        _, hc, wc = c4.shape
        if not self.reach["head_tileable"]:  # e.g. PSP's bins average fixed fractions of the whole map
            x = self.run.tensor(c4.read(0, hc, 0, wc).astype(np.float32))
            with self.run.autocast():
                y = self.model.deep_head(x, pooled_mean=mean).float()
            out = FeatureStore(tuple(y.shape[1:]), "float32", self.tiers)
            out.write(0, 0, y[0].cpu().numpy())
            return out
        grid = TileGrid(hc, wc, HEAD_STEP, int(self.reach["head_cells"]), 1)
        out: FeatureStore | None = None
        for t in grid:
            r0, c0 = int(t.read.row_off), int(t.read.col_off)
            x = self.run.tensor(c4.read(r0, r0 + int(t.read.height), c0, c0 + int(t.read.width)).astype(np.float32))
            with self.run.autocast():
                y = self.model.deep_head(x, pooled_mean=mean).float()
            if out is None:
                out = FeatureStore((y.shape[1], hc, wc), "float32", self.tiers)
            sr, sc = t.core_in_tile
            out.write(int(t.core.row_off), int(t.core.col_off), y[0, :, sr, sc].cpu().numpy())
            del x, y
            trim_heap()
        assert out is not None
        return out


def _scaled(progress: Callable | None, factor: float) -> Callable | None:
    """A progress callback whose 'advance' units are multiplied by factor (None when there is nothing to say)."""
    if progress is None or factor <= 0:
        return None

    def cb(event: str, done: int, total: int) -> None:
        progress(event, int(round(done * factor)), total)

    return cb


def _cells(core: Window, read: Window, stride: int, size: tuple[int, int]) -> tuple[slice, slice]:
    """Cells (at `stride`) of a core, relative to its read window's map; the last cells reach the map's end."""
    r0 = int(core.row_off) // stride
    c0 = int(core.col_off) // stride
    r1 = min(size[0], -(-int(core.row_off + core.height) // stride))
    c1 = min(size[1], -(-int(core.col_off + core.width) // stride))
    o_r, o_c = int(read.row_off) // stride, int(read.col_off) // stride
    return slice(r0 - o_r, r1 - o_r), slice(c0 - o_c, c1 - o_c)


def map_strips(store: FeatureStore, fn: Callable[[torch.Tensor], torch.Tensor], runner: Runner, reach: int = 1,
               step: int = 128) -> tuple[FeatureStore, torch.Tensor]:
    """fn (local, `reach` cells each side) over a whole stored map in row strips; returns (result, its mean)."""
    _, h, w = store.shape
    out: FeatureStore | None = None
    total = None
    for r in range(0, h, step):
        a0, a1 = max(0, r - reach), min(h, r + step + reach)
        x = runner.tensor(store.read(a0, a1, 0, w).astype(np.float32))
        with torch.inference_mode(), runner.autocast():
            y = fn(x).float()
        y = y[:, :, r - a0:r - a0 + min(step, h - r)]
        if out is None:
            out = FeatureStore((y.shape[1], h, w), "float32", store._tiers)
        out.write(r, 0, y[0].cpu().numpy())
        s = float64(y).sum(dim=(0, 2, 3))
        total = s if total is None else total + s
    assert out is not None and total is not None
    return out, (total / (h * w)).float()[None]



def float64(t: torch.Tensor) -> torch.Tensor:
    """t in float64 for exact sums: on the device where it has float64, on the CPU where it has not (MPS)."""
    return t.cpu().double() if t.device.type == "mps" else t.double()

__all__ = ["DeepBranch", "ShrunkView", "map_strips", "DEEP_WHOLE_MAX", "DEEP_TILE"]
