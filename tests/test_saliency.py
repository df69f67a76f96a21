"""`uhr saliency`: formats, names, failures, resizing conventions and the streaming path."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.conftest import DATA, EXAMPLES, run_uhr
from uhrcli.errors import OutputError, UsageError
from uhrcli.io.resample import resample_reader
from uhrcli.models import build_model, list_models
from uhrcli.saliency import load_saliency_model, run_saliency

TINY = dict(model="fcn-tiny", weights="random")
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


def _photos() -> Path:
    return DATA  # chelsea, coffee, astronaut, rocket: small real photos shipped with the tests


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """A folder mixing every input kind, a nested subfolder and one corrupt file."""
    photos = _photos()
    d = tmp_path_factory.mktemp("mixed") / "in"
    (d / "sub").mkdir(parents=True)
    shutil.copy(photos / "chelsea.png", d / "chelsea.png")  # 451x300
    shutil.copy(photos / "rocket.jpg", d / "rocket.jpg")  # 640x427
    base = Image.open(photos / "coffee.png").convert("RGB").resize((150, 100))
    arr16 = (np.asarray(base.convert("L"), np.uint16) * 257)
    Image.fromarray(arr16).save(d / "gray16.png")
    base.convert("L").save(d / "gray8.png")
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 150, dtype=np.uint8), (100, 1))))
    rgba.save(d / "alpha.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    base.resize((90, 60)).save(d / "rotated.jpg", exif=exif.tobytes())
    base.save(d / "web.webp", format="WEBP")
    Image.open(photos / "astronaut.png").convert("RGB").resize((96, 80)).save(d / "sub" / "nested.png")
    data = (photos / "rocket.jpg").read_bytes()
    (d / "corrupt.jpg").write_bytes(data[: len(data) // 3])
    return d


EXPECTED = {  # stem -> (width, height) as displayed
    "chelsea": (451, 300), "rocket": (640, 427), "gray16": (150, 100), "gray8": (150, 100),
    "alpha": (150, 100), "rotated": (60, 90), "web": (150, 100), "sub/nested": (96, 80),
}


def _no_temp(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if "uhr-tmp" in p.name]


def test_mixed_folder_api(mixed: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    errors: list[str] = []
    rep = run_saliency([mixed], out, **TINY, size=64, outputs=("map", "mask", "rgba", "overlay"), recursive=True,
                       on_error=lambda p, m: errors.append(m))
    assert [p.name for p, _ in rep.failed] == ["corrupt.jpg"] and "corrupt.jpg" in errors[0]
    assert len(rep.results) == len(EXPECTED)
    for stem, (w, h) in EXPECTED.items():
        m = Image.open(out / f"{stem}.png")
        assert m.size == (w, h) and m.mode == "L", stem
        mask = np.asarray(Image.open(out / f"{stem}_mask.png"))
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        rgba = Image.open(out / f"{stem}_rgba.png")
        assert rgba.mode == "RGBA" and rgba.size == (w, h)
        assert np.array_equal(np.asarray(rgba)[..., 3], np.asarray(m))  # alpha is the map
        ov = Image.open(out / f"{stem}_overlay.jpg")
        assert ov.format == "JPEG" and ov.size == (w, h) and ov.mode == "RGB"
    assert not list(out.glob("corrupt*"))
    _no_temp(out)
    # 16-bit maps on request, for one file input (named by its stem alone)
    rep16 = run_saliency([mixed / "sub" / "nested.png"], tmp_path / "o16", **TINY, size=64, bit_depth=16)
    p16 = tmp_path / "o16" / "nested.png"
    assert rep16.ok and Image.open(p16).mode in ("I;16", "I") and p16.read_bytes()[24] == 16
    m8 = np.asarray(Image.open(out / "sub" / "nested.png"), np.float64)
    assert np.abs(np.asarray(Image.open(p16), np.float64) / 257 - m8).max() <= 0.51
    # existing outputs refuse the run up front; --skip-existing resumes; --pattern filters
    with pytest.raises(OutputError, match="output exists"):
        run_saliency([mixed], out, **TINY, size=64, recursive=True)
    rep2 = run_saliency([mixed], out, **TINY, size=64, outputs="map,mask,rgba,overlay", recursive=True,
                        skip_existing=True)
    assert len(rep2.skipped) == len(EXPECTED) and not rep2.results and len(rep2.failed) == 1
    rep3 = run_saliency([mixed], tmp_path / "jpg", **TINY, size=64, pattern="*.jpg")
    assert sorted(r.input.name for r in rep3.results) == ["rocket.jpg", "rotated.jpg"]


def test_cli_reports_corrupt_and_resumes(mixed: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["saliency", str(mixed), "-o", str(out), "--model", "fcn-tiny", "--weights", "random", "--size", "64",
            "--recursive", "--output", "map,mask", "--output", "overlay"]
    r = run_uhr(*args)
    assert r.returncode == 1, r.stderr
    bad = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert len(bad) == 1 and "corrupt.jpg" in bad[0]
    assert (out / "sub" / "nested_overlay.jpg").exists() and (out / "rotated_mask.png").exists()
    assert "8 image(s) written, 1 failed, 0 skipped" in r.stdout
    _no_temp(out)
    r2 = run_uhr(*args)
    assert r2.returncode == 73 and "output exists" in r2.stderr
    r3 = run_uhr(*args, "--skip-existing")
    assert "0 image(s) written, 1 failed, 8 skipped" in r3.stdout and r3.returncode == 1


def test_map_equals_direct_computation() -> None:
    """normalise -> resize SxS -> model's logits -> resized once to HxW -> sigmoid -> round(x255), as PGNet's
    test script (which upsamples its 1/4 logits straight to the image size)."""
    path = _photos() / "chelsea.png"
    net = build_model("fcn-tiny", "random", task="saliency", seed=3)
    img = np.asarray(Image.open(path).convert("RGB"), np.float32)
    h, w = img.shape[:2]
    mean = torch.tensor(net.info.mean).view(1, 3, 1, 1)
    std = torch.tensor(net.info.std).view(1, 3, 1, 1)
    x = (torch.from_numpy(img).permute(2, 0, 1)[None] - mean) / std
    x = F.interpolate(x, size=(128, 128), mode="bilinear", align_corners=False)
    with torch.no_grad():
        y = net.forward_logits(x)  # 1/2 of S: no intermediate resize to S
    assert y.shape[-1] == 64
    y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
    ref = torch.round(torch.sigmoid(y)[0, 0] * 255).to(torch.uint8).numpy()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        rep = run_saliency(path, tmp, net=net, size=128)
        got = np.asarray(Image.open(Path(tmp) / "chelsea.png"))
    assert rep.ok and got.shape == (h, w)
    assert np.abs(got.astype(int) - ref).max() <= 1 and (got == ref).mean() > 0.999


def test_streaming_path_matches_in_memory(tmp_path: Path) -> None:
    path = _photos() / "coffee.png"
    net = build_model("fcn-tiny", "random", task="saliency", seed=1)
    run_saliency(path, tmp_path / "mem", net=net, size=96, outputs="map,mask")
    rep = run_saliency(path, tmp_path / "str", net=net, size=96, outputs="map,mask,rgba", stream_pixels=1000,
                       strip_rows=16)
    assert rep.results[0].streamed and any("rgba" in n for n in rep.notes)
    import rasterio

    with rasterio.open(tmp_path / "str" / "coffee.tif") as ds:
        assert ds.profile["tiled"] and ds.compression.value == "DEFLATE" and ds.dtypes[0] == "uint8"
        streamed = ds.read(1)
    mem = np.asarray(Image.open(tmp_path / "mem" / "coffee.png"))
    assert streamed.shape == mem.shape and np.abs(streamed.astype(int) - mem).max() <= 1
    with rasterio.open(tmp_path / "str" / "coffee_mask.tif") as ds:
        assert set(np.unique(ds.read(1))) <= {0, 255}
    assert not (tmp_path / "str" / "coffee_rgba.png").exists()
    _no_temp(tmp_path)


def test_streaming_keeps_georeferencing(tmp_path: Path) -> None:
    src = EXAMPLES / "landsat_rgb_nodata_collar.tif"
    import rasterio

    rep = run_saliency(src, tmp_path, **TINY, size=64, stream_pixels=1000, outputs="map", bit_depth=16)
    assert rep.ok
    with rasterio.open(src) as a, rasterio.open(tmp_path / "landsat_rgb_nodata_collar.tif") as b:
        assert b.crs == a.crs and b.transform == a.transform and b.shape == a.shape and b.dtypes[0] == "uint16"


class CountingReader:
    """An in-memory raster that records the rows of every read."""

    def __init__(self, arr: np.ndarray):
        self.arr = arr
        self.count, self.height, self.width = arr.shape
        self.reads: list[int] = []

    def read(self, window) -> np.ndarray:
        r0, h = int(window.row_off), int(window.height)
        assert int(window.col_off) == 0 and int(window.width) == self.width
        self.reads.append(h)
        return self.arr[:, r0:r0 + h]


@pytest.mark.parametrize("shape,size", [((3, 700, 500), 64), ((3, 50, 40), 96)])
def test_resampler_reads_bounded_strips(shape: tuple[int, int, int], size: int) -> None:
    arr = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
    reader = CountingReader(arr)
    out = resample_reader(reader, size, size, lambda raw: raw.astype(np.float32) / 255, strip_rows=8)
    ref = F.interpolate(torch.from_numpy(arr.astype(np.float32) / 255)[None], size=(size, size), mode="bilinear",
                        align_corners=False)[0].numpy()
    assert np.abs(out - ref).max() < 1e-4
    assert max(reader.reads) <= 8
    assert sum(reader.reads) <= min(shape[1], 2 * size)  # only the rows the output depends on


def test_refusals(tmp_path: Path) -> None:
    path = _photos() / "chelsea.png"
    with pytest.raises(UsageError, match="multiple of 32"):
        run_saliency(path, tmp_path, **TINY, size=100)
    with pytest.raises(UsageError, match="segment model"):
        load_saliency_model("fcn-tiny", "random", {"task": "segment"})
    with pytest.raises(UsageError, match="weights"):
        run_saliency(path, tmp_path, model="fcn-tiny", weights=None)
    with pytest.raises(UsageError, match="--output"):
        run_saliency(path, tmp_path, **TINY, size=64, outputs="map,depth")
    (tmp_path / "a.png").write_bytes(path.read_bytes())
    rep = run_saliency(tmp_path / "a.png", tmp_path / "o", **TINY, size=64, outputs="rgba", stream_pixels=100)
    assert not rep.ok and "rgba" in rep.failed[0][1] and not any((tmp_path / "o").glob("*"))


def _has_pgnet() -> bool:
    import importlib

    try:
        importlib.import_module("uhrcli.models.pgnet")
    except ModuleNotFoundError:
        return False
    return "pgnet" in list_models()


@pytest.mark.skipif(not _has_pgnet(), reason="pgnet is not registered")
def test_pgnet_smoke(tmp_path: Path) -> None:
    path = _photos() / "chelsea.png"
    rep = run_saliency(path, tmp_path, model="pgnet", weights="random", size=256, outputs="map,mask")
    assert rep.ok and rep.model == "pgnet"
    m = Image.open(tmp_path / "chelsea.png")
    assert m.size == (451, 300) and m.mode == "L"


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_device_maps_equal_the_writer_threads_arithmetic(bit_depth):
    """device_maps (what CUDA runs: upsampling, sigmoid, quantisation on the device) gives, on the CPU, exactly
    the maps the writer threads compute from the logits."""
    from uhrcli.saliency import _quantise, device_maps, probability

    logits = torch.randn(1, 40, 56, generator=torch.Generator().manual_seed(0)) * 4
    got = device_maps(logits, 157, 221, ["map", "mask", "overlay"], 0.4, bit_depth)
    prob = probability(logits.clone(), 157, 221)
    assert np.array_equal(got["map"], _quantise(prob, bit_depth)) and got["map"].shape == (157, 221)
    assert got["map"].dtype == (np.uint16 if bit_depth == 16 else np.uint8)
    assert np.array_equal(got["mask"], np.where(prob >= 0.4, 255, 0).astype(np.uint8))
    assert np.array_equal(got["prob"], prob)
    if bit_depth == 16:
        assert np.array_equal(got["map8"], _quantise(prob, 8))
