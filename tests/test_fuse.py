"""BatchNorm folding: every registry model computes the same function after folding, and really loses its BNs."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from uhrcli.models import create_model, list_models
from uhrcli.models.fuse import fold_batchnorm

SIZES = {"pgnet": 256}


def _randomise_bn(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics and affine terms, so a wrong fold cannot hide behind identity BNs."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)


@pytest.mark.parametrize("name", list_models())
def test_fold_keeps_outputs(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name).eval()
    _randomise_bn(model)
    folded = copy.deepcopy(model)
    n = fold_batchnorm(folded)
    before = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    after = sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert after == before - n and (n > 0) == (before > 0)
    size = SIZES.get(name, 128)
    x = torch.randn(1, model.info.in_channels, size, size)
    with torch.inference_mode():
        a, b = model(x), folded(x)
    scale = a.abs().max().item()
    assert (a - b).abs().max().item() <= 1e-4 * max(1.0, scale)


def test_fold_refuses_training_mode() -> None:
    with pytest.raises(ValueError):
        fold_batchnorm(create_model("fcn-tiny").train())
