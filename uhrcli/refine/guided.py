"""The guided filter (He, Sun & Tang, TPAMI 2013) as a training-free refiner of class probabilities.

Each class's probability map p is fitted, in every (2r+1)^2 window, by a linear function of the guide image
I (q = a . I + b, ridge-regularised by eps), and the coefficients are averaged over the windows that cover a
pixel. Edges of the image thus become edges of the probabilities: ISDNet's paper lists it (as DGF, the deep
guided filter of Wu et al. 2018, here without learned layers) among the UHR refiners it compares against.

Tiled exactly. The output at a pixel depends on the input within 2r of it (two box filters of radius r), so
tiles read with a halo of `reach(r)` give the whole-image result. Bit for bit, not just nearly: the guide and
the probabilities are uint8, so the first box sums are integer sums, and the coefficients a, b are rounded to
fixed point (2^-24, far below the 1/255 of the output) before the second box filter, which is then an integer
sum too. Integer cumulative sums do not depend on where a tile starts; floating-point ones would.
"""
from __future__ import annotations

import numpy as np

FIXED_BITS = 24  # fixed-point fraction of the coefficients a, b before their box filter
DEFAULT_RADIUS = 4
DEFAULT_EPS = 1e-3  # on guide and probabilities scaled to 0..1


def reach(radius: int) -> int:
    """How far (pixels) an output pixel looks: the halo a tile needs for the exact whole-image result."""
    return 2 * radius


def box_sum(x: np.ndarray, r: int) -> np.ndarray:
    """Sums of int64 x (..., H, W) over (2r+1)^2 windows clipped to the array (zeros outside), exactly."""
    h, w = x.shape[-2:]
    k = 2 * r + 1
    c = np.zeros(x.shape[:-2] + (h + k, w + k), np.int64)  # summed-area table, in place (no padded copy)
    c[..., r + 1:r + 1 + h, r + 1:r + 1 + w] = x
    np.cumsum(c, -2, out=c)
    np.cumsum(c, -1, out=c)
    out = c[..., k:k + h, k:k + w] - c[..., 0:h, k:k + w]
    out -= c[..., k:k + h, 0:w]
    out += c[..., 0:h, 0:w]
    return out


def _window_counts(h: int, w: int, r: int) -> np.ndarray:
    """Pixels of the array inside each pixel's window (fewer near the edges), as int64 (H, W)."""
    rows = np.minimum(np.arange(h) + r, h - 1) - np.maximum(np.arange(h) - r, 0) + 1
    cols = np.minimum(np.arange(w) + r, w - 1) - np.maximum(np.arange(w) - r, 0) + 1
    return rows[:, None].astype(np.int64) * cols[None, :]


def _solve(sigma: dict[tuple[int, int], np.ndarray], cov: np.ndarray, eps: float) -> np.ndarray:
    """(Sigma + eps I)^-1 cov per pixel for a 1- or 3-channel guide, in closed form (elementwise, so every
    pixel's result is the same wherever its tile starts). cov (C, K, H, W) -> a (C, K, H, W)."""
    c = cov.shape[0]
    if c == 1:
        return cov / (sigma[0, 0] + eps)[None, None]
    s00, s01, s02 = sigma[0, 0] + eps, sigma[0, 1], sigma[0, 2]
    s11, s12, s22 = sigma[1, 1] + eps, sigma[1, 2], sigma[2, 2] + eps
    i00 = s11 * s22 - s12 * s12
    i01 = s02 * s12 - s01 * s22
    i02 = s01 * s12 - s02 * s11
    i11 = s00 * s22 - s02 * s02
    i12 = s01 * s02 - s00 * s12
    i22 = s00 * s11 - s01 * s01
    det = s00 * i00 + s01 * i01 + s02 * i02
    inv = ((i00, i01, i02), (i01, i11, i12), (i02, i12, i22))
    a = np.empty_like(cov)
    for i in range(3):
        a[i] = (inv[i][0][None] * cov[0] + inv[i][1][None] * cov[1] + inv[i][2][None] * cov[2]) / det[None]
    return a


def guided_filter(guide: np.ndarray, probs: np.ndarray, radius: int = DEFAULT_RADIUS,
                  eps: float = DEFAULT_EPS) -> np.ndarray:
    """Filter uint8 probabilities (K, H, W) (x/255) with a uint8 guide (1 or 3, H, W); float32 (K, H, W) in
    0..1 units (may stray a little outside 0..1: the local linear model is not clipped)."""
    if guide.dtype != np.uint8 or probs.dtype != np.uint8:
        raise TypeError("guided_filter takes uint8 guide and probabilities")
    if guide.shape[-2:] != probs.shape[-2:]:
        raise ValueError(f"guide {guide.shape[-2:]} and probabilities {probs.shape[-2:]} differ in size")
    if guide.shape[0] not in (1, 3):
        raise ValueError(f"the guide has 1 or 3 bands, got {guide.shape[0]}")
    if radius < 1 or eps <= 0:
        raise ValueError("radius must be >= 1 and eps > 0")
    c, k = guide.shape[0], probs.shape[0]
    h, w = probs.shape[-2:]
    g = guide.astype(np.int64)
    p = probs.astype(np.int64)
    n = _window_counts(h, w, radius)
    nf = n.astype(np.float64)
    s_i = box_sum(g, radius)  # (C, H, W)
    s_p = box_sum(p, radius)  # (K, H, W)
    norm = 255.0 * 255.0 * nf * nf  # exact integer numerators over this: N*sum(xy) - sum(x)sum(y)
    sigma = {}
    for i in range(c):
        for j in range(i, c):
            sigma[i, j] = (n * box_sum(g[i] * g[j], radius) - s_i[i] * s_i[j]) / norm
    cov = np.empty((c, k, h, w), np.float64)
    for i in range(c):
        cov[i] = (n * box_sum(g[i][None] * p, radius) - s_i[i][None] * s_p) / norm
    a = _solve(sigma, cov, eps)  # (C, K, H, W)
    mean_i = s_i / (255.0 * nf)
    b = s_p / (255.0 * nf)
    for i in range(c):  # term by term in a fixed order (a reduction could sum in a shape-dependent order)
        b -= a[i] * mean_i[i][None]
    scale = float(1 << FIXED_BITS)
    a_sum = box_sum(np.rint(a * scale).astype(np.int64), radius)
    b_sum = box_sum(np.rint(b * scale).astype(np.int64), radius)
    denom = nf * scale
    q = b_sum / denom
    for i in range(c):
        q += (a_sum[i] / denom) * (g[i] / 255.0)
    return q.astype(np.float32)


def to_guide(pixels: np.ndarray, bands: int | None = None) -> np.ndarray:
    """uint8 (C, H, W) image pixels as a guide: 3 bands stay a colour guide, others become their mean (grey)."""
    if pixels.shape[0] == 3 and bands != 1:
        return pixels
    return np.rint(pixels.astype(np.float32).mean(0, keepdims=True)).astype(np.uint8)
