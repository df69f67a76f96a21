"""One reader interface over every raster source.

`read(window)` returns (bands, h, w) for any window, also one reaching past the
image: outside pixels mirror the image (numpy 'reflect'). The mirroring is a
function of global coordinates, so a tile read with its halo holds exactly the
pixels a whole-image read padded the same way would: tiled inference can then
reproduce a single-tile run bit for bit.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from rasterio.windows import Window

from ..errors import InputError, MissingInputError, UsageError, first_line

SUPPORTED_KINDS = "u", "i", "f", "b"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}
TIFF_SUFFIXES = {".tif", ".tiff", ".btf", ".tf8", ".ome.tif"}
GDAL_ENV = {"GDAL_CACHEMAX": 64, "GDAL_NUM_THREADS": "ALL_CPUS", "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}


@contextlib.contextmanager
def quiet_libtiff(drop: bool = False) -> Iterator[None]:
    """libtiff (inside GDAL) prints its errors straight to the process's stderr, a line per failed block: a
    full disk prints dozens. While GDAL writes, fd 2 goes to a file; afterwards what was printed is put
    back, less libtiff's and GDAL's lines when the write failed (uhr then reports it in one line) or when
    `drop` says the file is being thrown away."""
    if os.environ.get("UHR_DEBUG") == "1":
        yield
        return
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    failed = False
    with tempfile.TemporaryFile() as buf:
        os.dup2(buf.fileno(), 2)
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            buf.seek(0)
            text = buf.read().decode(errors="replace")
            if failed or drop:
                text = "".join(ln for ln in text.splitlines(keepends=True) if not _GDAL_LINE.match(ln))
            if text:
                sys.stderr.write(text)
                sys.stderr.flush()


_GDAL_LINE = re.compile(r"^(_?tiff?\w*|TIFF\w*|ERROR \d+|Warning \d+):", re.IGNORECASE)


def gdal_env(**options: Any) -> Any:
    """A rasterio.Env for uhr's GDAL work. GDAL's own messages go nowhere unless UHR_DEBUG=1 (`uhr --debug`):
    failures reach the user as uhr's one-line errors, and a full disk would otherwise print dozens of lines."""
    import rasterio

    if os.environ.get("UHR_DEBUG") != "1":
        options.setdefault("CPL_LOG", os.devnull)
    return rasterio.Env(**options)


def reflect_indices(start: int, stop: int, n: int) -> np.ndarray:
    """Indices into [0, n) for [start, stop), mirrored at the edges (no edge repeat)."""
    idx = np.arange(start, stop)
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    idx = np.mod(idx, period)
    return np.where(idx >= n, period - idx, idx)


@dataclass
class RasterMeta:
    """What `uhr info` shows and writers copy to the output."""

    driver: str = ""
    crs: Any = None  # rasterio CRS or None
    transform: Any = None  # affine.Affine or None
    nodata: float | None = None
    block_shape: tuple[int, int] | None = None
    compression: str | None = None
    overviews: list[int] = field(default_factory=list)
    band_names: list[str] = field(default_factory=list)
    mask_kind: str = "none"  # none | nodata | alpha | mask
    extra: dict[str, Any] = field(default_factory=dict)


