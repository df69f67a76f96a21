"""Turning stored masks into class ids: one decoder shared by training and evaluation.

Masks arrive as class indices (0..K-1, sometimes with 255 = ignore), as 0/255
binary images (Inria, saliency sets), or colour-coded (DeepGlobe). Both the
trainer and `uhr eval` must read a mask the same way, or the scores of a model
would not measure what it was trained on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

IGNORE = 255

DEEPGLOBE_CLASSES = ("unknown", "urban", "agriculture", "rangeland", "forest", "water", "barren")
DEEPGLOBE_COLOURS = ((0, 0, 0), (0, 255, 255), (255, 255, 0), (255, 0, 255), (0, 255, 0), (0, 0, 255), (255, 255, 255))
# DeepGlobe masks are thresholded at 128 per channel (the colours are not exact after resampling):
# the 3-bit code r*4 + g*2 + b indexes this table; red (4) is not a DeepGlobe colour and means unknown.
_DEEPGLOBE_CODE = np.array([0, 5, 4, 1, 0, 3, 2, 6], np.uint8)


@dataclass
class LabelDecoder:
    """Raw mask block -> (h, w) uint8 class ids with 255 = ignore (or float 0..1 for saliency).

    kind: 'index' (values are class ids), 'deepglobe' (RGB colour code) or 'saliency'.
    ignore_values: raw values that become 255 (an explicit --ignore-index, the mask's nodata).
    foreground_255: a two-class mask stored as 0/255: 255 becomes class 1.
    """

    num_classes: int
    kind: str = "index"
    ignore_values: tuple[int, ...] = ()
    foreground_255: bool = False
    saliency_scale: float = 255.0
    notes: list[str] = field(default_factory=list)

    @property
    def bands(self) -> list[int]:
        return [1, 2, 3] if self.kind == "deepglobe" else [1]

    def __call__(self, raw: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """raw: (bands, h, w); valid: (h, w) bool from the mask's nodata, False pixels become ignore."""
        if self.kind == "saliency":
            out = np.clip(raw[0].astype(np.float32) / self.saliency_scale, 0.0, 1.0)
            return out
        if self.kind == "deepglobe":
            if raw.shape[0] < 3:
                raise ValueError("a DeepGlobe mask needs 3 (RGB) bands")
            code = ((raw[0] >= 128).astype(np.uint8) << 2) | ((raw[1] >= 128).astype(np.uint8) << 1) | (raw[2] >= 128)
            out = _DEEPGLOBE_CODE[code]
        else:
            a = raw[0]
            if a.dtype == np.uint8:
                lut = self.lut()
                out = lut[a]
            else:
                v = a.astype(np.int64)
                out = np.where((v >= 0) & (v < 255), v, IGNORE)
                out = np.where(v > 255, 254, out)  # out of range: kept as an invalid id for the checks
                for iv in self.ignore_values:
                    out = np.where(v == iv, IGNORE, out)
                if self.foreground_255:
                    out = np.where(v == 255, 1, out)
                out = out.astype(np.uint8)
        if valid is not None:
            out = np.where(valid, out, IGNORE).astype(np.uint8)
        return out

    def lut(self) -> np.ndarray:
        """256-entry map for uint8 masks (the common case): one gather per block."""
        lut = np.arange(256, dtype=np.uint8)
        for iv in self.ignore_values:
            if 0 <= iv < 256:
                lut[iv] = IGNORE
        if self.foreground_255 and IGNORE not in self.ignore_values:
            lut[255] = 1
        return lut

    def invalid_values(self, hist: Mapping[int, int]) -> list[int]:
        """Raw values of a mask histogram that are neither a class nor ignored."""
        if self.kind in ("saliency", "deepglobe"):
            return []
        ok = set(range(self.num_classes)) | set(self.ignore_values) | {IGNORE}
        return sorted(int(v) for v, n in hist.items() if n and int(v) not in ok)


def mask_histogram(reader, bands_kind: str = "index", rows: int = 1024) -> dict[int, int]:
    """Raw value counts of band 1, read in strips: masks can be gigapixel, memory stays bounded."""
    from rasterio.windows import Window

    counts: dict[int, int] = {}
    cols = max(1, min(reader.width, (1 << 24) // max(1, rows)))
    for r0 in range(0, reader.height, rows):
        h = min(rows, reader.height - r0)
        for c0 in range(0, reader.width, cols):
            w = min(cols, reader.width - c0)
            a = reader.read(Window(c0, r0, w, h))[0]
            if a.dtype == np.uint8:
                bc = np.bincount(a.reshape(-1), minlength=256)
                for v in np.nonzero(bc)[0]:
                    counts[int(v)] = counts.get(int(v), 0) + int(bc[v])
            else:
                vals, n = np.unique(a, return_counts=True)
                for v, c in zip(vals, n):
                    key = int(v) if float(v).is_integer() else -1  # -1: a fractional label value
                    counts[key] = counts.get(key, 0) + int(c)
    return counts


def binary_255_is_foreground(num_classes: int, hist: Mapping[int, int], explicit_ignore: bool) -> bool:
    """A two-class mask holding only 0 and 255 is a 0/255 mask (255 = class 1), unless 255 was named ignore."""
    if num_classes != 2 or explicit_ignore:
        return False
    used = {int(v) for v, n in hist.items() if n}
    return 255 in used and used <= {0, 255}
