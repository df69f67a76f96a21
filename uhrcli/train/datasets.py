"""Training data: folder layouts, up-front checks, and random crops read window by window.

A crop is read through uhrcli's readers as one window of the image and of its
mask, never the whole image: a 5000x5000 Inria tile costs the memory of a
512x512 crop. The crop for global sample index g depends only on (seed, g),
so a resumed run sees exactly the crops the uninterrupted run would have seen,
whatever the number of loader workers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from rasterio.windows import Window

from ..errors import InputError, MissingInputError, UsageError
from ..evaluate.files import match_key
from ..io.inputs import RASTER_SUFFIXES, stem_of
from ..evaluate.labels import (DEEPGLOBE_CLASSES, IGNORE, LabelDecoder, binary_255_is_foreground,
                               mask_histogram)
from ..io.readers import open_reader
from ..io.scaling import make_scaler, normalise
from .augment import AugmentConfig, geometric, photometric

IMAGE_DIRS = ("images", "image", "imgs", "img", "img_dir", "rgb", "sat", "jpegimages")
MASK_DIRS = ("masks", "mask", "labels", "label", "ann", "anns", "annotations", "ann_dir", "gt", "gts",
             "groundtruth", "segmentationclass", "seg")
LAYOUTS = ("auto", "pairs", "deepglobe", "inria", "saliency", "flat")


@dataclass(frozen=True)
class Sample:
    image: Path
    mask: Path


@dataclass
class DatasetSpec:
    """A discovered, checked dataset: what the crops and the validation read."""

    root: Path
    layout: str
    task: str
    samples: list[Sample]
    decoder: LabelDecoder
    class_names: list[str]
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (h, w) per sample
    bands: list[int] = field(default_factory=list)  # image band count per sample
    class_pixels: dict[int, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def pixels(self) -> int:
        return int(sum(h * w for h, w in self.sizes))


def _is_raster(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and (
        p.suffix.lower() in RASTER_SUFFIXES or p.name.lower().endswith(".ome.tif"))


def _rasters(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if _is_raster(p))


def _child(root: Path, names: Sequence[str]) -> Path | None:
    kids = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    for n in names:
        if n in kids:
            return kids[n]
    return None


def _pair_dirs(img_dir: Path, mask_dir: Path) -> list[Sample]:
    imgs, masks = _rasters(img_dir), _rasters(mask_dir)
    if not imgs:
        raise InputError(f"{img_dir}: no image files (expected GeoTIFF, PNG, JPEG, ...)")
    if not masks:
        raise InputError(f"{mask_dir}: no mask files")
    return _match(imgs, masks, img_dir, mask_dir)


def _match(imgs: list[Path], masks: list[Path], img_dir: Path, mask_dir: Path) -> list[Sample]:
    by_stem = {stem_of(m): m for m in masks}
    by_key: dict[str, Path] = {}
    for m in masks:
        by_key.setdefault(match_key(m), m)
    samples, used, lonely = [], set(), []
    for im in imgs:
        m = by_stem.get(stem_of(im))
        if m is None or m in used:
            m = by_key.get(match_key(im))
        if m is None or m in used:
            lonely.append(im.name)
            continue
        used.add(m)
        samples.append(Sample(im, m))
    orphan = [m.name for m in masks if m not in used]
    if lonely or orphan:
        parts = []
        if lonely:
            parts.append(f"{len(lonely)} image(s) in {img_dir} without a mask: {', '.join(lonely[:5])}"
                         + (", ..." if len(lonely) > 5 else ""))
        if orphan:
            parts.append(f"{len(orphan)} mask(s) in {mask_dir} without an image: {', '.join(orphan[:5])}"
                         + (", ..." if len(orphan) > 5 else ""))
        raise InputError("unmatched file stems: " + "; ".join(parts))
    return samples


def discover(root: str | Path, layout: str = "auto") -> tuple[str, list[Sample]]:
    """Find (image, mask) pairs; layout 'auto' tries DeepGlobe, Inria, saliency sets, then folder pairs."""
    root = Path(root)
    if layout not in LAYOUTS:
        raise UsageError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if not root.exists():
        raise MissingInputError(f"dataset folder not found: {root}")
    if not root.is_dir():
        raise UsageError(f"--data must be a folder, got a file: {root}")
    if not any(root.iterdir()):
        raise InputError(f"{root}: the dataset folder is empty")

    def deepglobe(d: Path) -> list[Sample] | None:
        sats = sorted(p for p in d.glob("*_sat.*") if _is_raster(p))
        if not sats:
            return None
        masks = sorted(p for p in d.glob("*_mask.*") if _is_raster(p))
        if not masks:
            raise InputError(f"{d}: DeepGlobe images (*_sat.jpg) but no *_mask.png masks")
        return _match(sats, masks, d, d)

    if layout in ("auto", "deepglobe"):
        for d in (root, root / "train"):
            if d.is_dir():
                found = deepglobe(d)
                if found is not None:
                    return "deepglobe", found
        if layout == "deepglobe":
            raise InputError(f"{root}: no DeepGlobe *_sat.jpg files")
    if layout in ("auto", "inria"):
        for d in (root, root / "train"):
            if (d / "images").is_dir() and (d / "gt").is_dir():
                return "inria", _pair_dirs(d / "images", d / "gt")
        if layout == "inria":
            raise InputError(f"{root}: the Inria layout needs images/ and gt/ folders")
    if layout in ("auto", "saliency"):
        kids = [p for p in root.iterdir() if p.is_dir()]
        for k in kids:
            low = k.name.lower()
            if low.endswith("-image") or low.endswith("_image"):
                twin = next((m for m in kids if m.name.lower() == low[:-5] + "mask"), None)
                if twin is not None:
                    return "saliency", _pair_dirs(k, twin)
        if layout == "saliency":
            img, msk = _child(root, IMAGE_DIRS), _child(root, MASK_DIRS)
            if img is None or msk is None:
                raise InputError(f"{root}: no saliency layout (X-Image/X-Mask, or images/ and masks/ folders)")
            return "saliency", _pair_dirs(img, msk)
    if layout in ("auto", "pairs"):
        img, msk = _child(root, IMAGE_DIRS), _child(root, MASK_DIRS)
        if img is not None and msk is not None:
            return "pairs", _pair_dirs(img, msk)
        if layout == "pairs":
            raise InputError(f"{root}: needs an image folder ({'/'.join(IMAGE_DIRS[:4])}) and a mask folder "
                             f"({'/'.join(MASK_DIRS[:5])})")
    files = _rasters(root)
    imgs = [p for p in files if p.suffix.lower() in (".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp")]
    masks = [p for p in files if p.suffix.lower() == ".png"]
    if imgs and masks:  # flat folder: photo.jpg next to photo.png (DAVIS, some saliency sets)
        return "flat", _match(imgs, masks, root, root)
    if not files and not any(p.is_dir() for p in root.iterdir()):
        raise InputError(f"{root}: the dataset folder is empty")
    raise InputError(f"{root}: no known dataset layout (images/+masks/, img/+ann/, images/+gt/ (Inria), "
                     f"*_sat.jpg+*_mask.png (DeepGlobe), X-Image/X-Mask (DUTS)); name it with --layout")


def build_spec(root: str | Path, *, layout: str = "auto", task: str | None = None,
               class_names: list[str] | None = None, ignore_index: int | None = None, in_channels: int | None = None,
               check: bool = True, on_file: Callable[[Path], Any] | None = None) -> DatasetSpec:
    """Discover and check a dataset before any training starts; every problem names its file."""
    found_layout, samples = discover(root, layout)
    if not samples:
        raise InputError(f"{root}: no image/mask pairs")
    if task is None:
        task = "saliency" if found_layout == "saliency" else "segment"
    notes: list[str] = []
    if task == "saliency":
        names = ["salient"]
        decoder = LabelDecoder(1, "saliency")
    elif found_layout == "deepglobe":
        names = class_names or list(DEEPGLOBE_CLASSES)
        if len(names) != 7:
            raise UsageError(f"DeepGlobe masks hold 7 classes, --classes gave {len(names)}")
        decoder = LabelDecoder(7, "deepglobe")
    else:
        if class_names is None:
            if found_layout in ("inria", "flat"):
                class_names = ["background", "building"] if found_layout == "inria" else ["background", "foreground"]
            else:
                raise UsageError("--classes is required for this layout (a number or a names.txt)")
        names = class_names
        decoder = LabelDecoder(len(names), "index", ignore_values=() if ignore_index is None else (int(ignore_index),))
    spec = DatasetSpec(Path(root), found_layout, task, samples, decoder, list(names), notes=notes)
    hists: list[dict[int, int]] = []
    for s in samples:
        img = open_reader(s.image, validate=check)
        try:
            try:
                mask = open_reader(s.mask, validate=check, expand_palette=decoder.kind == "deepglobe")
            except InputError as exc:
                raise InputError(f"mask {exc}") from None
            try:
                if (img.height, img.width) != (mask.height, mask.width):
                    raise InputError(f"{s.mask}: mask is {mask.width}x{mask.height} but its image {s.image.name} "
                                     f"is {img.width}x{img.height}")
                if in_channels is not None and img.count != in_channels:
                    raise InputError(f"{s.image}: {img.count} band(s), the model expects {in_channels}")
                if decoder.kind == "deepglobe" and mask.source_count < 3:
                    raise InputError(f"{s.mask}: a DeepGlobe mask must be RGB, this one has {mask.source_count} band(s)")
                if mask.meta.nodata is not None and decoder.kind == "index" and check:
                    nd = mask.meta.nodata
                    if float(nd).is_integer() and int(nd) not in decoder.ignore_values and int(nd) != IGNORE:
                        decoder.ignore_values = tuple(decoder.ignore_values) + (int(nd),)
                        notes.append(f"mask nodata {int(nd)} treated as ignore")
                spec.sizes.append((img.height, img.width))
                spec.bands.append(img.count)
                if check and decoder.kind != "deepglobe":
                    mask.select_bands([1])
                    hists.append(mask_histogram(mask))
            finally:
                mask.close()
        finally:
            img.close()
        if on_file is not None:
            on_file(s.image)
    if hists and decoder.kind == "index":
        total: dict[int, int] = {}
        for h in hists:
            for v, n in h.items():
                total[v] = total.get(v, 0) + n
        if binary_255_is_foreground(len(names), total, explicit_ignore=ignore_index == 255):
            decoder.foreground_255 = True
            notes.append("masks are 0/255: 255 read as class 1")
        for s, h in zip(samples, hists):
            bad = decoder.invalid_values(h)
            if bad:
                raise InputError(f"{s.mask}: label value(s) {', '.join(map(str, bad[:6]))} outside the "
                                 f"{len(names)} classes 0..{len(names) - 1} (255 = ignore; set --classes or "
                                 f"--ignore-index)")
        lut = decoder.lut()
        for v, n in total.items():
            cls = int(lut[v]) if 0 <= v < 256 else -1
            if 0 <= cls < len(names):
                spec.class_pixels[cls] = spec.class_pixels.get(cls, 0) + n
    elif hists and decoder.kind == "saliency":
        total_max = max((max(h) for h in hists if h), default=255)
        if total_max <= 1:
            decoder.saliency_scale = 1.0
            notes.append("saliency masks are 0/1")
    return spec


class CropDataset(torch.utils.data.Dataset):
    """Item g -> (normalised float32 crop (C, S, S), target (S, S)): long class ids, or float 0..1 for saliency."""

    def __init__(self, spec: DatasetSpec, crop: int, mean: Sequence[float], std: Sequence[float], seed: int = 0,
                 augment: AugmentConfig | None = None, stretch: str = "auto", cat_max_ratio: float = 1.0,
                 length: int = 1 << 62, crop_max: int | None = None, batch_size: int = 1):
        self.spec, self.crop, self.seed = spec, int(crop), int(seed)
        self.crop_max, self.batch_size = (int(crop_max) if crop_max else None), max(1, int(batch_size))
        self.mean, self.std = tuple(mean), tuple(std)
        self.augment = augment or AugmentConfig()
        self.stretch, self.cat_max_ratio, self.length = stretch, float(cat_max_ratio), int(length)
        areas = np.array([h * w for h, w in spec.sizes], np.float64)
        self.weights = areas / areas.sum()
        self._readers: dict[int, tuple[Any, Any, Any]] = {}

    def __len__(self) -> int:
        return self.length

    def side(self, g: int) -> int:
        """Crop side of item g: fixed, or drawn per batch (items g // batch_size share it) from the range."""
        if self.crop_max is None or self.crop_max == self.crop:
            return self.crop
        rng = np.random.default_rng([self.seed, 7919, int(g) // self.batch_size])
        return int(rng.integers(self.crop, self.crop_max + 1))

    def _open(self, i: int) -> tuple[Any, Any, Any]:
        if i not in self._readers:
            s = self.spec.samples[i]
            img = open_reader(s.image, validate=False)
            mask = open_reader(s.mask, bands=self.spec.decoder.bands, validate=False,
                               expand_palette=self.spec.decoder.kind == "deepglobe")
            self._readers[i] = (img, mask, make_scaler(img, self.stretch))
        return self._readers[i]

    def close(self) -> None:
        for img, mask, _ in reversed(list(self._readers.values())):  # GDAL environments unwind in LIFO order
            mask.close()
            img.close()
        self._readers.clear()

    def __getstate__(self) -> dict[str, Any]:  # open readers do not cross into worker processes
        d = dict(self.__dict__)
        d["_readers"] = {}
        return d

    def __getitem__(self, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(g)])
        i = int(rng.choice(len(self.weights), p=self.weights))
        img, mask, scaler = self._open(i)
        h, w = self.spec.sizes[i]
        s = self.side(g)
        dec = self.spec.decoder
        tries = 10 if (self.cat_max_ratio < 1.0 and dec.kind != "saliency") else 1
        for _ in range(tries):
            r0 = int(rng.integers(0, h - s + 1)) if h > s else 0
            c0 = int(rng.integers(0, w - s + 1)) if w > s else 0
            win = Window(c0, r0, s, s)
            y = dec(mask.read(win), mask.read_mask(win))
            if tries == 1:
                break
            vals, counts = np.unique(y[y != IGNORE], return_counts=True)
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
        raw = img.read(win)
        valid = img.read_mask(win)
        if valid is not None and dec.kind != "saliency":
            y = np.where(valid, y, IGNORE).astype(np.uint8)
        x = scaler(raw)
        x, y = geometric(x, y, rng, self.augment)
        if self.augment.photometric:
            x = photometric(x, rng)
        x = normalise(x, self.mean, self.std).astype(np.float32, copy=False)
        target = torch.from_numpy(np.ascontiguousarray(y))
        target = target.float() if dec.kind == "saliency" else target.long()
        return torch.from_numpy(np.ascontiguousarray(x)), target


def steps_per_epoch(spec: DatasetSpec, crop: int, batch_size: int) -> int:
    """One epoch shows as many crop pixels as the dataset has pixels."""
    return max(1, math.ceil(spec.pixels / float(crop * crop) / batch_size))
