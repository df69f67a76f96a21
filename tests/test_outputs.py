"""Output formats decided by the suffix, and zarr outputs that GDAL, xarray and rioxarray place on the map."""
from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

from uhrcli.errors import UsageError
from uhrcli.io import writers as W
from uhrcli.io.geozarr import level_factors, mean2x2, mode2x2
from uhrcli.segment import segment

from .conftest import EXAMPLES, run_uhr

COLLAR = EXAMPLES / "landsat_rgb_nodata_collar.tif"  # real Landsat RGB, UTM 18N, nodata collar


# --------------------------------------------------------------------------------------------
# 1. formats
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, fmt, expect", [
    ("m.tif", None, "tif"), ("m.TIFF", None, "tif"), ("m.zarr", None, "zarr"), ("m.png", None, "png"),
    ("m.tif", "cog", "cog"), ("m", "tif", "tif"), ("m", "zarr", "zarr"),
])
def test_format_from_suffix(name, fmt, expect):
    assert W.infer_format(Path(name), fmt) == expect


@pytest.mark.parametrize("name, fmt, expect", [
    ("m.shp", None, "--vector FILE"), ("m.gpkg", None, "--vector FILE"), ("m.geojson", "tif", "--vector FILE"),
    ("m.fgb", None, "--vector FILE"), ("m.parquet", None, "--vector FILE"),
    ("m.jpg", None, "unknown output suffix .jpg"), ("mm", None, "--format"), ("mm", None, ".tif"),
    ("m.png", "tif", "does not fit --format tif"), ("m.jpg", "cog", "name it m.tif"), ("m.tif", "webp", "--format must"),
])
def test_bad_output_names_refused(name, fmt, expect):
    with pytest.raises(UsageError, match=None) as e:
        W.infer_format(Path(name), fmt)
    assert expect in str(e.value) and "\n" not in str(e.value)


def test_existing_folder_as_single_output_says_so(tmp_path):
    with pytest.raises(UsageError) as e:
        W.infer_format(tmp_path, None)
    assert "is a folder" in str(e.value) and "map.tif" in str(e.value)


@pytest.mark.parametrize("name, expect", [("m.shp", "--vector"), ("m.jpg", ".jpg"), ("mm", "--format")])
def test_cli_refuses_before_any_work(tmp_path, name, expect):
    res = run_uhr("segment", str(COLLAR), "-o", str(tmp_path / name), "--weights", "random", "--model", "fcn-tiny",
                  "-q")
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error:") and expect in lines[0], res.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a folder


def test_suffixless_name_with_format_writes_that_format(tmp_path):
    out = tmp_path / "mm"
    segment(str(COLLAR), out, model="fcn-tiny", weights="random", fmt="tif", tile=512)
    with rasterio.open(out) as ds:
        assert ds.driver == "GTiff" and ds.crs == CRS.from_epsg(32618)


