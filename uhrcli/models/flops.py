"""Parameter and FLOP counts (torch.utils.flop_counter), for `uhr info` and the bench.

FLOPs are what FlopCounterMode reports: 2 FLOPs per multiply-add for
convolutions and matmuls (so MACs = FLOPs / 2); elementwise ops, norms,
pooling and interpolation are not counted. The count runs on the meta device
by default: no memory and no compute, so 2448x2448 costs nothing.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter values (buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, input_shape: Sequence[int], device: str | torch.device = "meta") -> int:
    """FLOPs (2 x multiply-adds) of one eval-mode forward on an input of `input_shape` (B, C, H, W).

    device='meta' counts on a meta-device copy of the model (shapes only);
    pass a real device to count on the model itself.
    """
    dev = torch.device(device)
    if dev.type == "meta":
        m = copy.deepcopy(model).to("meta")
    else:
        m = model
    was_training = m.training
    m.eval()
    x = torch.zeros(tuple(input_shape), device=dev)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        m(x)
    if m is model and was_training:
        model.train()
    return int(counter.get_total_flops())
