"""The streaming engine: read tiles, run a predictor, merge, write; in bounded memory.

Three stages overlap: a reader thread reads and normalises tiles ahead (a
bounded queue caps what is in flight), the calling thread runs the model on
batches, a writer thread merges results into the scratch store. Finished
work is recorded in the scratch store as it lands, so an interrupted run
resumes where it stopped and produces the same bytes.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .errors import InputError, UhrError, first_line
from .io.gridreads import grid_reads
from .io.readers import RasterReader
from .io.scaling import Scaler, normalise
from .inference import resolve
from .inference.workers import model_workers, side_by_side
from .merge import BlendMerger, CropMerger, RowsOut
from .proc import trim_heap
from .scratch import Scratch
from .tiling import Tile, TileGrid, window_slices

_STOP = object()


@dataclass
class EngineStats:
    pixels: int = 0  # output pixels produced in this run (resumed ones excluded)
    tiles: int = 0
    tiles_skipped_nodata: int = 0
    tiles_resumed: int = 0
    seconds: float = 0.0
    model_seconds: float = 0.0
    read_seconds: float = 0.0
    write_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mpix_per_s(self) -> float:
        return self.pixels / 1e6 / self.seconds if self.seconds > 0 else 0.0


class Preprocess:
    """Raw pixels -> normalised float32 model input, identical for every tile.

    8- and 16-bit data go through a per-band lookup table (scaling and
    normalisation folded into one gather): on a 2-core CPU the arithmetic
    version cost as much as reading the tile.
    """

    def __init__(self, scaler: Scaler, mean: Sequence[float], std: Sequence[float]):
        self.scaler, self.mean, self.std = scaler, mean, std
        self._luts: dict[np.dtype, np.ndarray] = {}

    def _lut(self, dtype: np.dtype) -> np.ndarray:
        if dtype not in self._luts:
            levels = np.arange(np.iinfo(dtype).max + 1, dtype=np.int64)
            bands = len(self.scaler.offset)
            grid = np.broadcast_to(levels.astype(dtype), (bands, 1, levels.size))
            self._luts[dtype] = np.ascontiguousarray(normalise(self.scaler(grid), self.mean, self.std)[:, 0])
        return self._luts[dtype]

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        if raw.dtype in (np.uint8, np.uint16):
            lut = self._lut(raw.dtype)
            out = np.empty(raw.shape, np.float32)
            for b in range(raw.shape[0]):
                np.take(lut[b], raw[b], out=out[b])
            return out
        if raw.dtype.kind == "f":  # NaN/inf pixels are nodata (masked); 0 keeps them from spreading through convs
            raw = np.nan_to_num(raw, nan=0.0, posinf=0.0, neginf=0.0)
        return normalise(self.scaler(raw), self.mean, self.std).astype(np.float32, copy=False)


@dataclass
class TileData:
    """One tile as the reader hands it over: pixels (when the predictor needs them) and validity."""

    tile: Tile
    x: np.ndarray | None  # raw pixels (C, h, w) as read (normalised on the device by the inferer), or None
    valid: np.ndarray | None  # (h, w) over the read window, or None when every pixel is valid
    nodata: bool = False  # the core holds no valid pixel: nothing to run

    @property
    def key(self) -> tuple[int, ...] | None:
        """Tiles batch together when their keys are equal (same input shape, or no pixels)."""
        return None if self.x is None else tuple(self.x.shape)


def _read_tile(reader: RasterReader, t: Tile, want_pixels: bool) -> TileData:
    valid = reader.read_mask(t.read)
    if valid is not None:
        sr, sc = t.core_in_tile
        if not valid[sr, sc].any():
            return TileData(t, None, valid, nodata=True)
    x = reader.read(t.read) if want_pixels else None
    return TileData(t, x, valid)


def _reader_thread(reader: RasterReader, tiles: list[Tile], out: queue.Queue,
                   stop: threading.Event, stats: EngineStats, needs_pixels: Callable[[Tile], bool]) -> None:
    t = tiles[0] if tiles else None
    try:
        for t in tiles:
            if stop.is_set():
                break
            t0 = time.perf_counter()
            item = _read_tile(reader, t, needs_pixels(t))
            stats.read_seconds += time.perf_counter() - t0
            _offer(out, stop, item)
    except UhrError as exc:
        _offer(out, stop, exc)
        return
    except Exception as exc:  # noqa: BLE001 - a decoder failure mid-file: the input is damaged
        where = f" near row {int(t.read.row_off)}, column {int(t.read.col_off)}" if t is not None else ""
        _offer(out, stop, InputError(f"{reader.path}: failed to read pixels{where}: the file is corrupt or "
                                     f"truncated ({first_line(exc, 160)})"))
        return
    except BaseException as exc:  # noqa: BLE001 - forwarded to the main thread
        _offer(out, stop, exc)
        return
    _offer(out, stop, _STOP)


def prefetch_tiles(reader: RasterReader, tiles: list[Tile], depth: int = 2) -> Iterator[tuple[Tile, np.ndarray | None, np.ndarray | None]]:
    """(tile, raw pixels or None if all nodata, validity) in order, read ahead on a thread."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    th = threading.Thread(target=_reader_thread, args=(grid_reads(reader, tiles), tiles, q, stop, EngineStats(),
                                                       lambda t: True),
                          daemon=True, name="uhr-prefetch")
    th.start()
    try:
        for item in _received(q):
            yield item.tile, item.x, item.valid
    finally:
        stop.set()
        _drain(q)
        th.join(timeout=5)


