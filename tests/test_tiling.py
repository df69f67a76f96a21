import numpy as np
import pytest
from rasterio.windows import Window

from uhrcli.io.readers import reflect_indices
from uhrcli.merge import blend_margin, ramp_weights
from uhrcli.tiling import TileGrid, axis_tiles


@pytest.mark.parametrize("n,tile,mult", [(1000, 256, 1), (1000, 256, 32), (100, 256, 32), (1024, 512, 32),
                                         (1030, 512, 32), (513, 512, 1), (2448, 512, 32), (7, 4, 2)])
def test_cores_partition_axis_and_windows_stay_aligned(n, tile, mult):
    tiles = axis_tiles(n, tile, mult)
    covered = np.zeros(n, int)
    sizes = {t.stop - t.start for t in tiles}
    assert len(sizes) == 1, "every tile has the same size so tiles batch together"
    for t in tiles:
        covered[t.core_start:t.core_stop] += 1
        assert t.start % mult == 0
        assert t.start <= t.core_start and t.core_stop <= t.stop  # core inside the tile
        assert t.stop - n < mult  # never runs past the edge by a whole stride
        assert t.start >= 0
    assert (covered == 1).all()


def test_grid_read_windows_include_halo():
    g = TileGrid(300, 500, 128, halo=10, multiple=8)
    assert g.halo == 16  # rounded up to the stride
    t = g.tile(1, 2)
    assert t.read.height == t.window.height + 32
    sr, sc = t.core_in_tile
    assert sr.stop - sr.start == t.core.height and sc.stop - sc.start == t.core.width
    assert len(list(g)) == len(g) == g.shape[0] * g.shape[1]


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
