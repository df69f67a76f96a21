"""Nothing lost, ever: inputs never replaced, write failures reported and resumable, one run per output,
Ctrl-C, hostile and odd files, and properties of the readers on random rasters of every dtype."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import tifffile
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.transform import from_origin
from rasterio.windows import Window

from uhrcli.errors import UsageError
from uhrcli.io.readers import open_reader
from uhrcli.models import build_model, save_checkpoint
from uhrcli.segment import segment

from .conftest import DATA, run_uhr, sha256

TINY = ("--weights", "random", "--model", "fcn-tiny", "-q")


@pytest.fixture()
def rgb_tif(tmp_path, inria_rgb) -> Path:
    p = tmp_path / "in.tif"
    tifffile.imwrite(p, np.ascontiguousarray(inria_rgb[:, :300, :320].transpose(1, 2, 0)), tile=(64, 64))
    return p


def one_error_line(res: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in res.stderr, res.stderr
    return lines[0]


# -- 1. an output is never an input -----------------------------------------------------------------------
def test_output_that_is_the_input_is_refused_even_with_overwrite(tmp_path, rgb_tif):
    before = sha256(rgb_tif)
    (tmp_path / "sub").mkdir()
    os.link(rgb_tif, tmp_path / "hard.tif")
    (tmp_path / "soft.tif").symlink_to(rgb_tif)
    for out in (rgb_tif, tmp_path / "sub" / ".." / "in.tif", tmp_path / "hard.tif", tmp_path / "soft.tif"):
        res = run_uhr("segment", str(rgb_tif), "-o", str(out), "--overwrite", *TINY)
        assert res.returncode == 73 and "is the input" in one_error_line(res), out
        assert sha256(rgb_tif) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no scratch or lock left"


def test_saliency_never_writes_over_a_photo(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(DATA / "chelsea.png", photos / "cat.png")
    before = sha256(photos / "cat.png")
    res = run_uhr("saliency", str(photos / "cat.png"), "-o", str(photos), "--overwrite", "--model", "fcn-tiny",
                  "--weights", "random", "-q")
    assert res.returncode == 73 and "is the input" in one_error_line(res)
    assert sha256(photos / "cat.png") == before


def test_weights_export_onto_itself_is_refused(tmp_path):
    ck = tmp_path / "m.safetensors"
    save_checkpoint(build_model("fcn-tiny", "random"), ck)
    before = sha256(ck)
    res = run_uhr("weights", "export", str(ck), str(ck), "--overwrite")
    assert res.returncode == 73 and "is the input" in one_error_line(res)
    assert sha256(ck) == before


# -- 2. a disk that fills while the final file is written ---------------------------------------------------
@pytest.fixture()
def small_fs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None or \
            os.system(f"mount -t tmpfs -o size=4m tmpfs {mnt} 2>/dev/null") != 0:
        pytest.skip("mounting a small tmpfs needs root")
    yield mnt
    os.system(f"umount {mnt}")


FILL_AND_RUN = r"""
import os, sys
from uhrcli.io.stream import GeoTiffStream
real = GeoTiffStream.close
def fill_then_close(*a, **k):  # the disk fills just as the GeoTIFF is flushed and closed
    with open(os.path.join({mnt!r}, "filler"), "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536); f.flush()
        except OSError:
            pass
    return real(*a, **k)
GeoTiffStream.close = fill_then_close
sys.argv = ["uhr"] + {args!r}
from uhrcli.cli import main
main()
"""


def test_disk_full_in_the_final_write_keeps_the_scratch_and_resumes(tmp_path, small_fs, rgb_tif):
    ref = segment(str(rgb_tif), tmp_path / "ref.tif", model="fcn-tiny", weights="random", tile=128, probs=True)[0]
    out = small_fs / "res.tif"
    args = ["segment", str(rgb_tif), "-o", str(out), "--tile", "128", "--probs", *TINY]
    res = subprocess.run([sys.executable, "-c", FILL_AND_RUN.format(mnt=str(small_fs), args=args)],
                         capture_output=True, text=True, timeout=300)
    line = one_error_line(res)
    assert res.returncode == 73 and "disk full writing" in line and "--resume" in line, line
    assert not out.exists() and not (small_fs / "res_probs.tif").exists()
    assert not [p for p in small_fs.iterdir() if "uhr-tmp" in p.name]
    assert (small_fs / ".res.tif.uhr-partial").is_dir(), "the finished tiles are kept"
    (small_fs / "filler").unlink()
    res = run_uhr(*args, "--resume")
    assert res.returncode == 0, res.stderr
    assert sha256(out) == sha256(ref.output) and sha256(small_fs / "res_probs.tif") == sha256(ref.probs_output)
    assert not [p for p in small_fs.iterdir() if p.name.startswith(".")]


# -- 3. one run per output ---------------------------------------------------------------------------------
@pytest.fixture()
def slow_job(tmp_path, inria_rgb):
    """A 16-megapixel raster in 256 tiles: a few seconds of work, long enough to be caught in the middle."""
    tex = np.ascontiguousarray(inria_rgb.transpose(1, 2, 0))
    tex = np.concatenate([np.concatenate([tex, tex[:, ::-1]], 1), np.concatenate([tex[::-1], tex[::-1, ::-1]], 1)], 0)
    p = tmp_path / "slow.tif"
    tifffile.imwrite(p, np.tile(tex, (2, 2, 1)), tile=(256, 256))
    return p, ["segment", str(p), "-o", str(tmp_path / "out.tif"), "--tile", "256", *TINY]


def _tiles_done(scratch: Path) -> int:
    """Tiles a running job has finished, from its scratch store (zarr chunks of the `done` array)."""
    try:
        import zarr

        return int(np.asarray(zarr.open_group(str(scratch), mode="r")["done"][:]).sum())
    except Exception:  # noqa: BLE001 - not created yet, or being written
        return 0


def _start(args):
    return subprocess.Popen([sys.executable, "-m", "uhrcli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(cond, timeout=120):
    t = time.time()
    while not cond():
        if time.time() - t > timeout:
            raise TimeoutError
        time.sleep(0.2)


def test_a_second_run_on_the_same_output_names_the_first(tmp_path, slow_job):
    _, args = slow_job
    a = _start(args)
    _wait_for(lambda: (tmp_path / ".out.tif.uhr-lock").exists())
    b, c = _start(args), _start([*args, "--resume"])  # both while the first runs
    for p in (b, c):
        _, err = p.communicate(timeout=300)
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        assert p.returncode == 73 and len(lines) == 1, err
        assert f"pid {a.pid}" in lines[0] and "another uhr run" in lines[0], lines[0]
    a.communicate(timeout=900)
    assert a.returncode == 0
    with rasterio.open(tmp_path / "out.tif") as ds:
        assert (ds.read(1) != 255).all(), "the first run's output is whole"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _reference_and_stopped_run(tmp_path, slow_job, sig) -> tuple[Path, subprocess.Popen, str]:
    """An uninterrupted in-process run's output, and the CLI run on the same job stopped by `sig` mid-way."""
    src, args = slow_job
    ref = segment(str(src), tmp_path / "ref.tif", model="fcn-tiny", weights="random", tile=256)[0]
    a = _start(args)
    _wait_for(lambda: _tiles_done(tmp_path / ".out.tif.uhr-partial") >= 5)
    a.send_signal(sig)
    _, err = a.communicate(timeout=120)
    return ref.output, a, err


def test_kill_9_then_resume_takes_over_the_stale_lock(tmp_path, slow_job):
    ref, _, _ = _reference_and_stopped_run(tmp_path, slow_job, signal.SIGKILL)
    args = slow_job[1]
    assert (tmp_path / ".out.tif.uhr-lock").exists() and not (tmp_path / "out.tif").exists()
    res = run_uhr(*args, "--resume")
    assert res.returncode == 0, res.stderr
    assert sha256(tmp_path / "out.tif") == sha256(ref)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_death_right_after_the_final_move_is_cleaned_up(tmp_path, rgb_tif, monkeypatch):
    from uhrcli import scratch as S

    out = tmp_path / "o.tif"
    monkeypatch.setattr(S.Scratch, "remove", lambda self: None)  # the process dies before cleaning up
    segment(str(rgb_tif), out, model="fcn-tiny", weights="random", tile=128)
    monkeypatch.undo()
    assert out.exists() and (tmp_path / ".o.tif.uhr-partial").exists()
    before = sha256(out)
    res = segment(str(rgb_tif), out, model="fcn-tiny", weights="random", tile=128, resume=True)[0]
    assert res.notes == ["already complete"] and sha256(out) == before
    assert not (tmp_path / ".o.tif.uhr-partial").exists()


# -- 4. more classes than a uint8 map holds -----------------------------------------------------------------
def test_300_classes_are_refused_not_wrapped(tmp_path, rgb_tif):
    ck = tmp_path / "k300.safetensors"
    save_checkpoint(build_model("fcn-tiny", "random", num_classes=300), ck, model_kwargs={"num_classes": 300})
    with pytest.raises(UsageError, match="at most 255 classes"):
        segment(str(rgb_tif), tmp_path / "o.tif", weights=ck)
    assert not (tmp_path / "o.tif").exists()


# -- 5. Ctrl-C -----------------------------------------------------------------------------------------------
def test_ctrl_c_exits_130_with_what_was_done_and_resumes(tmp_path, slow_job):
    ref, a, err = _reference_and_stopped_run(tmp_path, slow_job, signal.SIGINT)
    args = slow_job[1]
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert a.returncode == 130 and len(lines) == 1, err
    assert lines[0].startswith("error: interrupted:") and " of 256 tiles" in lines[0] and "--resume" in lines[0]
    res = run_uhr(*args, "--resume")
    assert res.returncode == 0 and sha256(tmp_path / "out.tif") == sha256(ref)


def test_saliency_interruption_says_how_to_finish(tmp_path):
    from uhrcli.saliency import run_saliency

    photos = tmp_path / "p"
    photos.mkdir()
    for n in ("chelsea.png", "coffee.png", "rocket.jpg"):
        shutil.copy(DATA / n, photos / n)

    def stop_after_one(event, done, total):
        if event == "image":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt, match=r"1 of 3 images done.*--skip-existing"):
        run_saliency(photos, tmp_path / "out", model="fcn-tiny", weights="random", size=64, progress=stop_after_one)


