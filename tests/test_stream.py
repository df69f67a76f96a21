"""Streamed GeoTIFF outputs: bands of any height, in any order, give the file a one-pass write would."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
import tifffile

from uhrcli.io import writers as W
from uhrcli.io.stream import GeoTiffStream


def _spec(h: int, w: int) -> W.OutputSpec:
    return W.OutputSpec(height=h, width=w, class_names=("background", "building"), palette=((0, 0, 0), (255, 0, 0)))


def _map(h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    blobs = (np.add.outer(np.arange(h) // 23, np.arange(w) // 41) % 3 == 0).astype(np.uint8)
    blobs[rng.random((h, w)) < 0.02] = 255
    return blobs


@pytest.mark.parametrize("band", [1000, 96, 700])
def test_bands_in_any_order_give_the_map_and_no_dead_space(tmp_path, band):
    h, w = 1300, 777
    cls = _map(h, w)
    bands = [(r, min(h, r + band)) for r in range(0, h, band)]
    order = np.random.default_rng(band).permutation(len(bands))
    out = GeoTiffStream(tmp_path / "m.tif", _spec(h, w), 1, colormap=True, descriptions=["class"], nodata=255,
                        predictor=None)
    for i in order:
        r0, r1 = bands[i]
        out.write(r0, r1, cls[r0:r1])
    out.close()
    with rasterio.open(tmp_path / "m.tif") as ds:
        assert np.array_equal(ds.read(1), cls)
        assert ds.colormap(1)[1][:3] == (255, 0, 0) and ds.nodata == 255
        assert ds.tags()["class_1"] == "building"
    page = tifffile.TiffFile(tmp_path / "m.tif").pages[0]
    data = sum(page.databytecounts)
    # every block compressed once: the file is its blocks plus headers (a rewritten block leaves its old copy)
    assert (tmp_path / "m.tif").stat().st_size - data < 4096
    # the same map written in one go gives the same bytes
    ref = GeoTiffStream(tmp_path / "ref.tif", _spec(h, w), 1, colormap=True, descriptions=["class"], nodata=255,
                        predictor=None)
    ref.write(0, h, cls)
    ref.close()
    assert (tmp_path / "ref.tif").read_bytes() == (tmp_path / "m.tif").read_bytes()


def test_missing_or_repeated_rows_are_refused(tmp_path):
    h, w = 600, 300
    cls = _map(h, w)
    out = GeoTiffStream(tmp_path / "m.tif", _spec(h, w), 1, colormap=True, descriptions=["class"], nodata=255,
                        predictor=None)
    out.write(0, 200, cls[:200])
    with pytest.raises(ValueError, match="twice"):
        out.write(100, 300, cls[100:300])
    out.write(400, 600, cls[400:])
    with pytest.raises(ValueError, match="never written"):
        out.close()
    out.abort()
    assert not (tmp_path / "m.tif").exists()
