"""Tiling changes nothing: `uhr segment` equals the model's own whole-image forward on the unpadded image.

Tiles are clipped to the image (the network pads at the border as on the whole image), start on the
total stride, resize between scales in the whole image's coordinates, and the non-local statistics are
image-wide. Checked on sizes that are not multiples of 32 and on tiles of 512 and 1024 for the default
model and the baselines, with random weights whose fusion gates and final biases are non-zero.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import tifffile
import torch
import zarr

from uhrcli.engine import Preprocess
from uhrcli.io.readers import open_reader
from uhrcli.io.scaling import make_scaler
from uhrcli.models import build_model, save_checkpoint
from uhrcli.segment import segment

from .conftest import EXAMPLES, sha256

MODELS = ["isdnet-r18", "fcn-tiny", "deeplabv3-r18-down4"]
SIZES = [(1000, 1000), (1111, 777), (2448, 2448)]


def mosaic(rgb: np.ndarray, h: int, w: int) -> np.ndarray:
    """An h x w real-texture image (mirrored copies of the aerial crop), (h, w, 3)."""
    tex = rgb.transpose(1, 2, 0)
    big = np.concatenate([tex, tex[:, ::-1]], 1)
    big = np.concatenate([big, big[::-1]], 0)
    reps = -(-max(h, w) // big.shape[0])
    return np.ascontiguousarray(np.tile(big, (reps, reps, 1))[:h, :w])


FINAL = ("conv_seg.conv_out", "classifier", "decode_head.conv_seg")  # each model's last 1x1 convolution


@torch.inference_mode()
def random_weights(name: str, path, sample: np.ndarray, seed: int = 2):
    """Seeded weights with perturbed BN statistics, open fusion gates and a non-zero final bias; the last
    layer is rescaled so each class's logit has mean 0 and std 1 on `sample` (H, W, 3): every class takes
    part in the map (random networks otherwise tend to predict one class everywhere)."""
    torch.manual_seed(seed)
    m = build_model(name, "random", num_classes=3)
    g = torch.Generator().manual_seed(seed + 1)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.copy_(torch.empty_like(mod.running_mean).uniform_(-0.1, 0.1, generator=g))
            mod.running_var.copy_(torch.empty_like(mod.running_var).uniform_(0.8, 1.2, generator=g))
    params = dict(m.named_parameters())
    for n, p in params.items():
        if n.endswith(("g1", "g2")):
            p.fill_(0.5)
    mean = torch.tensor(m.info.mean).view(1, 3, 1, 1)
    std = torch.tensor(m.info.std).view(1, 3, 1, 1)
    x = (torch.from_numpy(sample.transpose(2, 0, 1).astype(np.float32))[None] - mean) / std
    logits = m(x)
    mu, sd = logits.mean(dim=(0, 2, 3)), logits.std(dim=(0, 2, 3))
    last = next(n for n in FINAL if n + ".bias" in params)
    w, b = params[last + ".weight"], params[last + ".bias"]
    w.copy_(w / sd.view(-1, 1, 1, 1))
    b.copy_((b - mu) / sd + torch.randn(b.shape, generator=g) * 0.02)
    assert b.abs().min() > 0
    save_checkpoint(m, path, model_kwargs={"num_classes": 3})
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory, inria_rgb):
    d = tmp_path_factory.mktemp("exact")
    sample = mosaic(inria_rgb, 512, 512)
    return {name: random_weights(name, d / f"{name}.safetensors", sample) for name in MODELS}


@torch.inference_mode()
def whole_forward(weights_path, src) -> tuple[np.ndarray, np.ndarray]:
    """The reference a user holds: the model's own forward on the whole, unpadded image."""
    net = build_model(None, weights_path)
    with open_reader(src) as r:
        pre = Preprocess(make_scaler(r), net.info.mean, net.info.std)
        x = pre(r.read(rasterio.windows.Window(0, 0, r.width, r.height)))[None]
    p = torch.softmax(net(torch.from_numpy(x)), 1)[0].numpy()
    return p.argmax(0), np.clip(np.rint(p * 255), 0, 255).astype(int)