class RasterReader(ABC):
    """Base class: subclasses implement in-bounds reads; this class adds boundless mirroring."""

    path: Path
    height: int
    width: int
    dtype: np.dtype
    meta: RasterMeta
    source_count: int  # bands in the file
    bands: list[int]  # 1-based source bands returned by read()

    # -- to implement -------------------------------------------------------------------
    @abstractmethod
    def _read_block(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """In-bounds read of the selected bands: (len(bands), r1-r0, c1-c0)."""

    def _read_mask_block(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray | None:
        """In-bounds validity mask (h, w) bool, or None when every pixel is valid."""
        return None

    def close(self) -> None:
        pass

    # -- shared ---------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return len(self.bands)

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def select_bands(self, bands: Sequence[int] | None) -> None:
        if bands is None:
            return
        bad = [b for b in bands if b < 1 or b > self.source_count]
        if bad or not bands:
            raise UsageError(f"--bands {','.join(map(str, bands))}: {self.path.name} has bands 1..{self.source_count}")
        self.bands = list(bands)

    def read(self, window: Window) -> np.ndarray:
        r0, c0 = int(window.row_off), int(window.col_off)
        r1, c1 = r0 + int(window.height), c0 + int(window.width)
        return self._boundless(self._read_block, r0, r1, c0, c1)

    def read_mask(self, window: Window) -> np.ndarray | None:
        """Validity (True = valid) for the window, mirrored like read(); None if all valid.

        Real-valued rasters are masked where any band is NaN or infinite, as well as by their own mask.
        """
        if self.meta.mask_kind == "none" and np.dtype(self.dtype).kind != "f":
            return None
        r0, c0 = int(window.row_off), int(window.col_off)
        r1, c1 = r0 + int(window.height), c0 + int(window.width)

        def blk(a, b, c, d):
            m = self._read_mask_block(a, b, c, d) if self.meta.mask_kind != "none" else None
            if np.dtype(self.dtype).kind == "f":
                finite = np.isfinite(self._read_block(a, b, c, d)).all(0)
                m = finite if m is None else (m & finite)
            return np.ones((1, b - a, d - c), bool) if m is None else m[None]

        return self._boundless(blk, r0, r1, c0, c1)[0]

    def _boundless(self, fn, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        if r0 >= 0 and c0 >= 0 and r1 <= self.height and c1 <= self.width:
            return fn(r0, r1, c0, c1)
        rows = reflect_indices(r0, r1, self.height)
        cols = reflect_indices(c0, c1, self.width)
        a0, a1 = int(rows.min()), int(rows.max()) + 1
        b0, b1 = int(cols.min()), int(cols.max()) + 1
        block = fn(a0, a1, b0, b1)
        return block[:, rows - a0][:, :, cols - b0]

    def sample(self, max_pixels: int = 1 << 20, patch: int = 64) -> np.ndarray:
        """A spread sample of pixels (bands, n) from a grid of small windows, for statistics."""
        n = max(1, int(max_pixels // (patch * patch)))
        side = max(1, int(math.sqrt(n)))
        ph, pw = min(patch, self.height), min(patch, self.width)
        ys = np.linspace(0, self.height - ph, side).astype(int)
        xs = np.linspace(0, self.width - pw, side).astype(int)
        parts = []
        for y in np.unique(ys):
            for x in np.unique(xs):
                block = self.read(Window(int(x), int(y), pw, ph)).reshape(self.count, -1)
                m = self.read_mask(Window(int(x), int(y), pw, ph))
                parts.append(block if m is None else block[:, m.reshape(-1)])
        return np.concatenate(parts, axis=1)

    def validate(self) -> None:
        """Decode the first and last blocks now, so a truncated file fails before any work."""
        bh, bw = self.meta.block_shape or (min(256, self.height), min(256, self.width))
        bh, bw = max(1, min(bh, self.height)), max(1, min(bw, self.width))
        for r, c in ((0, 0), (self.height - bh, self.width - bw)):
            try:
                self._read_block(r, r + bh, c, c + bw)
            except Exception as exc:  # noqa: BLE001 - any decoder failure means a bad file
                raise InputError(f"{self.path}: cannot decode pixel data, the file is corrupt or truncated "
                                 f"({first_line(exc)})") from None

    def __enter__(self) -> "RasterReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def palette_lut(cmap: dict[int, Sequence[int]], dtype: np.dtype) -> np.ndarray:
    """(levels, 4) uint8 RGBA lookup table of an indexed image's colour map; unlisted indices are black."""
    levels = 256 if np.dtype(dtype).itemsize == 1 else 65536
    lut = np.zeros((levels, 4), np.uint8)
    lut[:, 3] = 255
    for k, v in cmap.items():
        if 0 <= k < levels:
            rgba = tuple(v) + (255,) * (4 - len(tuple(v)))
            lut[k] = rgba[:4]
    return lut


def check_dtype(dtype: np.dtype, path: Path) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind not in SUPPORTED_KINDS:
        raise InputError(f"{path}: unsupported pixel type {dtype} (uhr reads integer and real rasters, not complex)")
    return dtype


# --------------------------------------------------------------------------------------------
# rasterio / GDAL
# --------------------------------------------------------------------------------------------
class RasterioReader(RasterReader):
    """GeoTIFF and every other GDAL raster; CRS, transform, nodata and masks are kept."""

    def __init__(self, path: Path, expand_palette: bool = True):
        import rasterio
        from rasterio.enums import ColorInterp, MaskFlags
        from rasterio.errors import RasterioIOError

        self.path = Path(path)
        self._env = gdal_env(**GDAL_ENV)
        self._env.__enter__()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._ds = rasterio.open(self.path)
        except RasterioIOError as exc:
            self._env.__exit__(None, None, None)
            raise InputError(f"{self.path}: not a readable raster ({first_line(exc)})") from None
        ds = self._ds
        self.height, self.width = ds.height, ds.width
        self.source_count = ds.count
        self.dtype = check_dtype(np.dtype(ds.dtypes[0]), self.path)
        ci = list(ds.colorinterp)
        self._palette: np.ndarray | None = None
        if expand_palette and ds.count == 1 and ci[0] == ColorInterp.palette:  # indexed colour -> its RGB
            cmap = ds.colormap(1)
            self._palette = palette_lut({int(k): v for k, v in cmap.items()}, self.dtype)
            self.source_count, self.dtype = 3, np.dtype(np.uint8)
            ci = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
        alpha = [i + 1 for i, c in enumerate(ci) if c == ColorInterp.alpha]
        self._alpha_band = alpha[0] if alpha else None
        rgb = [ci.index(c) + 1 for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue) if c in ci]
        if len(rgb) == 3 and self.source_count > 3:
            self.bands = rgb
        else:
            self.bands = [b for b in range(1, self.source_count + 1) if b != self._alpha_band]
        flags = ds.mask_flag_enums[0] if ds.count else []
        if self._palette is not None and (self._palette[:, 3] == 0).any():
            kind = "alpha"  # transparent colour-map entries
        elif self._alpha_band is not None or MaskFlags.alpha in flags:
            kind = "alpha"
        elif ds.nodata is not None:
            kind = "nodata"
        elif MaskFlags.per_dataset in flags:
            kind = "mask"
        else:
            kind = "none"
        is_geo = ds.crs is not None or not ds.transform.is_identity
        self.meta = RasterMeta(
            driver=ds.driver, crs=ds.crs, transform=ds.transform if is_geo else None, nodata=ds.nodata,
            block_shape=tuple(ds.block_shapes[0]) if ds.count else None,
            compression=ds.compression.value if ds.compression else None,
            overviews=list(ds.overviews(1)) if ds.count else [],
            band_names=[str(c.name) for c in ci], mask_kind=kind,
            extra={"interleave": getattr(ds.interleaving, "value", None)},
        )

    def _read_block(self, r0, r1, c0, c1):
        win = Window(c0, r0, c1 - c0, r1 - r0)
        if self._palette is not None:
            rgb = np.moveaxis(self._palette[self._ds.read(1, window=win)][..., :3], -1, 0)
            return rgb[[b - 1 for b in self.bands]]
        return self._ds.read(self.bands, window=win)

    def _read_mask_block(self, r0, r1, c0, c1):
        win = Window(c0, r0, c1 - c0, r1 - r0)
        if self._palette is not None:
            idx = self._ds.read(1, window=win)
            valid = self._palette[idx][..., 3] > 0
            return valid if self.meta.nodata is None else valid & (idx != self.meta.nodata)
        if self.meta.mask_kind == "nodata":
            # GDAL's dataset mask: invalid only where every band equals nodata
            data = self._ds.read(self.bands, window=win)
            nd = self.meta.nodata
            invalid = np.isnan(data).all(0) if (isinstance(nd, float) and math.isnan(nd)) else (data == nd).all(0)
            return ~invalid
        return self._ds.dataset_mask(window=win) > 0

    def close(self):
        self._ds.close()
        self._env.__exit__(None, None, None)


# --------------------------------------------------------------------------------------------
# tifffile (zarr store): plain, OME and pyramidal TIFF without georeferencing
# --------------------------------------------------------------------------------------------
class TiffReader(RasterReader):
    """TIFF family through tifffile's zarr store: only the touched tiles or strips are decoded."""

    def __init__(self, path: Path, tif: Any, expand_palette: bool = True):
        import zarr

        self.path = Path(path)
        self._tif = tif
        series = tif.series[0]
        axes = series.axes.upper()
        try:
            store = series.aszarr(level=0) if len(series.levels) > 1 else series.aszarr()
            z = zarr.open(store, mode="r")
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{self.path}: cannot open TIFF pixel data ({first_line(exc)})") from None
        if hasattr(z, "shape") is False:  # a group: take level 0
            z = z["0"]
        self._z = z
        self._axes = axes
        if "Y" not in axes or "X" not in axes:
            raise InputError(f"{self.path}: TIFF series has axes {axes}, no Y/X plane")
        ch_axis = next((axes.index(a) for a in "SC" if a in axes), None)
        self._ch_axis = ch_axis
        self.height, self.width = z.shape[axes.index("Y")], z.shape[axes.index("X")]
        self.source_count = z.shape[ch_axis] if ch_axis is not None else 1
        self.dtype = check_dtype(np.dtype(z.dtype), self.path)
        page = series.pages[0] if series.pages else tif.pages[0]
        declared = int(np.prod(getattr(page, "chunked", (1,))))
        held = len(getattr(page, "dataoffsets", ()) or ())
        if held and held < declared:  # a header promising more tiles than the file indexes: never decode zeros
            raise InputError(f"{self.path}: the header declares {self.height}x{self.width} pixels in {declared} "
                             f"tiles or strips but the file indexes {held}: corrupt or truncated")
        extras = tuple(getattr(page, "extrasamples", ()) or ())
        self._alpha_band = None
        if extras and self.source_count >= 2 and extras[-1] in (1, 2):  # associated/unassociated alpha
            self._alpha_band = self.source_count
        self._palette: np.ndarray | None = None
        cm = getattr(page, "colormap", None)
        if expand_palette and self.source_count == 1 and int(getattr(page, "photometric", 0) or 0) == 3 and cm is not None:
            cm = np.asarray(cm)  # (3, levels), 16-bit in TIFF: colour = value >> 8
            cm8 = (cm >> 8) if cm.max() > 255 else cm
            self._palette = palette_lut({i: tuple(int(v) for v in cm8[:, i]) for i in range(cm8.shape[1])}, self.dtype)
            self.source_count, self.dtype = 3, np.dtype(np.uint8)
        self.bands = [b for b in range(1, self.source_count + 1) if b != self._alpha_band]
        nodata = None
        tag = page.tags.get("GDAL_NODATA") if hasattr(page, "tags") else None
        if tag is not None:
            try:
                nodata = float(str(tag.value).strip("\x00 "))
            except ValueError:
                nodata = None
        levels = [int(round(self.width / lv.shape[axes.index("X")])) for lv in series.levels[1:]] if len(series.levels) > 1 else []
        comp = getattr(page, "compression", None)
        self.meta = RasterMeta(
            driver="TIFF (tifffile)", nodata=nodata,
            block_shape=(int(page.tilelength), int(page.tilewidth)) if page.is_tiled else (int(page.rowsperstrip or self.height), self.width),
            compression=getattr(comp, "name", str(comp)).lower() if comp is not None else None,
            overviews=levels, mask_kind="alpha" if self._alpha_band else ("nodata" if nodata is not None else "none"),
            extra={"axes": axes, "bigtiff": bool(tif.is_bigtiff), "ome": bool(tif.is_ome), "pages": len(tif.pages)},
        )

    def _index(self, r0, r1, c0, c1) -> tuple:
        idx: list[Any] = []
        for a in self._axes:
            if a == "Y":
                idx.append(slice(r0, r1))
            elif a == "X":
                idx.append(slice(c0, c1))
            elif a in "SC":
                idx.append(slice(None))
            else:
                idx.append(0)  # extra axes (Z, T, ...): first plane
        return tuple(idx)

    def _all_bands(self, r0, r1, c0, c1) -> np.ndarray:
        arr = np.asarray(self._z[self._index(r0, r1, c0, c1)])
        kept = [a for a in self._axes if a in "YXSC"]
        if self._ch_axis is None:
            return arr[None]
        ch = "S" if "S" in kept else "C"
        order = [kept.index(ch), kept.index("Y"), kept.index("X")]
        return np.transpose(arr, order)

    def _read_block(self, r0, r1, c0, c1):
        data = self._all_bands(r0, r1, c0, c1)
        if self._palette is not None:
            data = np.moveaxis(self._palette[data[0]][..., :3], -1, 0)
        return data[[b - 1 for b in self.bands]]

    def _read_mask_block(self, r0, r1, c0, c1):
        data = self._all_bands(r0, r1, c0, c1)
        if self._alpha_band is not None:
            return data[self._alpha_band - 1] > 0
        return ~(data[[b - 1 for b in self.bands]] == self.meta.nodata).all(0)

    def close(self):
        self._tif.close()


# --------------------------------------------------------------------------------------------
# zarr arrays (v2 and v3)
# --------------------------------------------------------------------------------------------
class ZarrReader(RasterReader):
    """A zarr array laid out (bands, y, x) or (y, x); georeferencing from uhr's attributes."""

    def __init__(self, path: Path):
        import zarr

        self.path = Path(path)
        try:
            node = zarr.open(str(self.path), mode="r")
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{self.path}: not a readable zarr store ({first_line(exc)})") from None
        if not hasattr(node, "shape"):
            keys = sorted(k for k, v in node.arrays())
            pick = next((k for k in ("image", "data", "0", "classes") if k in keys), keys[0] if keys else None)
            if pick is None:
                raise InputError(f"{self.path}: zarr group holds no array")
            node = node[pick]
        if node.ndim not in (2, 3):
            raise InputError(f"{self.path}: zarr array has {node.ndim} dimensions, expected (bands, y, x) or (y, x)")
        self._z = node
        self._chw = node.ndim == 3
        if self._chw and node.shape[-1] <= 4 < node.shape[0]:
            raise InputError(f"{self.path}: zarr array looks channel-last {node.shape}; store it as (bands, y, x)")
        self.height, self.width = node.shape[-2:]
        self.source_count = node.shape[0] if self._chw else 1
        self.bands = list(range(1, self.source_count + 1))
        self.dtype = check_dtype(np.dtype(node.dtype), self.path)
        attrs = dict(node.attrs)
        crs = transform = None
        if attrs.get("crs"):
            from rasterio.crs import CRS

            crs = CRS.from_user_input(attrs["crs"])
        if attrs.get("transform"):
            from affine import Affine

            transform = Affine(*attrs["transform"][:6])
        nodata = attrs.get("nodata")
        self.meta = RasterMeta(
            driver=f"zarr v{node.metadata.zarr_format}", crs=crs, transform=transform, nodata=nodata,
            block_shape=tuple(node.chunks[-2:]), compression=None,
            mask_kind="nodata" if nodata is not None else "none",
        )

    def _read_block(self, r0, r1, c0, c1):
        if self._chw:
            return np.asarray(self._z[:, r0:r1, c0:c1])[[b - 1 for b in self.bands]]
        return np.asarray(self._z[r0:r1, c0:c1])[None][[b - 1 for b in self.bands]]

    def _read_mask_block(self, r0, r1, c0, c1):
        data = self._read_block(r0, r1, c0, c1)
        return ~(data == self.meta.nodata).all(0)


# --------------------------------------------------------------------------------------------
# small photos (PNG/JPEG/WebP): decoded whole, EXIF orientation applied
# --------------------------------------------------------------------------------------------
class ImageReader(RasterReader):
    """Small images read whole through Pillow, as displayed (EXIF orientation applied)."""

    MAX_PIXELS = 400_000_000

    def __init__(self, path: Path, expand_palette: bool = True):
        from PIL import Image, ImageOps, UnidentifiedImageError

        self.path = Path(path)
        Image.MAX_IMAGE_PIXELS = self.MAX_PIXELS
        try:
            with Image.open(self.path) as im:
                if im.getexif().get(0x0112, 1) not in (0, 1):  # rotated or mirrored: as displayed
                    im = ImageOps.exif_transpose(im)  # (a copy of the whole image, so only when it is needed)
                im.load()
                arr = _pil_to_array(im, expand_palette)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise InputError(f"{self.path}: not a readable image ({first_line(exc)})") from None
        except Image.DecompressionBombError:
            raise InputError(f"{self.path}: image too large to decode whole; convert it to a tiled TIFF") from None
        self._arr = arr  # (bands, h, w)
        self.source_count, self.height, self.width = arr.shape
        self.dtype = check_dtype(arr.dtype, self.path)
        self._alpha_band = self.source_count if self.source_count in (2, 4) else None
        self.bands = [b for b in range(1, self.source_count + 1) if b != self._alpha_band]
        self.meta = RasterMeta(driver="image (Pillow)", mask_kind="alpha" if self._alpha_band else "none",
                               block_shape=(self.height, self.width))

    def _read_block(self, r0, r1, c0, c1):
        return self._arr[[b - 1 for b in self.bands], r0:r1, c0:c1]

    def _read_mask_block(self, r0, r1, c0, c1):
        return self._arr[self._alpha_band - 1, r0:r1, c0:c1] > 0


def _pil_to_array(im, expand_palette: bool = True) -> np.ndarray:
    if im.mode in ("P", "PA") and not expand_palette:  # the indices themselves (a PA image's alpha dropped)
        arr = np.asarray(im)
        return np.ascontiguousarray(arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)[:1])
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB")
    elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    elif im.mode == "1":
        im = im.convert("L")
    arr = np.asarray(im)
    if arr.dtype == np.int32 and im.mode.startswith("I"):
        arr = arr.astype(np.uint16) if arr.max(initial=0) < 65536 and arr.min(initial=0) >= 0 else arr
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = np.moveaxis(arr, -1, 0)
    return np.ascontiguousarray(arr)


# --------------------------------------------------------------------------------------------
class ArrayReader(RasterReader):
    """An in-memory (bands, h, w) array, optionally with a validity mask: the engine on data already loaded."""

    def __init__(self, data: np.ndarray, valid: np.ndarray | None = None, name: str = "<array>"):
        if data.ndim == 2:
            data = data[None]
        if data.ndim != 3 or 0 in data.shape:
            raise InputError(f"{name}: expected a (bands, height, width) array, got shape {data.shape}")
        self.path = Path(name)
        self._arr = data
        self._valid = None if valid is None else np.asarray(valid, bool)
        self.source_count, self.height, self.width = data.shape
        self.dtype = check_dtype(data.dtype, self.path)
        self.bands = list(range(1, self.source_count + 1))
        self.meta = RasterMeta(driver="array", mask_kind="mask" if valid is not None else "none",
                               block_shape=(self.height, self.width))

    def _read_block(self, r0, r1, c0, c1):
        return self._arr[[b - 1 for b in self.bands], r0:r1, c0:c1]

    def _read_mask_block(self, r0, r1, c0, c1):
        return None if self._valid is None else self._valid[r0:r1, c0:c1]


# --------------------------------------------------------------------------------------------
def open_reader(path: str | os.PathLike, bands: Sequence[int] | None = None, validate: bool = True,
                expand_palette: bool = True) -> RasterReader:
    """Open any supported raster; bad paths and files raise one-line UhrErrors.

    expand_palette: an indexed-colour image reads as the RGB it shows (imagery); False reads its indices
    (class maps and label masks, which store classes as palette indices).
    """
    p = Path(path)
    if not p.exists():
        if p.is_symlink():
            raise MissingInputError(f"{p}: a broken symbolic link (or a link loop)")
        raise MissingInputError(f"input not found: {p}")
    if not os.access(p, os.R_OK):
        raise InputError(f"{p}: permission denied (the file is not readable by this user)")
    is_zarr = p.is_dir() and (p.suffix == ".zarr" or (p / "zarr.json").exists() or (p / ".zarray").exists()
                              or (p / ".zgroup").exists())
    if p.is_dir() and not is_zarr:
        raise InputError(f"{p}: is a directory, expected an image file (or a .zarr store)")
    if not is_zarr and p.stat().st_size == 0:
        raise InputError(f"{p}: empty file")
    if is_zarr:
        reader: RasterReader = ZarrReader(p)
    else:
        with open(p, "rb") as f:
            head = f.read(4)
        if head[:2] in (b"II", b"MM"):
            reader = _open_tiff(p, expand_palette)
        elif p.suffix.lower() in IMAGE_SUFFIXES or head[:4] in (b"\x89PNG", b"RIFF") or head[:3] == b"\xff\xd8\xff":
            reader = ImageReader(p, expand_palette)
        elif p.suffix.lower() in TIFF_SUFFIXES:
            raise InputError(f"{p}: not a TIFF file (no TIFF header)")
        else:
            reader = RasterioReader(p, expand_palette)
    if np.dtype(reader.dtype).kind == "f" and reader.meta.mask_kind == "none":
        reader.meta.mask_kind = "finite"  # NaN and infinite pixels are nodata
    try:
        if reader.height <= 0 or reader.width <= 0 or reader.source_count <= 0:
            raise InputError(f"{p}: image has zero size ({reader.height}x{reader.width}x{reader.source_count})")
        reader.select_bands(bands)
        if validate:
            reader.validate()
    except BaseException:
        reader.close()
        raise
    return reader


def _open_tiff(p: Path, expand_palette: bool = True) -> RasterReader:
    import tifffile

    try:
        tif = tifffile.TiffFile(p)
        _ = tif.series[0].shape
    except Exception as exc:  # noqa: BLE001 - tifffile raises many types for bad files
        raise InputError(f"{p}: not a valid TIFF ({first_line(exc)})") from None
    if tif.is_geotiff:
        tif.close()
        return RasterioReader(p, expand_palette)
    try:
        return TiffReader(p, tif, expand_palette)
    except BaseException:
        tif.close()
        raise
