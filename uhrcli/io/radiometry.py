"""Which pixel scaling a run uses: the one its checkpoint was trained with, else one that shows the data.

`uhr train` records how its images were scaled (`scaling_record`, in the checkpoint's metadata).
`uhr segment --stretch auto` reuses that record; without one, integer data wider than 8 bits (a
Landsat scene whose 98th percentile is near 8,500 of 65,535) are stretched per band between their
2nd and 98th percentiles, as GIS viewers show them, instead of reaching the model almost black.
The sample is a fixed grid of windows with nodata left out, so a resumed run gets the same numbers.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from .scaling import Scaler, make_scaler, parse_stretch

DEFAULT_WIDE = "percentile:2,98"
PER_IMAGE = ("percentile", "minmax")  # modes whose numbers come from each image's own pixels


def is_wide_integer(dtype: Any) -> bool:
    dt = np.dtype(dtype)
    return dt.kind in "ui" and dt.itemsize > 1


def scaling_record(readers: Iterable[Any], stretch: str | None) -> dict[str, Any]:
    """What `uhr train` stores: the stretch asked for and, for fixed scalings, each dtype's description."""
    mode, _ = parse_stretch(stretch)
    text = (stretch or "auto").strip().lower()
    record: dict[str, Any] = {"stretch": text, "dtypes": []}
    if mode in PER_IMAGE:
        record["per_image"] = True
    else:
        record["scalers"] = {}
    for r in readers:
        dt = np.dtype(r.dtype).name
        if dt not in record["dtypes"]:
            record["dtypes"].append(dt)
        if mode not in PER_IMAGE:
            record["scalers"].setdefault(f"{dt}x{r.count}", make_scaler(r, text).describe())
    return record


def choose_scaler(reader: Any, stretch: str | None, record: dict[str, Any] | None) -> tuple[Scaler, str | None]:
    """(scaler, one-line note or None). An explicit --stretch always wins; `auto` follows the record."""
    mode, _ = parse_stretch(stretch)
    if mode != "auto":
        return make_scaler(reader, stretch), None
    dt = np.dtype(reader.dtype).name
    name = getattr(reader, "path", None)
    name = name.name if name is not None else "input"
    mismatch = None
    if record:
        fixed = (record.get("scalers") or {}).get(f"{dt}x{reader.count}")
        if fixed is not None:
            scaler = Scaler.from_description(fixed, reader.count)
            return scaler, f"{name}: scaled as the checkpoint's training data ({scaler.describe()}; override with --stretch)"
        if record.get("per_image") and dt in record.get("dtypes", []):
            scaler = make_scaler(reader, record["stretch"])
            return scaler, (f"{name}: scaled as the checkpoint's training data, {record['stretch']} per image "
                            f"({scaler.describe()}; override with --stretch)")
        kinds = list(record.get("scalers") or {}) or record.get("dtypes", [])
        mismatch = f"the checkpoint was trained on {', '.join(kinds) or 'other'} data"
    if is_wide_integer(dt):
        scaler = make_scaler(reader, DEFAULT_WIDE)
        why = mismatch or "no scaling recorded in the checkpoint"
        return scaler, (f"{name}: {dt} data, {why}: each band stretched between its 2nd and 98th percentiles "
                        f"({scaler.describe()}); override with --stretch range|minmax|percentile:LOW,HIGH|none")
    note = f"{name}: {dt} data, {mismatch}: default scaling for {dt}" if mismatch else None
    return make_scaler(reader, "auto"), note
