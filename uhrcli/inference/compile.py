"""TorchInductor for the parts of a model that carry its cost (`--compile`).

Off by default: compiling takes tens of seconds on CPU (22 s for fcn-tiny here)
and pays off only over long runs. What is compiled must take tensors alone: an
argument such as a tile's position would be guarded on and recompiled for every
tile, so a model names its heavy, position-free submodules in `compile_targets`
(ISDNet: its shallow STDC network); other models get forward_logits or forward.
"""
from __future__ import annotations

import torch


def compile_model(model: torch.nn.Module) -> list[str]:
    """Compile, in place (on first call), what `model` runs per tile; returns the names compiled."""
    targets = tuple(getattr(model, "compile_targets", ()))
    done = []
    for name in targets:
        sub = getattr(model, name)
        sub.forward = torch.compile(sub.forward)
        done.append(name)
    if not targets:
        name = "forward_logits" if hasattr(model, "forward_logits") else "forward"
        setattr(model, name, torch.compile(getattr(model, name)))
        done.append(name)
    return done


def auto_batch_size(model: torch.nn.Module, read_pixels: int, device: torch.device, amp: bool,
                    cap: int = 16) -> int:
    """Tiles per forward pass: 1 on CPU (batching buys nothing there and multiplies memory); on CUDA as many
    as half the free device memory holds, from the model's activation bytes per pixel (ModelInfo.extra,
    96 when it does not say; halved under fp16 autocast)."""
    if device.type != "cuda":
        return 1
    free, _ = torch.cuda.mem_get_info(device)
    per_px = float(model.info.extra.get("activation_bytes_per_pixel", 96)) * (0.5 if amp else 1.0)
    per_tile = max(1.0, per_px * read_pixels)
    return int(max(1, min(cap, (0.5 * free) // per_tile)))
