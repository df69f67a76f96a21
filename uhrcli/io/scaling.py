"""Bring any pixel type to the 0..255 range a model's normalisation expects.

uint8 passes through. Other integer types scale by their full range (uint16:
x/257; `range`, and `auto` here), reals are taken as 0..1 reflectance. (`uhr segment --stretch auto`
decides in uhrcli.io.radiometry: the checkpoint's recorded scaling, else a percentile stretch for
integers wider than 8 bits.) Sensors rarely use their whole
range, so `percentile` stretches each band between low/high percentiles of a
spread sample of the image; the same numbers are used for every tile, so the
stretch never varies across seams.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError


@dataclass(frozen=True)
class Scaler:
    offset: np.ndarray  # (bands,) subtracted first
    scale: np.ndarray  # (bands,) then multiplied, giving 0..255

    def __call__(self, data: np.ndarray) -> np.ndarray:
        x = data.astype(np.float32, copy=False)
        if np.all(self.offset == 0) and np.all(self.scale == 1):
            return np.clip(x, 0, 255) if data.dtype != np.uint8 else x
        x = (x - self.offset[:, None, None]) * self.scale[:, None, None]
        return np.clip(x, 0.0, 255.0)

    @classmethod
    def from_description(cls, text: str, bands: int) -> "Scaler":
        """The scaler describe() wrote: 'none' or 'linear [lo, hi], ...' (one pair per band)."""
        text = text.strip()
        if text == "none":
            return cls(np.zeros(bands, np.float32), np.ones(bands, np.float32))
        pairs = re.findall(r"\[([^,\]]+),\s*([^\]]+)\]", text)
        if not text.startswith("linear") or len(pairs) != bands:
            raise UsageError(f"cannot apply the scaling {text!r} to {bands} band(s)")
        lo = np.array([float(a) for a, _ in pairs], np.float32)
        hi = np.array([float(b) for _, b in pairs], np.float32)
        return cls(lo, (255.0 / np.maximum(hi - lo, 1e-12)).astype(np.float32))

    def describe(self) -> str:
        if np.all(self.offset == 0) and np.all(self.scale == 1):
            return "none"
        return "linear " + ", ".join(f"[{o:g}, {o + 255 / s:g}]" for o, s in zip(self.offset, self.scale))


def parse_stretch(text: str | None) -> tuple[str, tuple[float, float]]:
    """'auto' | 'none' | 'range' | 'percentile' | 'percentile:2,98' | 'minmax'."""
    text = (text or "auto").strip().lower()
    if text.startswith("percentile"):
        lo, hi = 2.0, 98.0
        if ":" in text:
            try:
                lo, hi = (float(v) for v in text.split(":", 1)[1].split(","))
            except ValueError:
                raise UsageError(f"--stretch {text!r}: expected percentile:LOW,HIGH, e.g. percentile:2,98") from None
        if not 0 <= lo < hi <= 100:
            raise UsageError(f"--stretch {text!r}: need 0 <= LOW < HIGH <= 100")
        return "percentile", (lo, hi)
    if text in ("auto", "none", "minmax", "range"):
        return text, (0.0, 100.0)
    raise UsageError(f"--stretch must be auto, none, range, minmax or percentile[:LOW,HIGH], got {text!r}")


def make_scaler(reader, stretch: str | None = "auto") -> Scaler:
    mode, (lo, hi) = parse_stretch(stretch)
    mode = "auto" if mode == "range" else mode  # here auto is the type's range
    n = reader.count
    dt = np.dtype(reader.dtype)
    ones, zeros = np.ones(n, np.float32), np.zeros(n, np.float32)
    if mode == "none" or (mode == "auto" and dt == np.uint8):
        return Scaler(zeros, ones)
    if mode == "auto":
        if dt.kind == "b":
            return Scaler(zeros, np.full(n, 255.0, np.float32))
        if dt.kind in "ui":
            info = np.iinfo(dt)
            lo_v = 0.0 if dt.kind == "u" else float(info.min)
            return Scaler(np.full(n, lo_v, np.float32), np.full(n, 255.0 / (float(info.max) - lo_v), np.float32))
        return Scaler(zeros, np.full(n, 255.0, np.float32))  # reals: 0..1
    sample = reader.sample().astype(np.float64)
    if sample.size == 0:
        return Scaler(zeros, ones)
    if mode == "minmax":
        lo_v, hi_v = np.nanmin(sample, axis=1), np.nanmax(sample, axis=1)
    else:
        lo_v, hi_v = np.nanpercentile(sample, lo, axis=1), np.nanpercentile(sample, hi, axis=1)
    span = np.maximum(hi_v - lo_v, 1e-12)
    return Scaler(lo_v.astype(np.float32), (255.0 / span).astype(np.float32))


def normalise(x255: np.ndarray, mean, std) -> np.ndarray:
    """(bands, h, w) in 0..255 -> model input, with the model's mean/std."""
    m = np.asarray(mean, np.float32)[:, None, None]
    s = np.asarray(std, np.float32)[:, None, None]
    return (x255 - m) / s
