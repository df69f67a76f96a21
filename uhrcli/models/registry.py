"""timm-style model registry: one create_model(name, **kw) for every network."""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


class UnknownModelError(ValueError):
    pass


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; the returned module carries `.info` (ModelInfo)."""
    try:
        fn = _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; available: {', '.join(list_models())}") from None
    model = fn(**kwargs)
    if not hasattr(model, "info"):
        raise TypeError(f"model factory {name!r} returned a module without .info")
    return model
