"""Sizes as people write them on a command line."""
from __future__ import annotations

import re

from .errors import UsageError

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str | int | None, what: str = "size") -> int | None:
    """'512M', '2G', '1.5g', '0' or a byte count -> bytes; None or 'auto' -> None (the default)."""
    if text is None or isinstance(text, int):
        return text
    t = str(text).strip().lower()
    if t in ("", "auto"):
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", t)
    if not m:
        raise UsageError(f"{what} must be a size like 512M, 2G or 0, got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2)])
