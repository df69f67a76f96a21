"""What a new user trips on: help texts, `uhr info` on several files, file modes, class names, a finished
training resumed, where benchmarks write."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from .conftest import EXAMPLES, run_uhr

DEMO = EXAMPLES.parent / "isdnet-r18-slim-austin.safetensors"


def test_eval_help_shows_the_run_options():
    res = run_uhr("eval", "--help")
    assert res.returncode == 0
    for opt in ("--weights", "--data", "--model", "segment", "saliency"):
        assert opt in res.stdout, opt


def test_help_texts_keep_their_brackets():
    train = run_uhr("train", "--help").stdout
    assert "[train]" in train and "top-level keys or )" not in train
    assert "percentile[:LOW,HIGH]" in run_uhr("segment", "--help").stdout
    assert "percentile[:LOW,HIGH]" in train
    for opt in ("--data", "--model", "--output"):
        line = next(ln for ln in train.splitlines() if opt in ln)
        assert "Required" in line, line


def test_train_without_data_or_model_is_one_clear_line(tmp_path):
    res = run_uhr("train", "-o", str(tmp_path / "run"))
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "--data" in err[0] and "--model" in err[0] and "--config" in err[0]


def _geotiff(path: Path, crs: str, transform, size=(40, 30)) -> Path:
    import rasterio

    w, h = size
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8", crs=crs,
                       transform=transform, tiled=True, blockxsize=32, blockysize=16) as ds:
        ds.write(np.full((3, h, w), 100, np.uint8))
    return path


def test_info_several_files_and_folders_full_coordinates(tmp_path):
    from rasterio.transform import Affine

    folder = tmp_path / "scenes"
    folder.mkdir()
    polar = _geotiff(folder / "polar.tif", "EPSG:3031", Affine(30.0, 0, 412345.5, 0, -30.0, -2777000.0))
    world = _geotiff(folder / "world.tif", "EPSG:4326", Affine(0.000277777778, 0, -71.123456789, 0, -0.000277777778, 42.5))
    lone = _geotiff(tmp_path / "lone.tif", "EPSG:32618", Affine(0.3, 0, 620000.0, 0, -0.3, 3350000.0), size=(50, 20))
    res = run_uhr("info", str(folder), str(lone))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for p in (polar, world, lone):
        assert str(p) in out
    assert "-2777000.0" in out and "412345.5" in out and "e+" not in out
    assert "-71.123456789" in out and "0.000277778" in out  # degrees keep 9 places
    assert "50 x 20 px" in out and out.count("32 x 16 px") == 3  # blocks in the size's order: W x H
    js = run_uhr("info", str(folder), str(lone), "--json")
    docs = json.loads(js.stdout)
    assert [Path(d["path"]).name for d in docs] == ["polar.tif", "world.tif", "lone.tif"]
    bad = run_uhr("info", str(lone), str(tmp_path / "missing.tif"))
    assert bad.returncode == 1 and str(lone) in bad.stdout
    assert len(bad.stderr.strip().splitlines()) == 1 and "missing.tif" in bad.stderr


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_outputs_get_the_mode_of_the_umask(tmp_path, umask_027):
    from uhrcli.models.checkpoint import export_checkpoint
    from uhrcli.segment import segment

    src = EXAMPLES / "austin_inria_crop.tif"
    segment(str(src), tmp_path / "m.tif", model="fcn-tiny", weights="random", probs=True, preview=True)
    segment(str(src), tmp_path / "m.zarr", model="fcn-tiny", weights="random")
    segment(str(src), tmp_path / "c.tif", model="fcn-tiny", weights="random", fmt="cog")
    export_checkpoint(DEMO, tmp_path / "shared.safetensors")
    for name in ("m.tif", "m_probs.tif", "m_preview.png", "c.tif", "shared.safetensors", "m.zarr/.zgroup",
                 "m.zarr/classes/.zarray"):
        assert _mode(tmp_path / name) == 0o640, name
    assert _mode(tmp_path / "m.zarr") == 0o750


def test_class_names_come_from_the_prediction(tmp_path):
    pred = tmp_path / "pred.tif"
    res = run_uhr("segment", str(EXAMPLES / "austin_inria_crop.tif"), "-o", str(pred), "--weights", str(DEMO), "-q")
    assert res.returncode == 0, res.stderr
    js = tmp_path / "s.json"
    res = run_uhr("eval", "segment", "--pred", str(pred), "--gt", str(EXAMPLES / "austin_inria_crop_buildings.tif"),
                  "--json", str(js))
    assert res.returncode == 0, res.stderr
    assert "building" in res.stdout and "foreground" not in res.stdout
    assert "building" in json.dumps(json.loads(js.read_text()))


def test_resuming_a_finished_training_says_so(tmp_path):
    import csv

    ds = tmp_path / "ds"
    for sub, f in (("images", "austin_inria_crop.tif"), ("masks", "austin_inria_crop_buildings.tif")):
        (ds / sub).mkdir(parents=True)
        (ds / sub / "a.tif").write_bytes((EXAMPLES / f).read_bytes())
    args = ["train", "--data", str(ds), "--model", "fcn-tiny", "-o", str(tmp_path / "run"), "--steps", "2",
            "--crop", "64", "--batch-size", "2", "--workers", "0", "--classes", "2"]
    first = run_uhr(*args, "-q")
    assert first.returncode == 0, first.stderr
    with open(tmp_path / "run" / "metrics.csv") as f:
        loss = [float(r["loss"]) for r in csv.DictReader(f) if r["loss"]][-1]
    again = run_uhr(*args, "--resume")
    assert again.returncode == 0, again.stderr
    assert "already complete" in again.stdout and "nan" not in again.stdout
    assert f"{loss:.4f}" in again.stdout


def test_bench_cache_folder_is_an_option_and_said(tmp_path, monkeypatch):
    from uhrcli.bench import cache_dir

    monkeypatch.setenv("UHR_CACHE_DIR", str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env" / "bench" and cache_dir().is_dir()
    assert cache_dir(tmp_path / "opt") == tmp_path / "opt"
    res = run_uhr("bench", "--pipeline", "--models", "fcn-tiny", "--sizes", "128", "--device", "cpu",
                  "--cache-dir", str(tmp_path / "opt"))
    assert res.returncode == 0, res.stderr
    said = [ln for ln in res.stderr.splitlines() if "cache:" in ln]
    assert len(said) == 1 and str(tmp_path / "opt") in said[0]
    assert list((tmp_path / "opt").glob("synth_*_128.tif"))