# -- 6, 7. odd inputs ---------------------------------------------------------------------------------------
def test_palette_tiffs_are_expanded_through_their_colour_map(tmp_path, inria_rgb):
    from PIL import Image

    q = Image.fromarray(np.ascontiguousarray(inria_rgb[:, :200, :240].transpose(1, 2, 0))).quantize(64)
    idx = np.asarray(q)
    pal = np.asarray(q.getpalette()[: 3 * 256], np.uint8).reshape(-1, 3)
    rgb = pal[idx]  # what the palette image shows
    tifffile.imwrite(tmp_path / "rgb.tif", rgb)
    with rasterio.open(tmp_path / "geo_pal.tif", "w", driver="GTiff", width=240, height=200, count=1,
                       dtype="uint8", crs="EPSG:32618", transform=from_origin(500000, 4000000, 1, 1)) as ds:
        ds.write(idx[None])
        ds.write_colormap(1, {i: tuple(int(v) for v in pal[i]) + (255,) for i in range(len(pal))})
    cmap16 = np.zeros((3, 256), np.uint16)
    cmap16[:, : len(pal)] = pal.T.astype(np.uint16) * 257
    tifffile.imwrite(tmp_path / "plain_pal.tif", idx, photometric="palette", colormap=cmap16)
    for name in ("geo_pal.tif", "plain_pal.tif"):
        with open_reader(tmp_path / name) as r:
            assert r.count == 3 and np.array_equal(r.read(Window(0, 0, 240, 200)), rgb.transpose(2, 0, 1)), name
        with open_reader(tmp_path / name, expand_palette=False) as r:  # class maps and masks: the indices
            assert r.count == 1 and np.array_equal(r.read(Window(0, 0, 240, 200))[0], idx), name
    ref = segment(str(tmp_path / "rgb.tif"), tmp_path / "ref.zarr", model="fcn-tiny", weights="random", tile=128)[0]
    for name in ("geo_pal.tif", "plain_pal.tif"):
        out = segment(str(tmp_path / name), tmp_path / f"{name}.zarr", model="fcn-tiny", weights="random", tile=128)[0]
        import zarr

        a = np.asarray(zarr.open_group(str(ref.output), mode="r")["classes"][:])
        b = np.asarray(zarr.open_group(str(out.output), mode="r")["classes"][:])
        assert np.array_equal(a, b), name


