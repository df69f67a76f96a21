"""uint16 imagery reaches the model with contrast: the checkpoint's recorded scaling, else a percentile stretch."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import rasterio

from uhrcli.errors import UsageError
from uhrcli.io.radiometry import choose_scaler, scaling_record
from uhrcli.io.readers import open_reader
from uhrcli.io.scaling import Scaler
from uhrcli.models.checkpoint import load_checkpoint
from uhrcli.segment import segment

from .conftest import DATA, run_uhr

LANDSAT = DATA / "landsat8_uint16_crop.tif"  # real Landsat 8 uint16 crop (98th percentile ~8,300 of 65,535)
KW = dict(model="fcn-tiny", weights="random", tile=256)

warnings.filterwarnings("ignore", category=PendingDeprecationWarning)


def _pixels():
    with rasterio.open(LANDSAT) as ds:
        return ds.read().reshape(ds.count, -1).astype(np.float64)


def test_uint16_without_record_gets_percentile_stretch():
    px = _pixels()
    with open_reader(LANDSAT) as r:
        scaler, note = choose_scaler(r, "auto", None)
        scaled = scaler(r.read(rasterio.windows.Window(0, 0, r.width, r.height)))
    lo, hi = np.percentile(px, 2, axis=1), np.percentile(px, 98, axis=1)
    span = hi - lo
    # the spread sample of windows finds the whole image's percentiles to within 2% of the band's span
    np.testing.assert_allclose(scaler.offset, lo, atol=0.02 * span.max())
    np.testing.assert_allclose(scaler.offset + 255 / scaler.scale, hi, atol=0.02 * span.max())
    assert 80 < scaled.mean() < 180  # mid-grey, where the full range gives near black:
    assert (px / 257).mean() < 40
    assert "percentile" in note and "--stretch" in note and "uint16" in note and "\n" not in note


def test_nodata_left_out_of_the_stretch(tmp_path):
    with rasterio.open(LANDSAT) as ds:
        data, prof = ds.read(), ds.profile
    data[:, :250] = 0  # a collar of fill
    prof.update(nodata=0)
    src = tmp_path / "collar.tif"
    with rasterio.open(src, "w", **prof) as dst:
        dst.write(data)
    valid = data[:, 250:].reshape(3, -1).astype(np.float64)
    with open_reader(src) as r:
        scaler, _ = choose_scaler(r, "auto", None)
    lo = np.percentile(valid, 2, axis=1)
    np.testing.assert_allclose(scaler.offset, lo, atol=0.02 * (np.percentile(valid, 98, axis=1) - lo).max())
    assert scaler.offset.min() > 1000  # the fill did not drag the low end to 0


def test_explicit_stretch_wins_and_range_keeps_the_old_mapping():
    with open_reader(LANDSAT) as r:
        rng, note = choose_scaler(r, "range", {"stretch": "percentile:2,98", "per_image": True, "dtypes": ["uint16"]})
        assert note is None and rng.describe() == "linear [0, 65535], [0, 65535], [0, 65535]"
        mm, _ = choose_scaler(r, "minmax", None)
        assert mm.describe() != rng.describe()
    with pytest.raises(UsageError, match="range"):
        choose_scaler(None, "bogus", None)


def test_description_round_trip():
    s = Scaler(np.array([7000.5, 10, 0], np.float32), np.array([255 / 1500, 1.0, 0.5], np.float32))
    back = Scaler.from_description(s.describe(), 3)
    assert back.describe() == s.describe()
    assert Scaler.from_description("none", 2).describe() == "none"
    with pytest.raises(UsageError):
        Scaler.from_description(s.describe(), 4)


def test_segment_is_deterministic_and_resume_gets_the_same_numbers(tmp_path):
    ref = segment(str(LANDSAT), tmp_path / "ref.tif", **KW)[0]
    assert ref.scaling.startswith("linear") and "65535" not in ref.scaling
    out = tmp_path / "int.tif"
    count = {"n": 0}

    def stop(event, done, total):
        if event == "tile":
            count["n"] += 1
            if count["n"] == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        segment(str(LANDSAT), out, progress=stop, **KW)
    with pytest.raises(UsageError, match="different"):  # another scaling is part of the fingerprint
        segment(str(LANDSAT), out, resume=True, stretch="range", **KW)
    res = segment(str(LANDSAT), out, resume=True, **KW)[0]
    assert res.resumed and res.scaling == ref.scaling
    with rasterio.open(out) as a, rasterio.open(ref.output) as b:
        np.testing.assert_array_equal(a.read(), b.read())


@pytest.fixture()
def uint16_checkpoint(tmp_path):
    """A real (two-step) `uhr train` run on the Landsat crop, scaled with --stretch range."""
    from uhrcli.train import TrainConfig, train

    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "gt").mkdir()
    (root / "images" / "l1.tif").symlink_to(LANDSAT)
    with rasterio.open(LANDSAT) as ds:
        nir_like = ds.read(3).astype(np.float64)
        prof = ds.profile | dict(count=1, dtype="uint8")
    with rasterio.open(root / "gt" / "l1.tif", "w", **prof) as dst:  # bright ground as the foreground
        dst.write(np.where(nir_like > np.median(nir_like), 255, 0).astype(np.uint8)[None])
    cfg = TrainConfig(data=root, model="fcn-tiny", output=tmp_path / "run", crop=128, batch_size=2, workers=0,
                      steps=2, log_every=1, stretch="range", photometric=False, seed=0)
    return train(cfg).last


def test_train_records_scaling_and_segment_follows_it(tmp_path, uint16_checkpoint):
    _, meta = load_checkpoint(uint16_checkpoint)
    rec = meta["extra"]["scaling"]
    assert rec["stretch"] == "range" and rec["scalers"] == {"uint16x3": "linear [0, 65535], [0, 65535], [0, 65535]"}
    notes = []
    res = segment(str(LANDSAT), tmp_path / "m.tif", weights=str(uint16_checkpoint), tile=256, on_note=notes.append)[0]
    assert res.scaling == "linear [0, 65535], [0, 65535], [0, 65535]"
    assert len(notes) == 1 and "checkpoint's training data" in notes[0]
    # a record for other data does not apply: the input gets the default, and the note says why
    with open_reader(LANDSAT) as r:
        s, note = choose_scaler(r, "auto", scaling_record([open_reader(DATA / "rasterio_world.rgb.tif")], "auto"))
    assert "uint8" in note and "percentile" in note and "65535" not in s.describe()


def test_per_image_record_applies_the_same_method():
    rec = {"stretch": "minmax", "per_image": True, "dtypes": ["uint16"]}
    px = _pixels()
    with open_reader(LANDSAT) as r:
        s, note = choose_scaler(r, "auto", rec)
    assert "minmax per image" in note
    assert np.all(s.offset >= px.min(1)) and np.all(s.offset + 255 / s.scale <= px.max(1) + 1)


def test_cli_says_which_scaling_in_one_line(tmp_path):
    res = run_uhr("segment", str(LANDSAT), "-o", str(tmp_path / "m.tif"), "--weights", "random", "--model",
                  "fcn-tiny", "--tile", "256", "-q")
    assert res.returncode == 0, res.stderr
    notes = [ln for ln in res.stderr.splitlines() if ln.startswith("note:")]
    assert len(notes) == 1 and "2nd and 98th percentiles" in notes[0] and "--stretch" in notes[0], res.stderr
    quiet = run_uhr("segment", str(LANDSAT), "-o", str(tmp_path / "n.tif"), "--weights", "random", "--model",
                    "fcn-tiny", "--tile", "256", "-q", "--stretch", "percentile:2,98")
    assert quiet.returncode == 0 and "note:" not in quiet.stderr