def zarr_out(path) -> tuple[np.ndarray, np.ndarray]:
    g = zarr.open_group(str(path), mode="r")
    return np.asarray(g["classes"][:]), np.asarray(g["probs"][:]).astype(int)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("h,w", SIZES)
def test_segment_equals_whole_image_forward(tmp_path, inria_rgb, weights, name, h, w):
    src = tmp_path / "img.tif"
    tifffile.imwrite(src, mosaic(inria_rgb, h, w), tile=(256, 256), compression="zlib")
    ref_c, ref_p = whole_forward(weights[name], src)
    shares = np.bincount(ref_c.ravel(), minlength=3) / ref_c.size
    assert (shares > 0.01).sum() >= 2, f"the reference map must be varied for the test to mean anything: {shares}"
    for tile in (512, 1024):
        out = segment(str(src), tmp_path / f"t{tile}.zarr", weights=str(weights[name]), tile=tile, probs=True)[0]
        c, p = zarr_out(out.output)
        agree = (c == ref_c).mean()
        close = (np.abs(p - ref_p).max(0) <= 1).mean()
        assert agree >= 0.9999, (name, h, w, tile, agree)
        assert close >= 0.999, (name, h, w, tile, close)


def test_mirror_border_is_a_different_function_on_request(tmp_path, inria_rgb, weights):
    """--border mirror (equal tile shapes) is not the whole-image forward at the border; clip is.
    (Even sizes: with odd ones the mirror path's tile-local upsampling shifts every pixel too.)"""
    src = tmp_path / "img.tif"
    tifffile.imwrite(src, mosaic(inria_rgb, 300, 298))
    ref_c, ref_p = whole_forward(weights["fcn-tiny"], src)
    clip = segment(str(src), tmp_path / "c.zarr", weights=str(weights["fcn-tiny"]), tile=128, probs=True)[0]
    mirror = segment(str(src), tmp_path / "m.zarr", weights=str(weights["fcn-tiny"]), tile=128, probs=True,
                     border="mirror")[0]
    _, pc = zarr_out(clip.output)
    _, pm = zarr_out(mirror.output)
    assert np.abs(pc - ref_p).max() <= 1
    assert np.abs(pm - ref_p).max() > 1  # the border differs: the test can fail
    assert np.abs(pm - ref_p)[:, 20:-20, 20:-20].max() <= 1  # but only within the receptive field of it


def test_tiled_deep_branch_is_exact(tmp_path, inria_rgb, weights, monkeypatch):
    """A shrunk view too large for one pass: clipped view tiles and c4 tiles, image-wide pooling, disk stores."""
    from uhrcli.inference import deep

    monkeypatch.setattr(deep, "DEEP_WHOLE_MAX", 64 * 64)
    monkeypatch.setattr(deep, "DEEP_TILE", 96)
    src = tmp_path / "img.tif"
    tifffile.imwrite(src, mosaic(inria_rgb, 1111, 777))
    for name in ("isdnet-r18", "deeplabv3-r18-down4"):
        ref_c, ref_p = whole_forward(weights[name], src)
        out = segment(str(src), tmp_path / f"{name}.zarr", weights=str(weights[name]), tile=512, probs=True,
                      cache_ram=0)[0]  # every deep store in zarr on disk
        c, p = zarr_out(out.output)
        assert (c == ref_c).mean() >= 0.9999 and (np.abs(p - ref_p).max(0) <= 1).mean() >= 0.999, name
    assert not list(tmp_path.glob(".*")), "caches and scratch removed"


@pytest.mark.parametrize("ram,disk", [(1 << 34, 0), (0, 1 << 34), (0, 0)])
def test_cache_tiers_change_nothing(tmp_path, inria_rgb, weights, ram, disk):
    """RAM, disk or no cache (the shallow branch computed again per pass) give the same bytes."""
    from uhrcli.inference import InferOptions
    from uhrcli.inference.raster import infer_raster
    from uhrcli.featcache import CacheBudget
    from uhrcli.io.readers import ArrayReader

    net = build_model(None, weights["isdnet-r18"])
    img = mosaic(inria_rgb, 700, 650).transpose(2, 0, 1)
    opts = InferOptions(cache=CacheBudget(ram=ram, disk=disk, dir=tmp_path))
    pred = infer_raster(net, ArrayReader(img), tile=256, probs=True, options=opts)
    ref = infer_raster(net, ArrayReader(img), tile=256, probs=True, options=InferOptions())
    assert np.array_equal(pred.classes, ref.classes) and np.array_equal(pred.probs, ref.probs)
    assert not list(tmp_path.iterdir()), "the disk tier cleans up"


