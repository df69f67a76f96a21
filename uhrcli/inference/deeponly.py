"""Models that are a deep path alone (the DeepLabV3 baselines): run once, then resample tiles.

The network runs once over the (shrunk) raster in uhrcli.inference.deep, with
its image pooling image-wide; its 1/8 logits are kept, and each output tile is
the bilinear upsampling of the logits it covers, in global coordinates. Tiles
need no pixels and no halo: a 21x-halo tiling of a large-receptive-field model
is never run.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ..featcache import FeatureStore, Tiers
from ..geometry import resize_window, source_span
from ..tiling import Tile, TileGrid
from . import InferOptions, logits_to_output
from .deep import DeepBranch, map_strips
from .runner import Runner


class DeepInferer:
    phases = (("deep branch", 0.7), ("tiles", 0.3))  # relative cost per pixel (see uhrcli.progress)

    def __init__(self, model: torch.nn.Module, runner: Runner, options: InferOptions):
        self.model = runner.prepare_model(model)
        self.run, self.opts = runner, options
        self.num_classes = model.info.num_classes
        # how the model's forward upsamples its logits (STDC-Seg: align_corners=True, as mmseg's head)
        self.align_corners = bool(getattr(model, "align_corners", False))
        self.halo, self.multiple = 0, 1
        self.classes_only = False
        self.quantised = False
        self.asynchronous = False
        self.out_margin = 0
        self._tiers = Tiers(options.cache, runner.device)
        self._logits: FeatureStore | None = None
        self._grid: TileGrid | None = None
        self.deep: DeepBranch | None = None

    def needs_pixels(self, tile: Tile) -> bool:
        return False

    def prepare(self, reader, preprocess, grid: TileGrid, progress: Callable | None = None,
                state: dict | None = None) -> dict | None:
        self._grid = grid
        self.deep = DeepBranch(self.model, self.run, self._tiers, self.opts.deep_whole_max,
                               self.opts.deep_tile)
        feat = self.deep(reader, preprocess, progress)
        try:
            self._logits, _ = map_strips(feat, self.model.deep_logits, self.run, reach=0)
        finally:
            feat.close()
        return None

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray | None, tiles: Sequence[Tile]) -> list[np.ndarray]:
        assert self._grid is not None and self._logits is not None
        g = self._grid
        _, gh, gw = self._logits.shape
        out = []
        for t in tiles:
            ow = g.out_window(t, self.out_margin)
            r0, c0 = int(ow.row_off), int(ow.col_off)
            dst = (r0, r0 + int(ow.height), c0, c0 + int(ow.width))
            ac = self.align_corners
            a, b = source_span(gh, g.height, dst[0], dst[1], ac)
            c, d = source_span(gw, g.width, dst[2], dst[3], ac)
            src = torch.from_numpy(self._logits.read(a, b, c, d)).to(self.run.device)[None]
            logits = resize_window(src, (a, c), (gh, gw), dst, (g.height, g.width), align_corners=ac)
            out.append(logits_to_output(logits, self.classes_only, self.quantised, self.asynchronous))
        return out

    def close(self) -> None:
        if self._logits is not None:
            self._logits.close()
            self._logits = None
        self._tiers.close()
