"""Folder runs go on past bad rasters, --skip-existing and --resume finish them, a single input still raises."""
from __future__ import annotations

import os

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from uhrcli.errors import InputError, OutputError
from uhrcli.segment import segment

from .conftest import EXAMPLES, run_uhr

KW = dict(model="fcn-tiny", weights="random", tile=128)


def _crop(dst, r, c, size=200):
    with rasterio.open(EXAMPLES / "landsat_rgb_nodata_collar.tif") as src:
        win = Window(c, r, size, size)
        prof = src.profile | dict(width=size, height=size, transform=src.window_transform(win), tiled=False)
        prof.pop("blockxsize", None), prof.pop("blockysize", None)
        with rasterio.open(dst, "w", **prof) as out:
            out.write(src.read(window=win))


@pytest.fixture()
def folder(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    _crop(d / "a.tif", 100, 100)
    (d / "b.tif").write_text("not a raster\n" * 20)
    _crop(d / "c.tif", 300, 350)
    return d


def _read(p):
    with rasterio.open(p) as ds:
        return ds.read()


def test_bad_raster_reported_and_batch_goes_on(tmp_path, folder):
    seen = []
    res = segment(str(folder), tmp_path / "out", on_error=lambda p, m: seen.append((p.name, m)), **KW)
    assert [r.input.name for r in res] == ["a.tif", "c.tif"]
    assert [p.name for p, _ in res.failed] == ["b.tif"] and not res.ok
    assert seen == [("b.tif", res.failed[0][1])]
    assert "b.tif" in seen[0][1] and "\n" not in seen[0][1]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.tif", "c.tif"]  # nothing half-written


def test_cli_names_each_failure_and_exits_nonzero(tmp_path, folder):
    res = run_uhr("segment", str(folder), "-o", str(tmp_path / "out"), "--weights", "random", "--model", "fcn-tiny",
                  "--tile", "128")
    assert res.returncode == 1, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 2 and "b.tif" in errors[0] and "1 of 3 raster(s) failed: b.tif" in errors[1], res.stderr
    assert "Traceback" not in res.stderr
    assert (tmp_path / "out" / "a.tif").exists() and (tmp_path / "out" / "c.tif").exists()


def test_rerun_refused_then_skip_existing_finishes(tmp_path, folder):
    out = tmp_path / "out"
    segment(str(folder), out, **KW)
    mtime = os.stat(out / "a.tif").st_mtime_ns
    with pytest.raises(OutputError, match="--skip-existing"):
        segment(str(folder), out, **KW)  # before any work: nothing replaced
    assert os.stat(out / "a.tif").st_mtime_ns == mtime
    _crop(folder / "b.tif", 20, 500)  # the bad raster is replaced by a good one
    res = segment(str(folder), out, skip_existing=True, **KW)
    assert [r.input.name for r in res] == ["b.tif"] and res.ok
    assert sorted(p.name for p in res.skipped) == ["a.tif", "c.tif"]
    assert os.stat(out / "a.tif").st_mtime_ns == mtime
    res = segment(str(folder), out, skip_existing=True, probs=True, **KW)  # a new output: every raster again
    assert len(res) == 3 and all((out / f"{n}_probs.tif").exists() for n in "abc")


def test_cli_skip_existing_flag(tmp_path, folder):
    (folder / "b.tif").unlink()
    out = tmp_path / "out"
    args = ("segment", str(folder), "-o", str(out), "--weights", "random", "--model", "fcn-tiny", "--tile", "128")
    assert run_uhr(*args).returncode == 0
    again = run_uhr(*args)
    assert again.returncode == 73 and "--skip-existing" in again.stderr
    skip = run_uhr(*args, "--skip-existing")
    assert skip.returncode == 0 and "2 raster(s) skipped" in skip.stdout, skip.stdout + skip.stderr


def _interrupt_in(name, after_tiles):
    state = {"n": 0, "current": None}

    def cb(event, done, total):
        if event == "start":
            state["n"] = 0
        if event == "tile":
            state["n"] += 1
            if state["current"] == name and state["n"] == after_tiles:
                raise KeyboardInterrupt
    return state, cb


def test_resume_finishes_every_interrupted_output(tmp_path, folder, monkeypatch):
    (folder / "b.tif").unlink()
    _crop(folder / "b.tif", 20, 500)
    ref = segment(str(folder), tmp_path / "ref", **KW)
    out = tmp_path / "out"
    import uhrcli.segment as S

    real = S._segment_one
    state, cb = _interrupt_in("b.tif", 2)

    def tracking(src, *a, **k):
        state["current"] = src.name
        return real(src, *a, **k)

    monkeypatch.setattr(S, "_segment_one", tracking)
    with pytest.raises(KeyboardInterrupt) as e:
        segment(str(folder), out, progress=cb, **KW)
    msg = str(e.value)
    assert "--resume" in msg and "1 of 3 raster(s) finished" in msg and "b.tif" in msg
    assert (out / "a.tif").exists() and not (out / "b.tif").exists() and not (out / "c.tif").exists()
    a_mtime = os.stat(out / "a.tif").st_mtime_ns
    with pytest.raises(OutputError, match="--resume"):
        segment(str(folder), out, **KW)
    res = segment(str(folder), out, resume=True, **KW)
    by = {r.input.name: r for r in res}
    assert by["a.tif"].notes == ["already complete"] and os.stat(out / "a.tif").st_mtime_ns == a_mtime
    assert by["b.tif"].resumed and not by["c.tif"].resumed
    for r in ref:
        np.testing.assert_array_equal(_read(out / r.output.name), _read(r.output))
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no scratch or temporary left


def test_single_input_still_raises(tmp_path, folder):
    with pytest.raises(InputError):
        segment(str(folder / "b.tif"), tmp_path / "b.tif", **KW)
    out = tmp_path / "a.tif"
    segment(str(folder / "a.tif"), out, **KW)
    with pytest.raises(OutputError, match="--overwrite"):
        segment(str(folder / "a.tif"), out, **KW)
    res = segment(str(folder / "a.tif"), out, skip_existing=True, **KW)
    assert len(res) == 0 and [p.name for p in res.skipped] == ["a.tif"]