def test_nan_and_inf_pixels_are_nodata(tmp_path, inria_rgb):
    refl = inria_rgb[:, :160, :160].astype(np.float32) / 255.0
    refl[:, 40:60, 50:90] = np.nan
    refl[1, 100, 100] = np.inf
    src = tmp_path / "refl.tif"
    with rasterio.open(src, "w", driver="GTiff", width=160, height=160, count=3, dtype="float32",
                       crs="EPSG:32618", transform=from_origin(500000, 4000000, 1, 1)) as ds:
        ds.write(refl)
    res = segment(str(src), tmp_path / "o.tif", model="fcn-tiny", weights="random", tile=64)[0]
    with rasterio.open(res.output) as ds:
        out = ds.read(1)
    bad = ~np.isfinite(refl).all(0)
    assert ((out == 255) == bad).all()
    assert set(np.unique(out[~bad])) <= {0, 1}  # finite pixels got classes, not NaN-poisoned garbage


@pytest.mark.parametrize("opt", [("--batch-size", "0"), ("--halo", "-5"), ("--tile", "0"), ("--merge", "nope"),
                                 ("--border", "wrap"), ("--no-such-option", "1"), ("--cache-ram", "lots")])
def test_bad_options_are_one_line_usage_errors(tmp_path, rgb_tif, opt):
    res = run_uhr("segment", str(rgb_tif), "-o", str(tmp_path / "o.tif"), *opt, *TINY)
    one_error_line(res)
    assert res.returncode == 2, res.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") or p.name == "o.tif"]


