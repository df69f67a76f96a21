"""The splitter's geometry: cores partition the image, origins sit on the stride, windows stay in bounds."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uhrcli.io.readers import reflect_indices
from uhrcli.merge import blend_margin, ramp_weights
from uhrcli.tiling import TileGrid, axis_tiles, window_slices


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 5000), tile=st.integers(1, 3000), mult=st.sampled_from([1, 2, 8, 16, 32]),
       halo=st.integers(0, 600))
def test_clipped_cores_partition_the_axis_on_the_stride(n, tile, mult, halo):
    tiles = axis_tiles(n, tile, mult, halo)
    covered = np.zeros(n, int)
    for t in tiles:
        covered[t.core_start:t.core_stop] += 1
        assert t.core_start % mult == 0 and t.read_start % mult == 0  # every strided layer in phase
        assert 0 <= t.read_start <= t.core_start < t.core_stop <= t.read_stop <= n  # clipped to the image
        assert t.core_start - t.read_start == min(t.core_start, -(-halo // mult) * mult)  # the halo, or the border
    assert (covered == 1).all(), "every pixel is owned by exactly one tile"
    cores = [t.core_stop - t.core_start for t in tiles]
    assert max(cores) <= -(-max(tile, mult) // mult) * mult  # never larger than asked (rounded to the stride)
    assert len(tiles) == -(-n // cores[0])  # balanced: no sliver tile beyond what the count needs


@settings(max_examples=100, deadline=None)
@given(h=st.integers(1, 700), w=st.integers(1, 700), tile=st.integers(16, 400), halo=st.integers(0, 100),
       margin=st.integers(0, 64))
def test_grid_out_windows_cover_cores_and_stay_inside(h, w, tile, halo, margin):
    g = TileGrid(h, w, tile, halo, 8)
    seen = np.zeros((h, w), int)
    for t in g:
        c = t.core
        seen[int(c.row_off):int(c.row_off + c.height), int(c.col_off):int(c.col_off + c.width)] += 1
        ow = g.out_window(t, margin)
        sr, sc = window_slices(c, ow)
        assert sr.start >= 0 and sc.start >= 0 and sr.stop <= ow.height and sc.stop <= ow.width
        assert 0 <= ow.row_off and ow.row_off + ow.height <= h and 0 <= ow.col_off and ow.col_off + ow.width <= w
        rr, rc = window_slices(ow, t.read) if margin <= g.halo else (slice(0, 0), slice(0, 0))
        assert rr.start >= 0 and rc.start >= 0
    assert (seen == 1).all()


def test_mirror_border_keeps_equal_shapes():
    tiles = axis_tiles(1030, 512, 32, 64, border="mirror")
    assert {t.read_stop - t.read_start for t in tiles} == {352 + 128}  # balanced cores (1030 / 3 -> 352), full windows
    assert tiles[0].read_start == -64 and tiles[-1].read_stop > 1030


def test_grid_read_windows_include_halo():
    g = TileGrid(300, 500, 128, halo=10, multiple=8)
    assert g.halo == 16  # rounded up to the stride
    t = g.tile(1, 2)
    assert t.read.height == t.core.height + 32 and t.read.width == t.core.width + 32
    sr, sc = t.core_in_tile
    assert sr.stop - sr.start == t.core.height and sc.stop - sc.start == t.core.width
    corner = g.tile(0, 0)
    assert corner.read.row_off == 0 and corner.read.col_off == 0  # clipped, not mirrored
    assert len(list(g)) == len(g) == g.shape[0] * g.shape[1]


def test_bad_geometry_is_refused():
    with pytest.raises(ValueError):
        TileGrid(100, 100, 0)
    with pytest.raises(ValueError):
        TileGrid(100, 100, 64, halo=-1)
    with pytest.raises(ValueError):
        axis_tiles(0, 64)


def test_reflect_indices_match_numpy_reflect_pad():
    for n in (1, 2, 5, 9):
        a = np.arange(n)
        padded = np.pad(a, 23, mode="reflect") if n > 1 else np.zeros(n + 46, int)
        assert (reflect_indices(-23, n + 23, n) == padded).all()


def test_blend_ramps_sum_to_one_across_seams():
    g = TileGrid(1000, 1000, 256, halo=32, multiple=1)
    m = blend_margin(g)
    assert 0 < m <= 32
    total = np.zeros(1000)
    for i, t in enumerate(g.cols):
        lo, hi = max(0, t.core_start - m), min(1000, t.core_stop + m)
        total[lo:hi] += ramp_weights(g.cols, i, m, lo, hi)
    assert np.allclose(total, 1.0, atol=1e-6)
    # no taper at the image border: the first and last pixels get full weight from one tile
    w0 = ramp_weights(g.cols, 0, m, 0, 10)
    assert np.allclose(w0, 1.0)
