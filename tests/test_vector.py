"""uhr vectorize: streamed polygons equal the whole map's, seams and holes included; files and errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from pyogrio.raw import read as ogr_read
from rasterio import features
from shapely.geometry import shape

from uhrcli.errors import InputError, OutputError, UsageError
from uhrcli.vector import vectorize
from uhrcli.vector.polygonize import polygonize_bands

from .conftest import EXAMPLES, run_uhr

DEMO = Path(__file__).resolve().parents[1] / "examples" / "isdnet-r18-slim-austin.safetensors"


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Path:
    """What a user runs: `uhr segment --probs --vector` with the demo model -> m.tif, m_probs.tif, m.gpkg."""
    d = tmp_path_factory.mktemp("vector")
    r = run_uhr("segment", str(EXAMPLES / "austin_inria_crop.tif"), "-o", str(d / "m.tif"), "--weights", str(DEMO),
                "--probs", "--vector", str(d / "m.gpkg"), "-q")
    assert r.returncode == 0, r.stderr
    return d


def load(path: Path) -> tuple[dict, np.ndarray, dict[str, np.ndarray]]:
    meta, _, wkb, fields = ogr_read(path)
    return meta, shapely.from_wkb(wkb), dict(zip(meta["fields"], fields))


def canon(geoms) -> list[bytes]:
    return sorted(shapely.to_wkb(shapely.normalize(np.asarray(geoms, dtype=object))))


def write_map(path: Path, arr: np.ndarray, names: list[str] | None = None, nodata: int | None = 255) -> Path:
    prof = dict(driver="GTiff", width=arr.shape[1], height=arr.shape[0], count=1, dtype=arr.dtype.name,
                crs="EPSG:32633", transform=Affine(0.5, 0, 500000, 0, -0.5, 4000000), nodata=nodata)
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(arr[None])
        if names:
            dst.update_tags(class_names=json.dumps(names))
    return path


def regions(arr: np.ndarray, rows: int, connectivity: int = 4, classes=None) -> list:
    wanted = np.zeros(65536, bool)
    wanted[list(classes) if classes is not None else range(255)] = True
    return list(polygonize_bands(lambda a, b: arr[a:b], arr.shape[0], arr.shape[1], wanted, rows, connectivity))


def gdal_whole(arr: np.ndarray, connectivity: int, classes) -> list:
    """The reference: GDAL's polygonize on the whole array, made valid."""
    mask = np.isin(arr, list(classes))
    return [shapely.make_valid(shape(g)) for g, _ in features.shapes(arr, mask=mask, connectivity=connectivity)]


# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rows", [256, 97])
def test_demo_map_tiled_equals_whole(demo: Path, tmp_path: Path, rows: int) -> None:
    """Background (one region around every building, holes and all) and buildings, band by band vs whole."""
    whole = vectorize(demo / "m.tif", tmp_path / "whole.gpkg", classes=[0, 1], rows=1000)
    tiled = vectorize(demo / "m.tif", tmp_path / "tiled.gpkg", classes=[0, 1], rows=rows)
    assert whole.polygons == tiled.polygons > 50
    _, gw, fw = load(tmp_path / "whole.gpkg")
    _, gt, ft = load(tmp_path / "tiled.gpkg")
    assert canon(gw) == canon(gt)  # identical vertices after normalisation, not only the same point sets
    order_w, order_t = np.lexsort((fw["pixels"], fw["area"])), np.lexsort((ft["pixels"], ft["area"]))
    assert all(shapely.equals(a, b) for a, b in zip(gw[order_w], gt[order_t]))
    for k in ("class_id", "pixels", "area"):
        assert sorted(fw[k]) == sorted(ft[k])
    with rasterio.open(demo / "m.tif") as ds:
        arr, tr = ds.read(1), ds.transform
    ref = [shapely.make_valid(shape(g)) for g, _ in features.shapes(arr, mask=arr < 2, transform=tr)]
    assert len(ref) == tiled.polygons
    assert all(shapely.equals(a, b) for a, b in zip(sorted(ref, key=lambda g: (g.area, g.centroid.x)),
                                                    sorted(gt, key=lambda g: (g.area, g.centroid.x))))
    assert (shapely.is_valid(gt)).all()