def _received(q: queue.Queue) -> Iterator[TileData]:
    """What the reader thread hands over, in order, until it is through; its errors are raised here."""
    while True:
        item = q.get()
        if item is _STOP:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def _writer_thread(merger, inq: queue.Queue, stats: EngineStats, errors: list, on_tile: Callable[[Tile], None]) -> None:
    while True:
        item = inq.get()
        if item is _STOP:
            return
        try:
            t0 = time.perf_counter()
            tile, probs, valid = item
            merger.add(tile, resolve(probs), valid)
            stats.write_seconds += time.perf_counter() - t0
            on_tile(tile)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            # drain so the producer never blocks on a dead consumer
            while inq.get() is not _STOP:
                pass
            return


def run_tiles(reader: RasterReader, grid: TileGrid, predictor, scratch: Scratch,
              merge: str = "crop", batch_size: int = 1, prefetch: int = 2,
              on_tile: Callable[[Tile], None] | None = None, blend_margin: int | None = None,
              out: RowsOut | None = None) -> EngineStats:
    """Run every pending tile of `grid` through `predictor` (an uhrcli.inference inferer) into `scratch`.

    out(r0, r1, classes, probs), when given, receives every finished row band as well, in row order: the rows
    an earlier run finished first (read from `scratch`), then this run's as they are merged."""
    stats = EngineStats()
    if merge == "blend":
        merger: CropMerger | BlendMerger = BlendMerger(grid, scratch, predictor.num_classes, margin=blend_margin,
                                                       out=out)
    else:
        merger = CropMerger(grid, scratch, out=out)
    if out is not None:
        probs = scratch.probs
        for r0, r1 in merger.finished_bands():
            out(r0, r1, np.asarray(scratch.classes[r0:r1]), None if probs is None else np.asarray(probs[:, r0:r1]))
    tiles = merger.pending()
    predictor.classes_only = merge == "crop" and scratch.probs is None
    predictor.quantised = merge == "crop" and scratch.probs is not None
    predictor.asynchronous = True  # the writer thread resolves Pending results
    if predictor.out_margin != merger.margin:  # passes prepared for other windows would not cover these
        raise RuntimeError(f"the inferer was prepared for out_margin {predictor.out_margin}, the merger needs "
                           f"{merger.margin}: set it (uhrcli.merge.merge_margin) before prepare()")
    stats.tiles_resumed = len(grid) - len(tiles)
    on_tile = on_tile or (lambda t: None)
    start = time.perf_counter()
    if not tiles:
        return stats

    readq: queue.Queue = queue.Queue(maxsize=max(2, prefetch * batch_size))
    writeq: queue.Queue = queue.Queue(maxsize=max(2, prefetch * batch_size))
    stop = threading.Event()
    errors: list[BaseException] = []
    rt = threading.Thread(target=_reader_thread, args=(grid_reads(reader, tiles), tiles, readq, stop, stats,
                                                       predictor.needs_pixels), daemon=True, name="uhr-reader")
    wt = threading.Thread(target=_writer_thread, args=(merger, writeq, stats, errors, on_tile), daemon=True,
                          name="uhr-writer")
    rt.start()
    wt.start()
    workers = model_workers(predictor)
    inflight: deque[Callable[[], None]] = deque()  # hand-overs to the writer, in reading order
    lock = threading.Lock()
    stats.extra["model_workers"] = workers

    def out_valid(item: TileData) -> np.ndarray | None:
        if item.valid is None:
            return None
        sr, sc = window_slices(grid.out_window(item.tile, merger.margin), item.tile.read)
        return item.valid[sr, sc]

    def call(batch: list[TileData]) -> list:
        t0 = time.perf_counter()
        if batch[0].x is None:
            xs = None
        else:  # one tile: a view, not a copy
            xs = batch[0].x[None] if len(batch) == 1 else np.stack([b.x for b in batch])
        outs = predictor(xs, [b.tile for b in batch])
        del xs
        trim_heap()
        with lock:
            stats.model_seconds += time.perf_counter() - t0
        return outs

    def deliver(batch: list[TileData], outs: list) -> None:
        for item, out in zip(batch, outs):
            _put(writeq, (item.tile, out, out_valid(item)), errors)
            stats.tiles += 1
            stats.pixels += int(item.tile.core.width * item.tile.core.height)

    def skip(item: TileData) -> None:
        _put(writeq, (item.tile, None, out_valid(item)), errors)
        stats.tiles_skipped_nodata += 1
        stats.pixels += int(item.tile.core.width * item.tile.core.height)

    def flush(batch: list[TileData]) -> None:
        if pool is None:
            deliver(batch, call(batch))
            return
        fut: Future = pool.submit(call, batch)
        inflight.append(lambda: deliver(batch, fut.result()))
        while len(inflight) >= workers:  # at most `workers` batches in flight
            inflight.popleft()()

    with side_by_side(workers) as pool:  # on leaving, batches already running finish; queued ones never start
        try:
            batch: list[TileData] = []
            for item in _received(readq):
                if errors:
                    raise errors[0]
                if item.nodata:
                    if inflight:  # after the batches read before it
                        inflight.append(lambda item=item: skip(item))
                    else:
                        skip(item)
                    continue
                if batch and (batch[0].key != item.key or len(batch) >= batch_size):
                    flush(batch)
                    batch = []
                batch.append(item)
            if batch:
                flush(batch)
            while inflight:
                inflight.popleft()()
        except BaseException:
            stop.set()
            _drain(readq)
            writeq.put(_STOP)
            wt.join()
            rt.join(timeout=5)
            raise
    writeq.put(_STOP)
    wt.join()
    rt.join()
    if errors:
        raise errors[0]
    stats.seconds = time.perf_counter() - start
    return stats


def _offer(q: queue.Queue, stop: threading.Event, item: Any) -> None:
    """Put unless the consumer has gone away (stop set): a reader never blocks forever."""
    while True:
        try:
            q.put(item, timeout=0.2)
            return
        except queue.Full:
            if stop.is_set():
                return


def _put(q: queue.Queue, item: Any, errors: list) -> None:
    while True:
        if errors:
            raise errors[0]
        try:
            q.put(item, timeout=0.5)
            return
        except queue.Full:
            continue


def _drain(q: queue.Queue) -> None:
    try:
        while True:
            q.get_nowait()
    except queue.Empty:
        pass
