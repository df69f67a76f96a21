"""ISDNet training losses, as the official (mmseg 0.16) code defines them.

Cross-entropy follows mmseg 0.16: logits are resized bilinearly
(align_corners=False) to the label size, per-pixel CE with ignore_index 255,
then the mean over ALL pixels (ignored pixels count as zero loss; mmseg added
`avg_non_ignore` only later).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .layers import resize

IGNORE_INDEX = 255

# official weights: ASPP CE, final CE, the two RAF aux CEs, reconstruction MSE, feature affinity L1, FCN aux CE
LOSS_WEIGHTS: dict[str, float] = {
    "loss_aspp": 1.0,
    "loss_seg": 1.0,
    "loss_aux16": 1.0,
    "loss_aux8": 1.0,
    "loss_recon": 0.1,
    "loss_fa": 1.0,
    "loss_fcn_aux": 0.4,
}


def seg_ce(logits: torch.Tensor, target: torch.Tensor, weight: float = 1.0,
           ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """mmseg 0.16 CrossEntropyLoss on logits resized to the (B, H, W) long label."""
    logits = resize(logits, target.shape[-2:])
    loss = F.cross_entropy(logits.float(), target.long(), ignore_index=ignore_index, reduction="none")
    return loss.mean() * weight


def recon_loss(sr_out: torch.Tensor, residual_sum: torch.Tensor, weight: float = 0.1) -> torch.Tensor:
    """MSE between the SR decoder output (resized) and h1 + h2 (the Laplacian residual sum, not RGB)."""
    sr_out = resize(sr_out, residual_sum.shape[-2:])
    return F.mse_loss(sr_out.float(), residual_sum.float()) * weight


def _affinity(feat: torch.Tensor, eps: float) -> torch.Tensor:
    f = feat.float().flatten(2)  # B x C x HW
    f = f / (f.norm(p=2, dim=2, keepdim=True) + eps)  # unit norm over the spatial dimension, per channel
    return f.transpose(1, 2) @ f  # B x HW x HW


def feature_affinity_loss(seg_feat: torch.Tensor, sr_feat: torch.Tensor, weight: float = 1.0,
                          eps: float = 1e-6) -> torch.Tensor:
    """L1 between the spatial similarity matrices of deep_feat and the (detached) SR features.

    The SR side is the teacher: its matrix is detached so that this term only
    shapes deep_feat (structure distillation). Memory grows as (h*w)^2 of the
    deep map: 1224 crops give 38x38 -> 1444^2 entries per image.
    """
    sr_feat = resize(sr_feat, seg_feat.shape[-2:])
    return F.l1_loss(_affinity(seg_feat, eps), _affinity(sr_feat, eps).detach()) * weight
