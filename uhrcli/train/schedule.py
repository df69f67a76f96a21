"""Learning-rate schedule as a pure function of the step, so a resumed run continues it exactly."""
from __future__ import annotations


def poly_lr(step: int, total_steps: int, base_lr: float, power: float = 0.9, min_lr: float = 1e-4,
            warmup_steps: int = 0, warmup_ratio: float = 0.1) -> float:
    """mmseg's poly policy: (base - min) * (1 - step/total)^power + min, after a linear warm-up.

    step is 0-based (the LR used for the step-th update). min_lr is capped at
    base_lr so that a small --lr is never raised by the floor.
    """
    min_lr = min(min_lr, base_lr)
    total = max(1, int(total_steps))
    s = min(max(0, int(step)), total)
    lr = (base_lr - min_lr) * (1.0 - s / total) ** power + min_lr
    if warmup_steps > 0 and s < warmup_steps:
        k = (1.0 - s / warmup_steps) * (1.0 - warmup_ratio)
        lr = lr * (1.0 - k)
    return lr
