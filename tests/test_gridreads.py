"""The grid reader's cache: every window it serves equals a direct read, and the file's rows are fetched once."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uhrcli.io.gridreads import GridReads, grid_reads
from uhrcli.io.readers import ArrayReader, open_reader
from uhrcli.tiling import TileGrid


class BlockedArray(ArrayReader):
    """An array that claims a file's block layout and counts the pixels fetched from it."""

    def __init__(self, data, valid=None, block=(16, 16)):
        super().__init__(data, valid)
        self.meta.block_shape = block
        self.meta.mask_kind = "mask" if valid is not None else "none"
        self.fetched = 0

    def _read_block(self, r0, r1, c0, c1):
        self.fetched += (r1 - r0) * (c1 - c0)
        return super()._read_block(r0, r1, c0, c1)


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 90), w=st.integers(1, 90), tile=st.integers(4, 40), halo=st.integers(0, 12),
       bh=st.integers(1, 40), bw=st.integers(1, 100), masked=st.booleans(), border=st.sampled_from(["clip", "mirror"]))
def test_every_window_equals_a_direct_read(h, w, tile, halo, bh, bw, masked, border):
    rng = np.random.default_rng(h * 1000 + w)
    data = rng.integers(0, 255, (3, h, w), dtype=np.uint8)
    valid = rng.random((h, w)) > 0.2 if masked else None
    direct = BlockedArray(data, valid, (bh, min(bw, w)))
    tiles = list(TileGrid(h, w, tile, halo, border=border))
    cached = GridReads(BlockedArray(data, valid, (bh, min(bw, w))), tiles)
    for t in tiles:
        m = cached.read_mask(t.read)
        want = direct.read_mask(t.read)
        assert (m is None) == (want is None)
        if m is not None:
            np.testing.assert_array_equal(m, want)
        np.testing.assert_array_equal(cached.read(t.read), direct.read(t.read))


@pytest.mark.parametrize("bw", [16, 64])  # tiled, and striped (blocks as wide as the raster)
def test_each_row_is_fetched_once(bw):
    h, w = 200, 64
    data = np.arange(3 * h * w, dtype=np.uint16).reshape(3, h, w)
    tiles = list(TileGrid(h, w, 50, halo=7))
    inner = BlockedArray(data, None, (16, bw))
    cached = GridReads(inner, tiles)
    for t in tiles:
        np.testing.assert_array_equal(cached.read(t.read), data[:, int(t.read.row_off):int(t.read.row_off + t.read.height),
                                                                int(t.read.col_off):int(t.read.col_off + t.read.width)])
    assert inner.fetched == h * w  # every pixel once, though windows overlap by 14 rows and columns
    direct = BlockedArray(data, None, (16, bw))
    for t in tiles:
        direct.read(t.read)
    assert direct.fetched > inner.fetched  # the halo rows are read twice without the cache


def test_in_memory_readers_are_left_alone():
    r = ArrayReader(np.zeros((3, 64, 64), np.uint8))
    assert grid_reads(r, list(TileGrid(64, 64, 16, 4))) is r


def test_a_real_geotiff_reads_the_same(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    rng = np.random.default_rng(1)
    data = rng.integers(0, 255, (3, 300, 260), dtype=np.uint8)
    path = tmp_path / "t.tif"
    with rasterio.open(path, "w", driver="GTiff", width=260, height=300, count=3, dtype="uint8", tiled=True,
                       blockxsize=64, blockysize=64, compress="deflate", nodata=0) as ds:
        ds.write(data)
    tiles = list(TileGrid(300, 260, 100, halo=13))
    with open_reader(path) as direct, open_reader(path) as r:
        cached = grid_reads(r, tiles)
        assert isinstance(cached, GridReads)
        for t in tiles:
            np.testing.assert_array_equal(cached.read_mask(t.read), direct.read_mask(t.read))
            np.testing.assert_array_equal(cached.read(t.read), direct.read(t.read))
