"""Augmentations on one crop: right-angle geometry on image and mask, photometric jitter on the image.

Rotations are multiples of 90 degrees (ISDNet draws any angle in [90, 270]):
right angles need no interpolation, so mask labels stay exact and no border
has to be invented. The photometric part follows mmseg's PhotoMetricDistortion
(brightness +-32, contrast and saturation x[0.5, 1.5], hue +-18 OpenCV units,
each with probability 0.5), with saturation and hue done in YIQ space, which is
cheaper than a round trip through HSV and close enough for augmentation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    hflip: float = 0.5
    vflip: float = 0.5
    rot90: float = 0.5
    photometric: bool = True


def geometric(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig
              ) -> tuple[np.ndarray, np.ndarray]:
    """x: (C, h, w), y: (h, w). The same flips/rotation for both."""
    if rng.random() < cfg.hflip:
        x, y = x[:, :, ::-1], y[:, ::-1]
    if rng.random() < cfg.vflip:
        x, y = x[:, ::-1, :], y[::-1, :]
    if rng.random() < cfg.rot90:
        k = int(rng.integers(1, 4))
        x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k, axes=(0, 1))
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)
_RGB = np.linalg.inv(_YIQ).astype(np.float32)


def photometric(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """x: (C, h, w) float32 on 0..255; colour steps only for 3-band images."""
    x = x.astype(np.float32, copy=True)
    if rng.random() < 0.5:
        x += float(rng.uniform(-32, 32))
        np.clip(x, 0, 255, out=x)
    contrast_first = rng.random() < 0.5

    def contrast(a: np.ndarray) -> np.ndarray:
        if rng.random() < 0.5:
            a *= float(rng.uniform(0.5, 1.5))
            np.clip(a, 0, 255, out=a)
        return a

    if contrast_first:
        x = contrast(x)
    if x.shape[0] == 3:
        sat = float(rng.uniform(0.5, 1.5)) if rng.random() < 0.5 else 1.0
        hue = float(rng.integers(-18, 19)) * 2.0 if rng.random() < 0.5 else 0.0  # degrees
        if sat != 1.0 or hue != 0.0:
            c, h, w = x.shape
            yiq = _YIQ @ x.reshape(3, -1)
            t = np.deg2rad(hue)
            rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]], np.float32) * sat
            yiq[1:] = rot @ yiq[1:]
            x = np.clip(_RGB @ yiq, 0, 255).reshape(c, h, w).astype(np.float32)
    if not contrast_first:
        x = contrast(x)
    return x
