"""Where features wait between the passes of a tiled inference: the device, host RAM, then disk.

Image-wide statistics force bi-path inference into several passes over the
tiles; what a later pass needs of a tile (a few fp16 maps, a few bytes per
pixel) waits here. Each tier has a byte budget the user sets; a tile beyond
all of them is simply not cached and its features are computed again. A full
disk is not an error: the disk tier closes and later tiles are recomputed.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable

import numpy as np
import torch


@dataclass
class CacheBudget:
    """Byte budgets of the three tiers, and the folder of the disk tier (None: the system's temp folder)."""

    device: int = 0
    ram: int = 256 << 20
    disk: int = 64 << 30
    dir: Path | None = None


class Tiers:
    """Running budgets plus a lazily created scratch folder; close() removes what was written."""

    def __init__(self, budget: CacheBudget, device: torch.device):
        self.device = device
        self.left = {"device": budget.device if device.type == "cuda" else 0, "ram": budget.ram,
                     "disk": budget.disk}
        self._dir_parent = budget.dir
        self._tmp: tempfile.TemporaryDirectory | None = None

    def take(self, tier: str, nbytes: int) -> bool:
        if nbytes <= self.left[tier]:
            self.left[tier] -= nbytes
            return True
        return False

    def give(self, tier: str, nbytes: int) -> None:
        self.left[tier] += nbytes

    def folder(self) -> Path:
        if self._tmp is None:
            if self._dir_parent is not None:
                Path(self._dir_parent).mkdir(parents=True, exist_ok=True)
            self._tmp = tempfile.TemporaryDirectory(prefix="uhr-cache-", dir=self._dir_parent)
        return Path(self._tmp.name)

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class FeatureStore:
    """A whole-image (C, h, w) map: a numpy array while the RAM budget allows, else a zarr array on disk."""

    def __init__(self, shape: tuple[int, int, int], dtype: str, tiers: Tiers):
        self.shape, self.dtype = tuple(int(v) for v in shape), np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self._tiers = tiers
        self.on_disk = not tiers.take("ram", self.nbytes)
        if self.on_disk:
            import zarr

            c, h, w = self.shape
            self._path = Path(tempfile.mkdtemp(prefix="store-", dir=tiers.folder()))
            self.data: Any = zarr.open_array(str(self._path), mode="w", shape=self.shape, dtype=self.dtype,
                                             chunks=(c, min(64, h), min(64, w)), fill_value=0)
        else:
            self.data = np.zeros(self.shape, self.dtype)

    def write(self, r: int, c: int, block: np.ndarray) -> None:
        self.data[:, r:r + block.shape[1], c:c + block.shape[2]] = block

    def read(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Rows [r0, r1) x cols [c0, c1), which must lie inside the map."""
        _, h, w = self.shape
        if r0 < 0 or c0 < 0 or r1 > h or c1 > w:
            raise ValueError(f"read [{r0}:{r1}, {c0}:{c1}] outside the map {h}x{w}")
        return np.asarray(self.data[:, r0:r1, c0:c1])

    def close(self) -> None:
        if self.on_disk:
            shutil.rmtree(self._path, ignore_errors=True)
        else:
            self._tiers.give("ram", self.nbytes)
        self.data = None


class TileCache:
    """Named tensors per tile key, each stored as `dtype` in the first tier with room.

    Values are rounded to `dtype` whether they are kept or not (`quantise`), so a tile computed again
    after a cache miss (or a resumed run) gives the same bytes as one read back from the cache. Names are
    added and dropped one by one: a later pass adds its map without rewriting what is already kept.
    """

    def __init__(self, tiers: Tiers, dtype: torch.dtype = torch.float16):
        self.tiers, self.dtype = tiers, dtype
        self._where: dict[Hashable, dict[str, tuple[str, Any, int]]] = {}
        self.counts = {"device": 0, "ram": 0, "disk": 0, "none": 0}

    def quantise(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.dtype).to(torch.float32)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._where

    def __len__(self) -> int:
        return len(self._where)

    def put(self, key: Hashable, tensors: dict[str, torch.Tensor]) -> bool:
        """Keep every tensor of `tensors` (already quantised) under key, all or none: False when they do not
        all fit, and then the key holds nothing (its tile will be computed again)."""
        entry = self._where.setdefault(key, {})
        for name, t in tensors.items():
            self._drop_one(entry, name)
            placed = self._place(key, name, t)
            if placed is None:
                self.pop(key)
                self.counts["none"] += 1
                return False
            entry[name] = placed
            self.counts[placed[0]] += 1
        return True

    def _place(self, key: Hashable, name: str, t: torch.Tensor) -> tuple[str, Any, int] | None:
        nbytes = t.numel() * torch.finfo(self.dtype).bits // 8
        for tier in ("device", "ram", "disk"):
            if not self.tiers.take(tier, nbytes):
                continue
            if tier == "device":
                return tier, t.to(self.tiers.device, self.dtype), nbytes
            if tier == "ram":
                return tier, t.detach().to("cpu", self.dtype), nbytes
            path = self._save(key, name, t)
            if path is not None:
                return tier, path, nbytes
            self.tiers.give(tier, nbytes)
        return None

    def _save(self, key: Hashable, name: str, t: torch.Tensor) -> Path | None:
        np_dtype = {torch.float16: np.float16, torch.float32: np.float32}[self.dtype]
        stem = "_".join(str(k) for k in (key if isinstance(key, tuple) else (key,)))
        path = self.tiers.folder() / f"{stem}_{name}.npy"
        try:
            np.save(path, t.detach().to("cpu", self.dtype).numpy().astype(np_dtype, copy=False))
        except OSError:  # a full disk: close the tier, this tile will be computed again
            path.unlink(missing_ok=True)
            self.tiers.left["disk"] = 0
            return None
        return path

    def get(self, key: Hashable) -> dict[str, torch.Tensor]:
        """The tile's tensors as float32 on the compute device."""
        dev = self.tiers.device
        out = {}
        for name, (tier, stored, _) in self._where[key].items():
            t = torch.from_numpy(np.load(stored)) if tier == "disk" else stored
            out[name] = t.to(dev, torch.float32)
        return out

    def drop(self, key: Hashable, *names: str) -> None:
        """Forget some of a tile's tensors (a pass that no longer needs them)."""
        entry = self._where.get(key)
        if entry is not None:
            for name in names:
                self._drop_one(entry, name)

    def _drop_one(self, entry: dict[str, tuple[str, Any, int]], name: str) -> None:
        item = entry.pop(name, None)
        if item is None:
            return
        tier, stored, nbytes = item
        if tier == "disk":
            Path(stored).unlink(missing_ok=True)
        self.tiers.give(tier, nbytes)

    def pop(self, key: Hashable) -> None:
        entry = self._where.pop(key, None)
        for name in list(entry or {}):
            self._drop_one(entry, name)

    def close(self) -> None:
        for key in list(self._where):
            self.pop(key)


__all__ = ["CacheBudget", "Tiers", "FeatureStore", "TileCache"]
