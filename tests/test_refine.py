"""uhr refine and uhr segment --refine: the guided filter is He et al.'s, tiled bit for bit as on the whole
image; the CLI keeps the georeferencing; inputs that do not belong together fail in one line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from uhrcli.errors import InputError, UsageError
from uhrcli.refine import refine
from uhrcli.refine.guided import guided_filter, reach

from .conftest import EXAMPLES, run_uhr

CKPT = EXAMPLES.parent / "isdnet-r18-slim-austin.safetensors"


def _box_mean(x: np.ndarray, r: int) -> np.ndarray:
    """Mean over the (2r+1)^2 window clipped to the image, pixel by pixel (the definition, slowly)."""
    h, w = x.shape
    out = np.empty_like(x)
    for i in range(h):
        for j in range(w):
            out[i, j] = x[max(0, i - r):i + r + 1, max(0, j - r):j + r + 1].mean()
    return out


def _reference(guide: np.ndarray, p: np.ndarray, r: int, eps: float) -> np.ndarray:
    """He et al.'s colour guided filter (Algorithm 1 with a 3x3 solve per pixel), in float64."""
    img, q = guide.astype(np.float64) / 255, p.astype(np.float64) / 255
    m_i = np.stack([_box_mean(c, r) for c in img])
    m_p = _box_mean(q, r)
    sigma = np.empty(q.shape + (3, 3))
    cov = np.empty(q.shape + (3,))
    for i in range(3):
        cov[..., i] = _box_mean(img[i] * q, r) - m_i[i] * m_p
        for j in range(3):
            sigma[..., i, j] = _box_mean(img[i] * img[j], r) - m_i[i] * m_i[j]
    a = np.linalg.solve(sigma + eps * np.eye(3), cov[..., None])[..., 0]
    b = m_p - (a * np.moveaxis(m_i, 0, -1)).sum(-1)
    return sum(_box_mean(a[..., i], r) * img[i] for i in range(3)) + _box_mean(b, r)


def test_guided_filter_is_he_et_al(inria_rgb):
    guide = inria_rgb[:, 300:336, 400:431].copy()
    rng = np.random.default_rng(0)
    p = rng.integers(0, 256, (2,) + guide.shape[1:], dtype=np.uint8)
    got = guided_filter(guide, p, 3, 1e-3)
    for k in range(2):
        np.testing.assert_allclose(got[k], _reference(guide, p[k], 3, 1e-3), atol=1e-6)
    grey = guide[:1]
    want = _box_mean(_box_mean(p[0] / 255.0, 2), 2)  # a flat guide explains nothing: a = 0, q = mean of mean(p)
    np.testing.assert_allclose(guided_filter(np.full_like(grey, 7), p[:1], 2, 1e-3)[0], want, atol=1e-6)


def _tiled(guide, p, r, eps, tile_h, tile_w, halo):
    h, w = p.shape[1:]
    out = np.full(p.shape, np.nan, np.float32)
    for r0 in range(0, h, tile_h):
        for c0 in range(0, w, tile_w):
            r1, c1 = min(h, r0 + tile_h), min(w, c0 + tile_w)
            a0, a1, b0, b1 = max(0, r0 - halo), min(h, r1 + halo), max(0, c0 - halo), min(w, c1 + halo)
            q = guided_filter(guide[:, a0:a1, b0:b1], p[:, a0:a1, b0:b1], r, eps)
            out[:, r0:r1, c0:c1] = q[:, r0 - a0:r1 - a0, c0 - b0:c1 - b0]
    return out


@pytest.mark.parametrize("radius,bands", [(3, 3), (5, 1)])
def test_guided_filter_tiled_with_its_reach_is_exact(inria_rgb, radius, bands):
    guide = inria_rgb[:bands, 100:261, 200:337].copy()
    rng = np.random.default_rng(radius)
    p = rng.integers(0, 256, (3,) + guide.shape[1:], dtype=np.uint8)
    whole = guided_filter(guide, p, radius, 1e-3)
    assert np.array_equal(_tiled(guide, p, radius, 1e-3, 40, 33, reach(radius)), whole)  # bit for bit
    # one pixel less of halo and the seams show: the halo is the filter's reach, not more than needed
    assert not np.array_equal(_tiled(guide, p, radius, 1e-3, 40, 33, reach(radius) - 1), whole)


@pytest.fixture(scope="module")
def small_case(tmp_path_factory) -> tuple[Path, Path]:
    """A georeferenced 200 x 160 crop of the bundled image and the demo model's probabilities for it."""
    d = tmp_path_factory.mktemp("refine")
    img = d / "crop.tif"
    with rasterio.open(EXAMPLES / "austin_inria_crop.tif") as src:
        win = Window(700, 300, 160, 200)
        prof = {**src.profile, "width": 160, "height": 200, "transform": src.window_transform(win),
                "tiled": False}
        prof.pop("blockxsize", None), prof.pop("blockysize", None)
        with rasterio.open(img, "w", **prof) as dst:
            dst.write(src.read(window=win))
    res = run_uhr("segment", str(img), "-o", str(d / "seg.tif"), "--weights", str(CKPT), "--probs", "--quiet")
    assert res.returncode == 0, res.stderr
    return img, d / "seg_probs.tif"


