"""What an inferer keeps between passes, in RAM and on disk, before running it (for `uhr info`)."""
from __future__ import annotations

from typing import Any

from ..featcache import CacheBudget
from ..geometry import halvings

# bytes per full-resolution pixel of what waits between passes, in fp32 (tile 2048, margins included):
# s8 and s16 after pass A, s8 and c8 after pass B
BIPATH_TILE_BYTES_PER_PIXEL = 11.0


def geometry(kind: str, info: Any) -> tuple[int, int]:
    """(halo, multiple) of a model's tiles, as its inferer sets them."""
    if kind == "deep":
        return 0, 1
    if kind == "bipath":
        return int(info.receptive_field), max(16, int(info.size_multiple))
    return int(info.receptive_field), max(1, int(info.size_multiple))


def estimate_cache_bytes(kind: str, info: Any, height: int, width: int, budget: CacheBudget,
                         bands: int = 3) -> tuple[dict[str, int], dict[str, int]]:
    from .deep import DEEP_WHOLE_MAX as deep_whole_max

    """({part: RAM bytes}, {part: disk bytes}) that the passes keep, given the cache budgets."""
    ram: dict[str, int] = {}
    disk: dict[str, int] = {}
    if kind not in ("deep", "bipath"):
        return ram, disk
    left = budget.ram

    def place(name: str, nbytes: int) -> None:
        nonlocal left
        if nbytes <= left:
            ram[name] = nbytes
            left -= nbytes
        else:
            disk[name] = nbytes

    r = int(info.extra.get("down_ratio", 1))
    hv, wv = height // r, width // r
    if r > 1:
        place(f"deep view (1/{r})", bands * hv * wv)
    cells = halvings(hv, 3) * halvings(wv, 3)
    if hv * wv > deep_whole_max:  # a tiled deep pass keeps the backbone's map until the head has run
        place("deep backbone map (c4)", int(info.extra.get("deep_channels", 512)) * 4 * cells)
    place("deep features", 128 * 4 * cells)
    if kind == "bipath":
        place("deep context (fuse16)", 128 * 4 * cells)
        tiles = int(BIPATH_TILE_BYTES_PER_PIXEL * height * width)
        in_ram = min(tiles, max(0, left))
        if in_ram:
            ram["tile features between passes"] = in_ram
        if tiles > in_ram:
            disk["tile features between passes"] = min(tiles - in_ram, budget.disk)
    else:
        place("deep logits", int(info.num_classes) * 4 * cells)
    return ram, disk