def synthetic() -> np.ndarray:
    a = np.zeros((30, 40), np.uint8)
    a[2:13, 2:12] = 1
    a[5:10, 5:9] = 0  # a hole straddling the seam at row 7
    a[6, 20] = 1
    a[7, 21] = 1  # touches (6, 20) only at a corner, across the seam at row 7
    a[0:30, 30:33] = 1  # spans every band
    a[14:21, 14:16] = 2
    a[14:21, 18:20] = 2
    a[20:22, 14:20] = 2  # a U: two arms that join two bands below where they start
    a[23:25, 2:8] = 1
    a[25:28, 2:8] = 2  # class 1 above class 2 at a seam: separate polygons
    a[5, 35] = 255  # nodata is never a polygon
    return a


@pytest.mark.parametrize("rows", [1, 2, 3, 7, 30])
def test_synthetic_seams(rows: int) -> None:
    a = synthetic()
    got4 = regions(a, rows, 4, classes=[1, 2])
    assert sorted((r.cls, r.pixels) for r in got4) == [(1, 1), (1, 1), (1, 12), (1, 90), (1, 90), (2, 18), (2, 36)]
    ring = next(r for r in got4 if r.cls == 1 and r.pixels == 90 and r.geometry.bounds[0] == 2)
    assert ring.geometry.geom_type == "Polygon" and len(ring.geometry.interiors) == 1
    assert ring.geometry.interiors[0].bounds == (5, 5, 9, 10)
    assert canon([r.geometry for r in got4]) == canon([r.geometry for r in regions(a, 30, 4, [1, 2])])
    ref = gdal_whole(a, 4, [1, 2])
    assert len(ref) == len(got4)
    for g in ref:
        assert sum(bool(shapely.equals(g, r.geometry)) for r in got4) == 1
    got8 = regions(a, rows, 8, classes=[1, 2])
    assert sorted((r.cls, r.pixels) for r in got8) == [(1, 2), (1, 12), (1, 90), (1, 90), (2, 18), (2, 36)]
    corner = next(r for r in got8 if r.pixels == 2)
    assert shapely.equals(corner.geometry, shapely.union_all([shapely.box(20, 6, 21, 7), shapely.box(21, 7, 22, 8)]))


@pytest.mark.parametrize("connectivity", [4, 8])
def test_random_maps_tiled_equal_gdal(connectivity: int) -> None:
    """Noise maps have every kind of seam crossing, hole and corner contact there is."""
    rng = np.random.default_rng(connectivity)
    for trial in range(6):
        a = rng.choice(np.array([0, 1, 2, 255], np.uint8), size=(37, 29), p=[0.45, 0.3, 0.2, 0.05])
        whole = canon([r.geometry for r in regions(a, 37, connectivity, [1, 2])])
        ref = gdal_whole(a, connectivity, [1, 2])
        assert len(ref) == len(whole)
        assert sorted(shapely.area(ref)) == sorted(shapely.area(shapely.from_wkb(whole)))
        for rows in (1, 4, 11):
            got = regions(a, rows, connectivity, [1, 2])
            assert canon([r.geometry for r in got]) == whole, (trial, rows)
            assert sum(r.pixels for r in got) == int(np.isin(a, [1, 2]).sum())


