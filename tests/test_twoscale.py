"""Two-scale ISDNet inference: output independent of the tile size, equal to the whole-image forward."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import tifffile
import torch
import zarr

from uhrcli.models import build_model, list_models, save_checkpoint
from uhrcli.segment import segment

pytestmark = pytest.mark.skipif("isdnet-r18" not in list_models(), reason="isdnet-r18 not registered")


@pytest.fixture(scope="module")
def isd_weights(tmp_path_factory):
    """Seeded ISDNet with perturbed BN statistics so its output varies across the image."""
    torch.manual_seed(0)
    m = build_model("isdnet-r18", "random", num_classes=3)
    g = torch.Generator().manual_seed(1)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.copy_(torch.empty_like(mod.running_mean).uniform_(-0.1, 0.1, generator=g))
            mod.running_var.copy_(torch.empty_like(mod.running_var).uniform_(0.8, 1.2, generator=g))
    for name, p in m.named_parameters():
        if name.endswith(("g1", "g2")):  # fusion gates start at 0 in training: open them so fusion matters
            p.data.fill_(0.5)
    p = tmp_path_factory.mktemp("isd") / "isd.safetensors"
    save_checkpoint(m, p, model_kwargs={"num_classes": 3})
    return p


def _mosaic(rgb: np.ndarray, size: int) -> np.ndarray:
    """A size x size real-texture image (mirrored copies of the aerial crop), (H, W, 3)."""
    tex = rgb.transpose(1, 2, 0)
    big = np.concatenate([tex, tex[:, ::-1]], 1)
    big = np.concatenate([big, big[::-1]], 0)
    reps = -(-size // big.shape[0])
    return np.ascontiguousarray(np.tile(big, (reps, reps, 1))[:size, :size])


def _probs(path):
    g = zarr.open_group(str(path), mode="r")
    return np.asarray(g["classes"][:]), np.asarray(g["probs"][:])


def test_decomposition_equals_whole_image_forward(isd_weights, inria_rgb):
    """Single tile, no halo, size a multiple of 32: the two-scale path is the official whole forward."""
    from uhrcli.engine import Preprocess
    from uhrcli.io.readers import open_reader
    from uhrcli.io.scaling import make_scaler
    from uhrcli.tiling import TileGrid
    from uhrcli.twoscale import TwoScalePredictor

    model = build_model(None, isd_weights)
    img = _mosaic(inria_rgb, 512)
    import tempfile, os

    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "x.tif")
        tifffile.imwrite(src, img)
        reader = open_reader(src)
        pre = Preprocess(make_scaler(reader), model.info.mean, model.info.std)
        grid = TileGrid(512, 512, 512, 0, 32)
        pred = TwoScalePredictor(model, torch.device("cpu"), channels_last=False)
        pred.prepare(reader, pre, grid)
        t = grid.tile(0, 0)
        x = pre(reader.read(t.read))[None]
        got = pred(x, [t])
        reader.close()
    with torch.inference_mode():
        ref = torch.softmax(model(torch.from_numpy(x)), 1).numpy()
    assert np.abs(got - ref).max() < 1e-4


def test_tile_size_independence_2448(tmp_path, isd_weights, inria_rgb):
    src = tmp_path / "big.tif"
    tifffile.imwrite(src, _mosaic(inria_rgb, 2448), tile=(256, 256), compression="zlib")
    whole = segment(str(src), tmp_path / "whole.zarr", weights=str(isd_weights), tile=2448, probs=True)[0]
    tiled = segment(str(src), tmp_path / "tiled.zarr", weights=str(isd_weights), tile=512, probs=True)[0]
    c1, p1 = _probs(whole.output)
    c2, p2 = _probs(tiled.output)
    assert len(np.unique(c1)) >= 2
    assert np.abs(p1.astype(int) - p2.astype(int)).max() <= 1  # at most 1/255
    assert (c1 == c2).mean() >= 0.999


def test_tile_size_independence_on_real_raster(tmp_path, isd_weights, shared_data):
    src = shared_data / "aerial_seg" / "deeposlandia_tanzania_sample_img.tif"
    a = segment(str(src), tmp_path / "a.zarr", weights=str(isd_weights), tile=256, probs=True)[0]
    b = segment(str(src), tmp_path / "b.zarr", weights=str(isd_weights), tile=640, probs=True)[0]
    c1, p1 = _probs(a.output)
    c2, p2 = _probs(b.output)
    assert np.abs(p1.astype(int) - p2.astype(int)).max() <= 1
    assert (c1 == c2).mean() >= 0.999
    with rasterio.open(src) as ds:
        g = zarr.open_group(str(a.output), mode="r")
        assert list(g.attrs["transform"]) == list(ds.transform)[:6]


def test_tiled_deep_branch_with_disk_cache(tmp_path, isd_weights, inria_rgb, monkeypatch):
    """A shrunk view too large for one pass: deep tiles + zarr caches, still tile-size independent."""
    from uhrcli import twoscale

    monkeypatch.setattr(twoscale, "DEEP_WHOLE_MAX", 64 * 64)
    monkeypatch.setattr(twoscale, "DEEP_TILE", 128)
    monkeypatch.setattr(twoscale, "DEEP_CACHE_MEMORY", 0)  # every deep cache on disk
    monkeypatch.setattr(twoscale, "FEATURE_CACHE_BYTES", 0)  # three shallow passes, nothing cached
    monkeypatch.setattr(twoscale, "DISK_FEATURE_CACHE_BYTES", 0)
    src = tmp_path / "img.tif"
    tifffile.imwrite(src, _mosaic(inria_rgb, 1024))
    a = segment(str(src), tmp_path / "a.zarr", weights=str(isd_weights), tile=512, probs=True)[0]
    b = segment(str(src), tmp_path / "b.zarr", weights=str(isd_weights), tile=1024, probs=True)[0]
    c1, p1 = _probs(a.output)
    c2, p2 = _probs(b.output)
    assert np.abs(p1.astype(int) - p2.astype(int)).max() <= 1
    assert (c1 == c2).mean() >= 0.999
    assert a.output.exists() and not list(tmp_path.glob(".*"))


def _run_stats(src, weights, tile, ram, disk):
    """Class map, probabilities and two-scale stats of one in-process run with the given cache budgets."""
    from uhrcli.engine import Preprocess
    from uhrcli.io.readers import open_reader
    from uhrcli.io.scaling import make_scaler
    from uhrcli.tiling import TileGrid
    from uhrcli.twoscale import TwoScalePredictor

    model = build_model(None, weights)
    reader = open_reader(str(src))
    pre = Preprocess(make_scaler(reader), model.info.mean, model.info.std)
    halo = model.info.receptive_field
    grid = TileGrid(reader.height, reader.width, tile, halo, 32)
    pred = TwoScalePredictor(model, torch.device("cpu"), feature_cache_bytes=ram, disk_cache_bytes=disk)
    pred.prepare(reader, pre, grid)
    tiles = list(grid)
    out = [pred(pre(reader.read(t.read))[None], [t]) for t in tiles]
    reader.close()
    return out, pred.stats, pred._cache


def test_shallow_feature_cache_tiers_give_the_same_output(tmp_path, isd_weights, inria_rgb):
    """RAM, disk and partial caching change only where features wait between passes, never the result."""
    src = tmp_path / "img.tif"
    tifffile.imwrite(src, _mosaic(inria_rgb, 768))
    ram, s_ram, _ = _run_stats(src, isd_weights, 256, 1 << 34, 0)
    disk, s_disk, cache = _run_stats(src, isd_weights, 256, 0, 1 << 34)
    part, s_part, _ = _run_stats(src, isd_weights, 256, 0, 0)
    assert s_ram.shallow_passes == 1 and s_ram.cached_tiles == 9 and s_ram.cached_on_disk == 0
    assert s_disk.shallow_passes == 1 and s_disk.cached_on_disk == 9
    assert s_part.shallow_passes == 3 and s_part.cached_tiles == 0
    for a, b, c in zip(ram, disk, part):
        assert np.array_equal(a, b)  # fp32 through .npy is exact
        assert np.abs(a - c).max() < 1e-4
    assert len(cache) == 0 and cache._tmp is not None and not any(Path(cache._tmp.name).iterdir())
    cache.close()


def test_info_estimate_counts_deep_cache(shared_data):
    from uhrcli.inspect import estimate_memory

    small, _ = estimate_memory(1000, 1000, 3, "isdnet-r18")
    big, _ = estimate_memory(50000, 50000, 3, "isdnet-r18")
    assert any("deep" in k for k in small.parts)
    assert big.parts["deep view (uint8, 1/4)"] > 100 * small.parts["deep view (uint8, 1/4)"] / 4