def test_inferer_stats_and_one_shallow_run_per_tile(inria_rgb, weights):
    from uhrcli.inference import InferOptions, make_inferer
    from uhrcli.engine import run_tiles
    from uhrcli.io.readers import ArrayReader
    from uhrcli.scratch import MemoryScratch
    from uhrcli.tiling import TileGrid

    net = build_model(None, weights["isdnet-r18"])
    reader = ArrayReader(mosaic(inria_rgb, 640, 640).transpose(2, 0, 1))
    inf = make_inferer(net, torch.device("cpu"), InferOptions())
    grid = TileGrid(640, 640, 256, inf.halo, inf.multiple)
    pre = Preprocess(make_scaler(reader), net.info.mean, net.info.std)
    events = []
    inf.prepare(reader, pre, grid, lambda e, d, t: events.append(e) if e.startswith("phase") else None)
    run_tiles(reader, grid, inf, MemoryScratch(640, 640, 3, grid.shape, False, False))
    assert inf.stats.tiles_computed == len(grid) and inf.stats.tiles_recomputed == 0
    assert events == ["phase:deep branch", "phase:shallow pass", "phase:fusion pass"]
    inf.close()


# -- nodata: the default model on a real scene with a collar ------------------------------------------------
@pytest.fixture(scope="module")
def collar() -> "Path":
    """The bundled Landsat scene: a nodata (0) collar; at tile 128, 7 of its 42 tiles hold no valid pixel."""
    return EXAMPLES / "landsat_rgb_nodata_collar.tif"


def _interrupt(after: int, event: str):
    seen = {"n": 0}

    def cb(e, done, total):
        if e == event:
            seen["n"] += 1
            if seen["n"] == after:
                raise KeyboardInterrupt

    return cb


def test_nodata_collar_with_the_default_model(tmp_path, collar):
    before = sha256(collar)
    full = segment(str(collar), tmp_path / "full.tif", weights="random", tile=128, batch_size=4)[0]
    assert full.stats.tiles_skipped_nodata == 7 and full.stats.tiles == 35
    with rasterio.open(collar) as a, rasterio.open(full.output) as b:
        valid = a.dataset_mask() > 0
        out = b.read(1)
        assert b.crs == a.crs and b.transform == a.transform
    assert ((out == 255) == ~valid).all(), "nodata stays nodata, and only there"
    assert sha256(collar) == before
    # interrupted during the tiles, then during the shallow pass: --resume finishes with the same bytes
    for event, n in (("tile", 3), ("advance", 2)):
        out_path = tmp_path / f"part_{event}.tif"
        with pytest.raises(KeyboardInterrupt):
            segment(str(collar), out_path, weights="random", tile=128, batch_size=4, progress=_interrupt(n, event))
        assert not out_path.exists()
        res = segment(str(collar), out_path, weights="random", tile=128, batch_size=4, resume=True)[0]
        assert res.resumed and sha256(out_path) == sha256(full.output), event
    assert not list(tmp_path.glob(".*")), "no scratch left"


def test_nodata_collar_cli_default_tile(tmp_path, collar):
    from .conftest import run_uhr

    r = run_uhr("segment", str(collar), "-o", str(tmp_path / "m.tif"), "--weights", "random", "-q")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m.tif").exists() and not list(tmp_path.glob(".*"))


@pytest.mark.parametrize("k", [2, 3, 5])
def test_class_map_is_argmax_first_on_ties(k):
    from uhrcli.inference import class_map

    g = torch.Generator().manual_seed(k)
    logits = torch.randint(-2, 3, (2, k, 17, 23), generator=g).float()  # many ties
    assert torch.equal(class_map(logits)[:, 0].long(), logits.argmax(1))
    one = torch.randn(1, 1, 5, 5, generator=g)
    assert torch.equal(class_map(one)[:, 0].bool(), one[:, 0] >= 0)
