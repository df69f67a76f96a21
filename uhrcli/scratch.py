"""The scratch store: a zarr group beside the output that makes runs resumable.

It holds the merged result, tile completion and (for blending) per-tile-row
accumulators. A fingerprint of input, model and settings guards --resume
against continuing with something different.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .errors import OutputError, UsageError

SCRATCH_SUFFIX = ".uhr-partial"


def scratch_path(target: Path) -> Path:
    return target.with_name(f".{target.name}{SCRATCH_SUFFIX}")


def file_identity(path: Path) -> dict[str, Any]:
    st = path.stat() if path.exists() else None
    return {"path": str(path.resolve()), "size": st.st_size if st else None, "mtime_ns": st.st_mtime_ns if st else None}


def weights_digest(weights: str | os.PathLike | None) -> str:
    if weights is None or str(weights) == "random":
        return "random"
    p = Path(weights)
    if p.is_dir():
        return json.dumps(file_identity(p))
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Scratch:
    """Arrays: classes (H,W) u8, probs (K,H,W) u8 optional, valid (H,W) u8 optional, done (rows,cols) u8."""

    def __init__(self, path: Path, group: zarr.Group):
        self.path = path
        self.group = group
        self.classes = group["classes"]
        self.done = group["done"]
        self.probs = group["probs"] if "probs" in group else None
        self.valid = group["valid"] if "valid" in group else None

    @classmethod
    def create(cls, path: Path, fingerprint: dict[str, Any], height: int, width: int, num_classes: int,
               chunk: tuple[int, int], grid_shape: tuple[int, int], probs: bool, masked: bool) -> "Scratch":
        if path.exists():
            shutil.rmtree(path)
        try:
            g = zarr.open_group(str(path), mode="w", zarr_format=3)
        except OSError as exc:
            raise OutputError(f"cannot create scratch store {path}: {exc.strerror or exc}") from None
        ch = (min(chunk[0], height), min(chunk[1], width))
        g.create_array("classes", shape=(height, width), chunks=ch, dtype="uint8", fill_value=255)
        if probs:
            g.create_array("probs", shape=(num_classes, height, width), chunks=(1,) + ch, dtype="uint8", fill_value=0)
        if masked:
            g.create_array("valid", shape=(height, width), chunks=ch, dtype="uint8", fill_value=1)
        g.create_array("done", shape=grid_shape, chunks=(1, grid_shape[1]), dtype="uint8", fill_value=0)
        g.attrs.update({"fingerprint": fingerprint, "finalized_rows": 0})
        return cls(path, g)

    @classmethod
    def resume(cls, path: Path, fingerprint: dict[str, Any]) -> "Scratch":
        try:
            g = zarr.open_group(str(path), mode="r+")
            stored = g.attrs["fingerprint"]
        except Exception:  # noqa: BLE001 - any damage means it cannot be trusted
            raise UsageError(f"cannot resume: scratch store {path} is damaged; run with --overwrite to start again") from None
        if stored != fingerprint:
            diff = sorted(k for k in set(stored) | set(fingerprint) if stored.get(k) != fingerprint.get(k))
            raise UsageError(f"cannot resume: the interrupted run used different {', '.join(diff)}; "
                             "repeat its exact settings or use --overwrite to start again")
        return cls(path, g)

    @property
    def finalized_rows(self) -> int:
        return int(self.group.attrs.get("finalized_rows", 0))

    @finalized_rows.setter
    def finalized_rows(self, value: int) -> None:
        self.group.attrs["finalized_rows"] = int(value)

    def done_tiles(self) -> np.ndarray:
        return np.asarray(self.done[:]).astype(bool)

    def mark_done(self, r: int, c: int) -> None:
        self.done[r, c] = 1

    # -- blending accumulators, one per tile row -------------------------------------------------
    def accumulator(self, r: int, shape: tuple[int, int, int], chunk_w: int, create: bool) -> zarr.Array:
        name = f"acc_{r}"
        if create:
            if name in self.group:
                del self.group[name]
            return self.group.create_array(name, shape=shape, chunks=(shape[0], shape[1], min(chunk_w, shape[2])),
                                           dtype="float32", fill_value=0.0)
        return self.group[name]

    def has_accumulator(self, r: int) -> bool:
        return f"acc_{r}" in self.group

    def drop_accumulator(self, r: int) -> None:
        name = f"acc_{r}"
        if name in self.group:
            del self.group[name]

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class MemoryScratch:
    """The same arrays as Scratch, in memory: for rasters whose map is wanted as an array (validation, tests)."""

    def __init__(self, height: int, width: int, num_classes: int, grid_shape: tuple[int, int], probs: bool,
                 masked: bool):
        self.classes = np.full((height, width), 255, np.uint8)
        self.probs = np.zeros((num_classes, height, width), np.uint8) if probs else None
        self.valid = np.ones((height, width), np.uint8) if masked else None
        self.done = np.zeros(grid_shape, np.uint8)
        self.finalized_rows = 0
        self.attrs: dict[str, Any] = {}
        self._acc: dict[int, np.ndarray] = {}

    def done_tiles(self) -> np.ndarray:
        return self.done.astype(bool)

    def mark_done(self, r: int, c: int) -> None:
        self.done[r, c] = 1

    def accumulator(self, r: int, shape: tuple[int, int, int], chunk_w: int, create: bool) -> np.ndarray:
        if create:
            self._acc[r] = np.zeros(shape, np.float32)
        return self._acc[r]

    def has_accumulator(self, r: int) -> bool:
        return r in self._acc

    def drop_accumulator(self, r: int) -> None:
        self._acc.pop(r, None)

    def remove(self) -> None:
        self._acc.clear()
