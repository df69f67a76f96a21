"""The loss contract: a model's own `losses(x, target)` first, else a default for its task.

ISDNet and DeepLabV3 define their weighted multi-term losses themselves;
PGNet's live in uhrcli.models.pgnet_losses; every other network gets
cross-entropy (segment) or PGNet's BCE + IoU (saliency) on its logits.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.pgnet_losses import bce_iou_loss, pgnet_loss

IGNORE = 255


def main_output(out: object) -> torch.Tensor:
    """The prediction tensor of a forward pass that may return a tuple, list or dict of outputs."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out:
        return main_output(out[0])
    if isinstance(out, dict):
        for key in ("pred", "seg", "out", "logits"):
            if key in out:
                return main_output(out[key])
        return main_output(next(iter(out.values())))
    raise TypeError(f"cannot find the prediction in a model output of type {type(out).__name__}")


def bce_iou(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BCE + IoU with the logits brought up to the mask's size, so every labelled pixel is supervised."""
    if logits.shape[-2:] != mask.shape[-2:]:
        logits = F.interpolate(logits, size=mask.shape[-2:], mode="bilinear", align_corners=False)
    return bce_iou_loss(logits, mask)


def compute_losses(model: nn.Module, x: torch.Tensor, target: torch.Tensor, task: str,
                   ignore_index: int = IGNORE) -> dict[str, torch.Tensor]:
    """dict of loss terms including the total 'loss'. target: (B,H,W) long (segment) or float 0..1 (saliency)."""
    if hasattr(model, "losses") and callable(model.losses):
        out = model.losses(x, target if task != "saliency" else target[:, None])
        if "loss" not in out:
            out = dict(out)
            out["loss"] = sum(v for k, v in out.items() if k.startswith("loss"))
        return out
    if task == "saliency":
        mask = target[:, None].float()
        if getattr(getattr(model, "info", None), "name", "").startswith("pgnet"):
            return dict(pgnet_loss(model(x), mask))
        loss = bce_iou(main_output(model(x)).float(), mask)
        return {"loss": loss}
    logits = main_output(model(x)).float()
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return {"loss": F.cross_entropy(logits, target, ignore_index=ignore_index)}