# --------------------------------------------------------------------------------------------------------------
def test_segment_vector_gpkg_crs_attributes(demo: Path, tmp_path: Path) -> None:
    """The GeoPackage `uhr segment --vector` wrote: the map's CRS, names from its tags, areas in m², and each
    polygon's mean probability equal to the mean of the probability raster over its pixels."""
    from pyogrio import read_info

    info = read_info(demo / "m.gpkg")
    assert info["crs"] == "EPSG:26914" and info["geometry_type"] == "Polygon"
    assert info["layer_metadata"]["area_units"] == "m²"
    meta, geoms, f = load(demo / "m.gpkg")
    assert set(f["class_name"]) == {"building"} and set(f["class_id"]) == {1}  # background left out by default
    np.testing.assert_allclose(f["area"], f["pixels"] * 0.09, rtol=1e-9)
    np.testing.assert_allclose(shapely.area(geoms), f["area"], rtol=1e-12)
    with rasterio.open(demo / "m.tif") as ds, rasterio.open(demo / "m_probs.tif") as ps:
        cls, probs, tr = ds.read(1), ps.read(), ds.transform
    assert f["pixels"].sum() == (cls == 1).sum()
    labels = features.rasterize(((g, i + 1) for i, g in enumerate(geoms)), out_shape=cls.shape, transform=tr)
    assert (cls[labels > 0] == 1).all()
    sums = np.bincount(labels.ravel(), weights=probs[1].ravel().astype(float), minlength=len(geoms) + 1)[1:]
    np.testing.assert_allclose(f["mean_prob"], sums / f["pixels"] / 255, rtol=1e-9)
    assert (f["mean_prob"] >= 127 / 255).all()  # the class a pixel got is its most probable one


