"""PGNet's training objective, as its official train_distributed.py defines it.

loss = bce_iou(pred) + 0.125 * (bce_iou(wr) + bce_iou(ws)) + AGL

- bce_iou: the mask is resized (bilinear, align_corners=False) to the logits' size; BCE with logits
  (mean) plus the IoU loss 1 - (I + 1) / (U - I + 1) per image, averaged over the batch.
- AGL (attention-guided loss): every map m is resized (bilinear) to the g x g grafting grid (g = 28) and
  turned into its affinity G(m) = f f^T with f = flatten(m), a (B, 1, g^2, g^2) matrix. The target is
  G(mask); the per-element weight is 1 + 0.5 * (|G(mask) - G(sigmoid(wr))| + |G(mask) - G(sigmoid(ws))|)
  with wr, ws detached (hard pairs are where the side predictions are wrong); the loss is BCE with
  logits between the grafting attention logits and G(mask), weighted, mean over all elements.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F


def _as_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, H, W) or (B, 1, H, W) in 0..1 -> float (B, 1, H, W)."""
    if mask.ndim == 3:
        mask = mask[:, None]
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be (B, H, W) or (B, 1, H, W), got {tuple(mask.shape)}")
    return mask.float()


def bce_iou_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BCE + IoU loss on logits; the mask is resized to the logits (as the official code does)."""
    mask = _as_mask(mask)
    if mask.shape[-2:] != logits.shape[-2:]:
        mask = F.interpolate(mask, size=logits.shape[-2:], mode="bilinear", align_corners=False)
    bce = F.binary_cross_entropy_with_logits(logits, mask)
    p = torch.sigmoid(logits)
    inter = (p * mask).sum(dim=(2, 3))
    union = (p + mask).sum(dim=(2, 3))
    iou = 1 - (inter + 1) / (union - inter + 1)
    return (bce + iou).mean()


def affinity(m: torch.Tensor, grid: int = 28) -> torch.Tensor:
    """G(m) = f f^T with f the map resized to grid x grid and flattened: (B, 1, grid^2, grid^2)."""
    m = F.interpolate(m, size=(grid, grid), mode="bilinear", align_corners=False)
    f = m.reshape(m.shape[0], -1, 1)
    return (f @ f.transpose(-2, -1)).unsqueeze(1)


def attention_guided_loss(attn_logits: torch.Tensor, mask: torch.Tensor, wr: torch.Tensor, ws: torch.Tensor
                          ) -> torch.Tensor:
    """Weighted BCE between the grafting attention logits and the mask's affinity (see module doc)."""
    n = attn_logits.shape[-1]
    grid = int(round(n ** 0.5))
    if grid * grid != n:
        raise ValueError(f"attention map side {n} is not a square grid")
    g = affinity(_as_mask(mask), grid)
    gr = affinity(torch.sigmoid(wr.detach().float()), grid)
    gs = affinity(torch.sigmoid(ws.detach().float()), grid)
    weight = ((g - gr).abs() + (g - gs).abs()) * 0.5 + 1
    return F.binary_cross_entropy_with_logits(attn_logits.float(), g, weight=weight, reduction="mean")


def pgnet_loss(outputs: Sequence[torch.Tensor] | Mapping[str, torch.Tensor], mask: torch.Tensor
               ) -> dict[str, torch.Tensor]:
    """Total PGNet loss and its terms.

    outputs: the training forward's (pred, wr, ws, attn) (a PGNetOutput, tuple, or a dict with those keys);
    mask: (B, 1, H, W) or (B, H, W) saliency in 0..1 at any size (each term resizes it).
    Returns loss = loss_pred + loss_side + loss_agl (loss_side already carries the 0.125 weights).
    """
    if isinstance(outputs, torch.Tensor):
        raise ValueError("pgnet_loss got a single tensor (the eval output); it needs the 4 training outputs "
                         "(pred, wr, ws, attn): call the model in train mode or with return_aux=True")
    if isinstance(outputs, Mapping):
        pred, wr, ws, attn = (outputs[k] for k in ("pred", "wr", "ws", "attn"))
    else:
        if len(outputs) != 4:
            raise ValueError("pgnet_loss needs the 4 training outputs (pred, wr, ws, attn); "
                             "call the model in train mode or with return_aux=True")
        pred, wr, ws, attn = outputs
    mask = _as_mask(mask)
    l_pred = bce_iou_loss(pred.float(), mask)
    l_side = 0.125 * bce_iou_loss(wr.float(), mask) + 0.125 * bce_iou_loss(ws.float(), mask)
    l_agl = attention_guided_loss(attn, mask, wr, ws)
    return {"loss": l_pred + l_side + l_agl, "loss_pred": l_pred, "loss_side": l_side, "loss_agl": l_agl}


__all__ = ["pgnet_loss", "bce_iou_loss", "attention_guided_loss", "affinity"]
