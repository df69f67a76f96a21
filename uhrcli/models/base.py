"""What a model declares to the engine.

The engine never inspects layers: tiling, halos, normalisation and output
encoding are all derived from this record, so any registered network can be
streamed over a raster without the engine knowing its architecture.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelInfo:
    """Static facts about a registered network.

    mean/std are on the 0..255 scale of an 8-bit RGB image.
    receptive_field is the context (full-resolution pixels, each side) an
    output pixel depends on; a halo of at least this size makes tiled output
    equal to the whole-image forward for a fully convolutional model.
    size_multiple: input tiles must be a multiple of this (total stride), and
    tile offsets too, so that strided layers see the same phase in every tile.
    """

    name: str
    task: str = "segment"  # "segment" or "saliency"
    num_classes: int = 2
    class_names: tuple[str, ...] = ()
    palette: tuple[tuple[int, int, int], ...] = ()
    mean: tuple[float, ...] = (123.675, 116.28, 103.53)
    std: tuple[float, ...] = (58.395, 57.12, 57.375)
    in_channels: int = 3
    receptive_field: int = 0
    size_multiple: int = 1
    two_scale: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["class_names"] = list(self.class_names)
        d["palette"] = [list(p) for p in self.palette]
        return d

    def with_classes(self, class_names: list[str] | tuple[str, ...], palette=None) -> "ModelInfo":
        names = tuple(class_names)
        pal = tuple(tuple(int(c) for c in p) for p in (palette or default_palette(len(names))))
        return ModelInfo(**{**asdict(self), "num_classes": len(names), "class_names": names, "palette": pal})


def default_class_names(n: int) -> tuple[str, ...]:
    if n == 2:
        return ("background", "foreground")
    return tuple(f"class_{i}" for i in range(n))


def default_palette(n: int) -> tuple[tuple[int, int, int], ...]:
    """A fixed, distinguishable palette (black first, then saturated hues)."""
    base = [
        (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200),
        (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60),
        (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200),
        (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128),
    ]
    out = []
    for i in range(n):
        if i < len(base):
            out.append(base[i])
        else:  # deterministic spread for large class counts
            out.append(((i * 67) % 256, (i * 151) % 256, (i * 199) % 256))
    return tuple(out)