@pytest.mark.parametrize("suffix", [".fgb", ".geojson", ".json"])
def test_formats_round_trip(demo: Path, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"p{suffix}"
    r = vectorize(demo / "m.tif", out, probs=demo / "m_probs.tif")
    meta, geoms, f = load(out)
    _, ref_geoms, ref = load(demo / "m.gpkg")
    assert meta["crs"] == "EPSG:26914" and r.polygons == len(geoms) == len(ref_geoms)
    assert canon(geoms) == canon(ref_geoms)
    for k in ("class_id", "class_name", "pixels"):
        assert sorted(f[k]) == sorted(ref[k])
    np.testing.assert_allclose(sorted(f["mean_prob"]), sorted(ref["mean_prob"]), rtol=1e-9)
    assert not list(tmp_path.glob(".*uhr-tmp*"))


def test_geoparquet(demo: Path, tmp_path: Path) -> None:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        from uhrcli.errors import MissingDependencyError

        with pytest.raises(MissingDependencyError, match="parquet"):
            vectorize(demo / "m.tif", tmp_path / "p.parquet")
        return
    vectorize(demo / "m.tif", tmp_path / "p.parquet")
    t = pq.read_table(tmp_path / "p.parquet")
    geo = json.loads(t.schema.metadata[b"geo"])
    assert geo["primary_column"] == "geometry" and geo["columns"]["geometry"]["encoding"] == "WKB"
    assert geo["columns"]["geometry"]["crs"]["id"] == {"authority": "EPSG", "code": 26914}
    _, ref_geoms, _ = load(demo / "m.gpkg")
    assert canon(shapely.from_wkb(t["geometry"].to_pylist())) == canon(ref_geoms)


def test_simplify_and_min_area(demo: Path, tmp_path: Path) -> None:
    _, exact, fe = load(demo / "m.gpkg")
    vectorize(demo / "m.tif", tmp_path / "s.gpkg", simplify=0.6, min_area=5.0)
    _, simp, fs = load(tmp_path / "s.gpkg")
    assert shapely.is_valid(simp).all() and (fs["area"] >= 5.0).all()
    assert shapely.get_num_coordinates(simp).sum() < 0.8 * shapely.get_num_coordinates(exact).sum()
    kept = exact[np.asarray([shapely.simplify(g, 0.6, preserve_topology=True).area >= 5.0 for g in exact])]
    assert len(simp) == len(kept) < len(exact)
    tree = shapely.STRtree(kept)
    for g, px in zip(simp, fs["pixels"]):  # each stays within the tolerance of the region it simplifies
        src = kept[tree.nearest(g.centroid)]
        assert round(src.area / 0.09) == px
        # GEOS drops a ring's start vertex by a looser rule: measured up to 0.68 m here, never a pixel more
        assert shapely.hausdorff_distance(g, src, densify=0.02) <= 0.6 + 0.3 * 2 ** 0.5


def test_png_map_without_metadata(tmp_path: Path) -> None:
    """A PNG class map has no CRS and no class names: pixel coordinates, class_N names, 255 still nodata."""
    from PIL import Image

    a = synthetic()
    Image.fromarray(a).save(tmp_path / "m.png")
    r = vectorize(tmp_path / "m.png", tmp_path / "m.gpkg", classes=[1, 2])
    assert r.area_units == "pixel²" and any("no georeferencing" in n for n in r.notes)
    meta, geoms, f = load(tmp_path / "m.gpkg")
    assert meta["crs"] is None and sorted(f["pixels"]) == [1, 1, 12, 18, 36, 90, 90]
    assert set(f["class_name"]) == {"class_1", "class_2"}
    assert canon(geoms) == canon([r.geometry for r in regions(a, 30, 4, [1, 2])])


# --------------------------------------------------------------------------------------------------------------
def test_cli_errors_and_overwrite(demo: Path, tmp_path: Path) -> None:
    m = str(demo / "m.tif")
    r = run_uhr("vectorize", m, "-o", str(tmp_path / "p.jpg"))
    assert r.returncode == 2 and "unknown vector format '.jpg'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())
    out = tmp_path / "p.gpkg"
    out.write_bytes(b"old")
    r = run_uhr("vectorize", m, "-o", str(out))
    assert r.returncode == 73 and "--overwrite" in r.stderr and out.read_bytes() == b"old"
    r = run_uhr("vectorize", m, "-o", str(out), "--overwrite", "--classes", "1", "-q")
    assert r.returncode == 0, r.stderr
    assert load(out)[0]["crs"] == "EPSG:26914" and not list(tmp_path.glob(".*uhr-tmp*"))
    r = run_uhr("vectorize", m, "-o", str(tmp_path / "q.gpkg"), "--probs", str(EXAMPLES / "austin_inria_crop.tif"))
    assert r.returncode == 65 and "probabilities" in r.stderr and not (tmp_path / "q.gpkg").exists()
    r = run_uhr("vectorize", str(EXAMPLES / "austin_inria_crop.tif"), "-o", str(tmp_path / "q.gpkg"))
    assert r.returncode == 65 and "one band" in r.stderr


def test_api_errors(demo: Path, tmp_path: Path) -> None:
    a = synthetic()
    src = write_map(tmp_path / "m.tif", a, ["background", "roof", "road"])
    with pytest.raises(UsageError, match="nodata"):
        vectorize(src, tmp_path / "o.gpkg", classes=[255])
    with pytest.raises(UsageError, match="simplify"):
        vectorize(src, tmp_path / "o.gpkg", simplify=-1)
    with pytest.raises(UsageError, match="unknown vector format"):
        vectorize(src, tmp_path / "o.tif")
    with pytest.raises(OutputError, match="exists"):
        vectorize(src, src.with_suffix(".gpkg").write_bytes(b"") or src.with_suffix(".gpkg"))
    small = write_map(tmp_path / "small.tif", a[:10])
    with pytest.raises(InputError, match="pixels"):
        vectorize(src, tmp_path / "o.gpkg", probs=small)
    r = vectorize(src, tmp_path / "o.gpkg", rows=7)  # default classes: all but background and nodata
    _, _, f = load(tmp_path / "o.gpkg")
    assert r.per_class == {"roof": 5, "road": 2} and set(f["class_id"]) == {1, 2}


def test_segment_vector_refused_before_work(tmp_path: Path) -> None:
    (tmp_path / "v.gpkg").write_bytes(b"old")
    r = run_uhr("segment", str(EXAMPLES / "austin_inria_crop.tif"), "-o", str(tmp_path / "m.tif"), "--weights",
                str(DEMO), "--vector", str(tmp_path / "v.gpkg"), "-q")
    assert r.returncode == 73 and "v.gpkg" in r.stderr and not (tmp_path / "m.tif").exists()
    r = run_uhr("segment", str(EXAMPLES / "austin_inria_crop.tif"), "-o", str(tmp_path / "m.tif"), "--weights",
                str(DEMO), "--vector", str(tmp_path / "v.jpg"), "-q")
    assert r.returncode == 2 and "unknown vector format" in r.stderr and not (tmp_path / "m.tif").exists()