def test_folder_output_for_many_inputs_unchanged(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for n in ("a", "b"):
        (d / f"{n}.tif").symlink_to(COLLAR)
    res = segment(str(d), tmp_path / "out", model="fcn-tiny", weights="random", tile=512)
    assert sorted(r.output.name for r in res) == ["a.tif", "b.tif"]


# --------------------------------------------------------------------------------------------
# 2. georeferenced zarr
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def zarr_run(tmp_path_factory):
    """One run written as zarr and as GeoTIFF (with probabilities), from the real Landsat scene."""
    d = tmp_path_factory.mktemp("z")
    z = segment(str(COLLAR), d / "m.zarr", model="fcn-tiny", weights="random", tile=256, probs=True)[0]
    t = segment(str(COLLAR), d / "m.tif", model="fcn-tiny", weights="random", tile=256, probs=True)[0]
    return z.output, t.output


def test_xarray_rioxarray_place_it_like_the_input(zarr_run):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("rioxarray")
    zpath, tpath = zarr_run
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # consolidated: xarray has nothing to warn about
        ds = xr.open_zarr(zpath, mask_and_scale=False)
    with rasterio.open(COLLAR) as src, rasterio.open(tpath) as ref, rasterio.open(str(tpath).replace(".tif", "_probs.tif")) as pref:
        assert ds.rio.crs == src.crs
        assert ds.rio.transform().almost_equals(src.transform)
        assert ds.classes.dims == ("y", "x") and ds.probs.dims == ("class", "y", "x")
        t = src.transform
        np.testing.assert_allclose(ds.x.values, t.c + t.a * (np.arange(src.width) + 0.5))
        np.testing.assert_allclose(ds.y.values, t.f + t.e * (np.arange(src.height) + 0.5))
        # the same numbers as the GeoTIFF of the same run
        np.testing.assert_array_equal(ds.classes.values, ref.read(1))
        np.testing.assert_array_equal(ds.probs.values, pref.read())
    assert (ds.classes.values == 255).any()  # the collar stays nodata
    decoded = xr.open_zarr(zpath)  # CF decoding: nodata masked, probabilities as 0..1
    assert float(decoded.probs.max()) <= 1.0 and bool(decoded.classes.isnull().any())


def test_gdal_opens_the_zarr(zarr_run):
    zpath, tpath = zarr_run
    with rasterio.Env() as env:
        if "Zarr" not in env.drivers():
            pytest.skip("this GDAL has no Zarr driver")
    with rasterio.open(f'ZARR:"{zpath}":/classes') as ds, rasterio.open(tpath) as ref:
        assert ds.crs == ref.crs and ds.transform.almost_equals(ref.transform)
        assert ds.nodata == 255
        np.testing.assert_array_equal(ds.read(1), ref.read(1))
    with rasterio.open(f'ZARR:"{zpath}":/levels/2/classes') as lv:
        assert lv.crs == ref.crs
        assert lv.transform.almost_equals(ref.transform @ Affine.scale(2))
        assert lv.shape == (-(-ref.height // 2), -(-ref.width // 2))


def test_multiscales_attribute_lists_levels(zarr_run):
    import zarr

    zpath, _ = zarr_run
    g = zarr.open_group(str(zpath), mode="r")
    ms = {m["name"]: m for m in g.attrs["multiscales"]}
    assert set(ms) == {"classes", "probs"}
    paths = [d["path"] for d in ms["classes"]["datasets"]]
    assert paths[0] == "classes" and all(p in g for p in paths)
    h, w = g["classes"].shape
    for d in ms["classes"]["datasets"][1:]:
        f = int(d["coordinateTransformations"][0]["scale"][0])
        assert g[d["path"]].shape == (-(-h // f), -(-w // f))
    assert max(g[paths[-1]].shape) <= 256


def _brute_mode(a: np.ndarray, nodata: int) -> np.ndarray:
    h, w = -(-a.shape[0] // 2), -(-a.shape[1] // 2)
    out = np.full((h, w), nodata, a.dtype)
    for i in range(h):
        for j in range(w):
            vals = [int(v) for v in a[2 * i:2 * i + 2, 2 * j:2 * j + 2].reshape(-1) if v != nodata]
            if vals:
                c = Counter(vals)
                top = max(c.values())
                out[i, j] = next(v for v in vals if c[v] == top)  # first in row order among the most frequent
    return out


def test_mode_and_mean_reductions_match_brute_force():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, (37, 29)).astype(np.uint8)
    a[rng.random(a.shape) < 0.2] = 255
    np.testing.assert_array_equal(mode2x2(a, 255), _brute_mode(a, 255))
    p = rng.integers(0, 256, (3, 37, 29)).astype(np.uint8)
    valid = a != 255
    got = mean2x2(p, valid)
    for i in range(got.shape[1]):
        for j in range(got.shape[2]):
            m = valid[2 * i:2 * i + 2, 2 * j:2 * j + 2]
            blk = p[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
            want = np.rint(blk[:, m].mean(1)) if m.any() else np.zeros(3)
            np.testing.assert_array_equal(got[:, i, j], want)


def test_streamed_levels_equal_whole_array_reductions(tmp_path):
    """Strips of 512 rows and chunk-buffered level writes give the levels of the whole map."""
    import zarr

    from uhrcli.io.geozarr import write_geozarr

    rng = np.random.default_rng(1)
    h, w = 1300, 700
    classes = rng.integers(0, 3, (h, w)).astype(np.uint8)
    classes[:40] = 255
    probs = rng.integers(0, 256, (3, h, w)).astype(np.uint8)
    spec = W.OutputSpec(height=h, width=w, class_names=("a", "b", "c"), palette=((0, 0, 0),) * 3,
                        crs=CRS.from_epsg(4326), transform=Affine(0.01, 0, 10, 0, -0.01, 50))
    write_geozarr(tmp_path / "s.zarr", spec, lambda a, b: classes[a:b], lambda a, b: probs[:, a:b], 3, 512)
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    assert level_factors(h, w, 512) == [2, 4, 8]
    c, p = classes, probs
    for f in (2, 4, 8):
        p = mean2x2(p, c != 255)
        c = mode2x2(c, 255)
        np.testing.assert_array_equal(g[f"levels/{f}/classes"][:], c)
        np.testing.assert_array_equal(g[f"levels/{f}/probs"][:], p)
    assert g["spatial_ref"].attrs["GeoTransform"].split()[1] == "0.01"
    assert g["x"].attrs["units"] == "degrees_east"