def test_symlink_loop_and_unreadable_file(tmp_path, rgb_tif):
    (tmp_path / "a.tif").symlink_to(tmp_path / "b.tif")
    (tmp_path / "b.tif").symlink_to(tmp_path / "a.tif")
    res = run_uhr("segment", str(tmp_path / "a.tif"), "-o", str(tmp_path / "o.tif"), *TINY)
    assert res.returncode == 66 and "link loop" in one_error_line(res)
    locked = tmp_path / "locked.tif"
    shutil.copy(rgb_tif, locked)
    locked.chmod(0)
    cmd = [sys.executable, "-m", "uhrcli", "segment", str(locked), "-o", str(tmp_path / "o.tif"), *TINY]
    if os.geteuid() == 0:  # root reads anything: drop the capability that lets it
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv is needed to drop root's read override")
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
               "--inh-caps=-dac_override,-dac_read_search", *cmd]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 65 and "permission denied" in one_error_line(res)


def test_huge_declared_size_fails_cleanly(tmp_path):
    """A header declaring 200000 x 200000 pixels over a few bytes of data: an error, not a 120 GB allocation."""
    src = tmp_path / "huge.tif"
    tifffile.imwrite(src, np.zeros((256, 256, 3), np.uint8), tile=(256, 256), compression="zlib")
    data = bytearray(src.read_bytes())
    with tifffile.TiffFile(src) as tif:  # rewrite the declared width and height in place
        tags = tif.pages[0].tags
        for code in (256, 257):
            t = tags[code]
            fmt = "<I" if t.dtype == 4 else "<H"
            import struct

            struct.pack_into(fmt, data, t.valueoffset, 60000)
    src.write_bytes(bytes(data))
    with tifffile.TiffFile(src) as tif:
        assert tif.pages[0].shape[:2] == (60000, 60000)
    res = run_uhr("segment", str(src), "-o", str(tmp_path / "o.tif"), *TINY)
    assert res.returncode == 65 and "huge.tif" in one_error_line(res)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") or p.name == "o.tif"]


def test_hostile_checkpoint_never_runs_its_code(tmp_path, rgb_tif):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    ck = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "meta": Evil()}, ck)
    res = run_uhr("segment", str(rgb_tif), "-o", str(tmp_path / "o.tif"), "--weights", str(ck), "--model",
                  "fcn-tiny", "-q")
    assert res.returncode == 65 and "refused" in one_error_line(res)
    assert not marker.exists()


# -- readers on random rasters of every dtype -----------------------------------------------------------------
DTYPES = ["uint8", "uint16", "int16", "int32", "float32", "float64"]


@settings(max_examples=30, deadline=None)
@given(dtype=st.sampled_from(DTYPES), h=st.integers(1, 40), w=st.integers(1, 40), bands=st.integers(1, 4),
       geo=st.booleans(), seed=st.integers(0, 2**16), win=st.tuples(st.integers(-30, 30), st.integers(-30, 30),
                                                                    st.integers(1, 50), st.integers(1, 50)))
def test_readers_return_exactly_what_was_written(tmp_path_factory, dtype, h, w, bands, geo, seed, win):
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "ui" else None
    data = (rng.integers(info.min, info.max, (bands, h, w), endpoint=True).astype(dtype) if info is not None
            else rng.normal(0, 100, (bands, h, w)).astype(dtype))
    d = tmp_path_factory.mktemp("rd")
    p = d / "r.tif"
    if geo:
        with rasterio.open(p, "w", driver="GTiff", width=w, height=h, count=bands, dtype=dtype,
                           crs="EPSG:32618", transform=from_origin(500000, 4000000, 1, 1)) as ds:
            ds.write(data)
    elif bands == 1:
        tifffile.imwrite(p, data[0], photometric="minisblack")
    else:
        tifffile.imwrite(p, data, photometric="minisblack", planarconfig="separate")
    with open_reader(p) as r:
        assert (r.height, r.width, r.source_count) == (h, w, bands) and r.dtype == np.dtype(dtype)
        got = r.read(Window(0, 0, w, h))
        assert got.dtype == np.dtype(dtype) and np.array_equal(got, data[[b - 1 for b in r.bands]])
        c0, r0, ww, hh = win
        if h > 1 and w > 1:  # boundless reads mirror the image as a function of global coordinates
            rows = np.arange(r0, r0 + hh)
            cols = np.arange(c0, c0 + ww)
            pr, pc = 2 * (h - 1), 2 * (w - 1)
            rows = np.where(np.mod(rows, pr) >= h, pr - np.mod(rows, pr), np.mod(rows, pr))
            cols = np.where(np.mod(cols, pc) >= w, pc - np.mod(cols, pc), np.mod(cols, pc))
            exp = data[[b - 1 for b in r.bands]][:, rows][:, :, cols]
            assert np.array_equal(r.read(Window(c0, r0, ww, hh)), exp)
