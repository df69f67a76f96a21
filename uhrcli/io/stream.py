"""GeoTIFF outputs written while the tiles still run: each row band goes in as the merger finishes it.

Writing the class map after the run meant a second full pass: every chunk of the
scratch store decoded again and the whole map compressed on one thread after
the model had stopped (17.5 ms per MP on a 36 MP map, a third of the pipeline's
CPU). Streamed, the compression runs on the writer thread beside the model and
the scratch store is only read for rows an earlier, interrupted run finished.

The file is written under a temporary name and moved into place by the caller
only after `close()` has read it back. The same sequence of writes gives the
same bytes, so a resumed run replays the finished bands in the order an
uninterrupted run writes them.
"""
from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .readers import gdal_env, quiet_libtiff
from .writers import OutputSpec, discard, geotiff_profile, verify_raster

RowSource = Callable[[int, int], np.ndarray]


@contextlib.contextmanager
def _gdal(drop: bool = False):
    """uhr's GDAL settings and libtiff's stderr held back, around each call (not the whole run: the progress
    bar draws on stderr meanwhile, and the calls come from the writer thread)."""
    with gdal_env(GDAL_CACHEMAX=64), quiet_libtiff(drop):
        yield


class GeoTiffStream:
    """One tiled GeoTIFF open for writing; `write(r0, r1, block)` puts rows [r0, r1) of all bands.

    Rows are held until they fill whole rows of 512-pixel blocks (bands of 1000 rows would leave a block half
    written, flushed by the shared block cache and compressed again later, each time with its old copy left
    in the file: 38% of a 36 MP map was such dead space). Bands may come in any order; each row once.
    """

    def __init__(self, tmp: Path, spec: OutputSpec, count: int, *, colormap: bool, descriptions: list[str],
                 nodata: int | None, predictor: int | None, block: int = 512):
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning

        self.tmp, self.spec, self.count, self.block = Path(tmp), spec, count, block
        self.colormap, self.descriptions = colormap, descriptions
        self._last: tuple[int, int, np.ndarray] | None = None
        self._waiting: dict[int, np.ndarray] = {}  # bands that arrived ahead of the next row, by first row
        self._held: list[np.ndarray] = []  # rows [self._start, self._next) not yet written
        self._start = self._next = 0
        prof = geotiff_profile(spec.height, spec.width, count, "uint8", spec.crs, spec.transform, nodata,
                               spec.compress, block=block, predictor=predictor)
        try:
            with warnings.catch_warnings(), _gdal():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self._ds = rasterio.open(self.tmp, "w", **prof)
        except BaseException:
            discard(self.tmp)
            raise

    def write(self, r0: int, r1: int, block: np.ndarray) -> None:
        block = block[None] if block.ndim == 2 else block
        if block.shape[1] != r1 - r0 or r0 < self._next or r0 in self._waiting:
            raise ValueError(f"rows {r0}:{r1} written twice or with {block.shape[1]} rows")
        self._waiting[r0] = block
        while self._next in self._waiting:
            b = self._waiting.pop(self._next)
            self._held.append(b)
            self._next += b.shape[1]
            end = self._next if self._next >= self.spec.height else self._next // self.block * self.block
            if end > self._start:
                rows = self._held[0] if len(self._held) == 1 else np.concatenate(self._held, axis=1)
                n = end - self._start
                self._put(self._start, end, rows[:, :n])
                self._held = [rows[:, n:]] if rows.shape[1] > n else []
                self._start = end

    def _put(self, r0: int, r1: int, block: np.ndarray) -> None:
        with _gdal():
            self._ds.write(block, window=((r0, r1), (0, self.spec.width)))
        self._last = (r0, r1, block)

    def close(self) -> None:
        """Colour table, band names and tags, then close and read back: GDAL logs some write errors (a disk that
        fills while it flushes) instead of raising them."""
        if self._start != self.spec.height:
            raise ValueError(f"{self.tmp}: rows {self._start}:{self.spec.height} were never written")
        with _gdal():
            ds = self._ds
            if self.colormap:
                cmap = {i: tuple(c) + (255,) for i, c in enumerate(self.spec.palette)}
                cmap[self.spec.nodata] = (0, 0, 0, 0)
                ds.write_colormap(1, cmap)
            for i, d in enumerate(self.descriptions, start=1):
                ds.set_band_description(i, d)
            tags = {"class_names": json.dumps(list(self.spec.class_names)), **self.spec.tags}
            tags.update({f"class_{i}": n for i, n in enumerate(self.spec.class_names)})
            ds.update_tags(**tags)
            ds.close()
            verify_raster(self.tmp, self.spec.height, self.spec.width, self.count, self._last)

    def abort(self) -> None:
        try:
            with _gdal(drop=True):
                self._ds.close()
        except Exception:  # noqa: BLE001 - the file is discarded anyway
            pass
        discard(self.tmp)


class MapStreams:
    """The class map and (with --probs) the probabilities of one output, fed together by a merger.

    `rows(r0, r1, classes, probs)` is the merger's hook; `replay` writes bands an earlier run finished.
    """

    def __init__(self, spec: OutputSpec, classes_tmp: Path, probs_tmp: Path | None, num_classes: int):
        self.classes = GeoTiffStream(classes_tmp, spec, 1, colormap=True, descriptions=["class"],
                                     nodata=spec.nodata, predictor=None)
        self.probs: GeoTiffStream | None = None
        if probs_tmp is not None:
            try:
                self.probs = GeoTiffStream(probs_tmp, spec, num_classes, colormap=False,
                                           descriptions=[f"p({n})" for n in spec.class_names], nodata=None,
                                           predictor=2)
            except BaseException:
                self.classes.abort()
                raise

    def rows(self, r0: int, r1: int, classes: np.ndarray, probs: np.ndarray | None) -> None:
        self.classes.write(r0, r1, classes)
        if self.probs is not None and probs is not None:
            self.probs.write(r0, r1, probs)

    def replay(self, bands: Iterable[tuple[int, int]], classes: RowSource, probs: RowSource | None) -> None:
        for r0, r1 in bands:
            self.rows(r0, r1, classes(r0, r1), probs(r0, r1) if probs is not None and self.probs is not None else None)

    def close(self) -> None:
        try:
            self.classes.close()
            if self.probs is not None:
                self.probs.close()
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        for s in (self.classes, self.probs):
            if s is not None:
                s.abort()