def test_cli_refine_end_to_end(small_case, tmp_path):
    img, probs = small_case
    out = tmp_path / "refined.tif"
    res = run_uhr("refine", str(img), str(probs), "-o", str(out), "--probs", "--radius", "3", "--tile", "64")
    assert res.returncode == 0, res.stderr
    assert "MP/s" in res.stdout
    with rasterio.open(img) as a, rasterio.open(probs) as b, rasterio.open(out) as c, \
            rasterio.open(tmp_path / "refined_probs.tif") as d:
        guide, p, cls, q = a.read(), b.read(), c.read(1), d.read()
        assert c.crs == a.crs and c.transform == a.transform and d.transform == a.transform
        assert c.tags()["class_names"] == b.tags()["class_names"]
    want = np.clip(guided_filter(guide, p, 3, 1e-3), 0, 1)  # the whole image at once
    want /= want.sum(0, keepdims=True)
    assert np.array_equal(cls, want.argmax(0).astype(np.uint8))
    assert np.abs(q.astype(int) - np.rint(want * 255)).max() <= 1
    assert 0 < (cls == 1).mean() < 0.9 and not np.array_equal(q, p)  # refined, not copied
    assert not [x.name for x in tmp_path.iterdir() if x.name.startswith(".")]  # no temp or lock file left


def test_segment_refine_equals_segment_then_refine(small_case, tmp_path):
    img, probs = small_case
    out = tmp_path / "map.tif"
    res = run_uhr("segment", str(img), "-o", str(out), "--weights", str(CKPT), "--refine", "guided", "--quiet")
    assert res.returncode == 0, res.stderr
    refine(img, probs, tmp_path / "two_steps.tif")
    with rasterio.open(out) as a, rasterio.open(tmp_path / "two_steps.tif") as b:
        assert np.array_equal(a.read(), b.read())
    assert sorted(x.name for x in tmp_path.iterdir()) == ["map.tif", "two_steps.tif"]  # work folder gone


def _assert_one_line(res):
    assert res.returncode != 0, res.stdout + res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in res.stderr, res.stderr
    return lines[0]


def test_bad_inputs_fail_in_one_line(small_case, tmp_path):
    img, probs = small_case
    out = tmp_path / "x.tif"
    big = EXAMPLES / "austin_inria_crop.tif"
    line = _assert_one_line(run_uhr("refine", str(big), str(probs), "-o", str(out)))
    assert "160x200" in line and "1000x1000" in line  # the sizes that do not match
    line = _assert_one_line(run_uhr("refine", str(img), str(probs), "-o", str(out), "--bands", "1,2"))
    assert "2 band(s)" in line
    with pytest.raises(UsageError, match="--method"):
        refine(img, probs, out, method="nope")
    with pytest.raises(UsageError, match="GeoTIFF"):
        refine(img, probs, tmp_path / "x.zarr")
    floats = tmp_path / "in" / "floats.tif"
    floats.parent.mkdir()
    with rasterio.open(probs) as src:
        with rasterio.open(floats, "w", **{**src.profile, "dtype": "float32"}) as dst:
            dst.write(src.read().astype(np.float32) / 255)
    with pytest.raises(InputError, match="uint8"):  # float probabilities are not what uhr segment writes
        refine(img, floats, out)
    assert [p.name for p in tmp_path.iterdir()] == ["in"]  # nothing written, no lock left


def test_dense_crf_snaps_probabilities_to_image_edges():
    pytest.importorskip("pydensecrf.densecrf")
    from uhrcli.refine.crf import CrfParams, dense_crf

    # two flat colours split at column 20; the probabilities put the edge at column 26 and are unsure near it
    img = np.zeros((3, 32, 48), np.uint8)
    img[:, :, 20:] = 200
    fg = np.where(np.arange(48) >= 26, 0.8, 0.2).astype(np.float32)
    p = np.broadcast_to(fg, (1, 32, 48)).copy()
    q = dense_crf(img, p, CrfParams(bilateral_sxy=20, bilateral_srgb=10, bilateral_compat=10))
    assert q.shape == p.shape
    assert (q[0, :, 20:26] > 0.5).all() and (q[0, :, :20] < 0.5).all()  # the edge moved to the image's


def test_crf_without_its_extra_names_it(small_case, tmp_path):
    from uhrcli.errors import MissingDependencyError
    from uhrcli.refine import crf

    if crf.available():
        pytest.skip("pydensecrf2 is installed here")
    img, probs = small_case
    with pytest.raises(MissingDependencyError, match="pydensecrf2"):
        refine(img, probs, tmp_path / "x.tif", method="crf")
    assert not list(tmp_path.iterdir())
