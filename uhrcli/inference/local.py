"""Fully convolutional models: each tile on its own, with a halo covering the receptive field.

Such a model implements forward_logits(x) (its logits before the final
bilinear upsampling), logit_size(H, W) and logit_stride.

Tiles are clipped to the image and start on multiples of the total stride, so
inside a tile every layer computes what it computes on the whole image. The
one step that is not local is the final upsampling, whose ratio is the whole
image's (ceil(H / s) / H, not 1 / s when H is not a multiple of s): it is taken
here in global coordinates from the model's pre-upsampling logits.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ..geometry import resize_window
from ..tiling import Tile, TileGrid, window_slices
from . import InferOptions, logits_to_output
from .runner import Runner


class LocalInferer:
    phases = (("tiles", 1.0),)  # the one phase it reports (see uhrcli.progress)
    reentrant = True  # tiles are independent: the engine may run two at once (uhrcli.inference.workers.model_workers)

    def __init__(self, model: torch.nn.Module, runner: Runner, options: InferOptions, use_logits: bool = True):
        self.model = runner.prepare_model(model)
        self.run, self.opts = runner, options
        info = model.info
        self.num_classes = info.num_classes
        self.halo = int(info.receptive_field)
        self.multiple = max(1, int(info.size_multiple))
        self.use_logits = use_logits
        # the logits' stride; tile origins are multiples of the total stride, so of this too
        self.stride = int(getattr(model, "logit_stride", 1))
        self.classes_only = False
        self.quantised = False
        self.asynchronous = False
        self.out_margin = 0
        self._grid: TileGrid | None = None
        self._pre = None

    def needs_pixels(self, tile: Tile) -> bool:
        return True

    def prepare(self, reader, preprocess, grid: TileGrid, progress: Callable | None = None,
                state: dict | None = None) -> dict | None:
        self._grid, self._pre = grid, preprocess
        return None

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray | None, tiles: Sequence[Tile]) -> list[np.ndarray]:
        assert batch is not None and self._grid is not None
        g = self._grid
        x = self.run.pixels(batch, self._pre)
        with self.run.autocast():
            out = self.model.forward_logits(x) if self.use_logits else self.model(x)
        out = out.float()
        results = []
        for i, t in enumerate(tiles):
            ow = g.out_window(t, self.out_margin)
            r0, c0 = int(ow.row_off), int(ow.col_off)
            dst = (r0, r0 + int(ow.height), c0, c0 + int(ow.width))
            if self.use_logits:
                gh, gw = self.model.logit_size(g.height, g.width)
                s = self.stride
                origin = (int(t.read.row_off) // s, int(t.read.col_off) // s)
                logits = resize_window(out[i:i + 1], origin, (gh, gw), dst, (g.height, g.width),
                                       clamp=not self.opts.strict)
            else:
                sr, sc = window_slices(ow, t.read)
                logits = out[i:i + 1, :, sr, sc]
            results.append(logits_to_output(logits, self.classes_only, self.quantised, self.asynchronous))
        return results

    def close(self) -> None:
        pass
