"""Every bad input: one clear line on stderr, a non-zero exit, the input untouched, nothing left behind."""
from __future__ import annotations

import errno
import os
import shutil

import numpy as np
import pytest
import tifffile
import zarr

from .conftest import DATA, run_uhr, sha256


@pytest.fixture()
def good_tif(tmp_path, inria_rgb):
    p = tmp_path / "good.tif"
    tifffile.imwrite(p, np.ascontiguousarray(inria_rgb[:, :200, :200].transpose(1, 2, 0)), tile=(64, 64),
                     compression="zlib")
    return p


def _assert_clean_failure(res, tmp_path, out_name="out.tif", expect=None):
    assert res.returncode != 0, res.stdout + res.stderr
    err = [ln for ln in res.stderr.strip().splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert len(err) == 1, res.stderr  # one line, no traceback
    assert err[0].startswith("error:")
    assert "Traceback" not in res.stderr
    if expect:
        assert expect in err[0], err[0]
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(f".{out_name}") or p.name == out_name]
    assert not left, f"left behind: {left}"


def _segment(*args):
    return run_uhr("segment", *args, "--weights", "random", "--model", "fcn-tiny", "--quiet")


def test_missing_path(tmp_path):
    res = _segment(str(tmp_path / "nope.tif"), "-o", str(tmp_path / "out.tif"))
    _assert_clean_failure(res, tmp_path, expect="not found")
    assert res.returncode == 66


def test_text_file_named_tif(tmp_path):
    src = tmp_path / "fake.tif"
    src.write_text("hello, I am not an image\n" * 10)
    before = sha256(src)
    res = _segment(str(src), "-o", str(tmp_path / "out.tif"))
    _assert_clean_failure(res, tmp_path, expect="not a TIFF")
    assert sha256(src) == before


def test_truncated_tiff(tmp_path, good_tif):
    data = good_tif.read_bytes()
    src = tmp_path / "trunc.tif"
    src.write_bytes(data[: len(data) // 2])
    before = sha256(src)
    res = _segment(str(src), "-o", str(tmp_path / "out.tif"))
    _assert_clean_failure(res, tmp_path, expect="trunc.tif")
    assert sha256(src) == before


def test_corrupt_tile_data(tmp_path, good_tif):
    data = bytearray(good_tif.read_bytes())
    with tifffile.TiffFile(good_tif) as tif:
        off = tif.pages[0].dataoffsets[-1]
    data[off:off + 64] = b"\xff" * 64  # garbage in the last compressed tile
    src = tmp_path / "corrupt.tif"
    src.write_bytes(bytes(data))
    res = _segment(str(src), "-o", str(tmp_path / "out.tif"))
    _assert_clean_failure(res, tmp_path, expect="corrupt")


def test_directory_given_as_file(tmp_path):
    d = tmp_path / "somedir.tif"
    d.mkdir()
    res = run_uhr("info", str(d))
    assert res.returncode != 0 and "is a directory" in res.stderr and "Traceback" not in res.stderr


def test_empty_folder_input(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    res = _segment(str(d), "-o", str(tmp_path / "outdir"))
    assert res.returncode != 0 and "folder holds no files with a raster or image suffix" in res.stderr


def test_complex_dtype(tmp_path):
    src = tmp_path / "cplx.tif"
    tifffile.imwrite(src, (np.ones((3, 40, 40)) + 1j).astype(np.complex64))
    res = _segment(str(src), "-o", str(tmp_path / "out.tif"))
    _assert_clean_failure(res, tmp_path, expect="complex")


def test_zero_size_image(tmp_path):
    src = tmp_path / "empty.zarr"
    zarr.create_array(str(src), shape=(3, 0, 0), chunks=(3, 1, 1), dtype="uint8")
    res = _segment(str(src), "-o", str(tmp_path / "out.tif"))
    _assert_clean_failure(res, tmp_path, expect="zero size")


def test_wrong_bands(tmp_path, good_tif):
    res = _segment(str(good_tif), "-o", str(tmp_path / "out.tif"), "--bands", "1,2,5")
    _assert_clean_failure(res, tmp_path, expect="bands 1..3")
    res = _segment(str(good_tif), "-o", str(tmp_path / "out.tif"), "--bands", "1,2")
    _assert_clean_failure(res, tmp_path, expect="expects 3")
    res = _segment(str(good_tif), "-o", str(tmp_path / "out.tif"), "--bands", "a,b")
    assert res.returncode == 2


def test_single_band_needs_band_choice(tmp_path):
    res = _segment(str(DATA / "rasterio_shade.tif"), "-o", str(tmp_path / "out.tif"))
    _assert_clean_failure(res, tmp_path, expect="1,1,1")
    ok = _segment(str(DATA / "rasterio_shade.tif"), "-o", str(tmp_path / "out.tif"), "--bands", "1,1,1")
    assert ok.returncode == 0, ok.stderr


def test_existing_output_is_kept(tmp_path, good_tif):
    out = tmp_path / "out.tif"
    out.write_bytes(b"precious")
    res = _segment(str(good_tif), "-o", str(out))
    assert res.returncode == 73 and "--overwrite" in res.stderr
    assert out.read_bytes() == b"precious"
    res = _segment(str(good_tif), "-o", str(out), "--overwrite")
    assert res.returncode == 0 and out.read_bytes()[:2] in (b"II", b"MM")


def test_unwritable_output_folder(tmp_path, good_tif):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    res = _segment(str(good_tif), "-o", str(blocker / "sub" / "out.tif"))
    assert res.returncode == 73 and "cannot create output folder" in res.stderr
    if os.geteuid() != 0:  # root ignores permission bits
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        res = _segment(str(good_tif), "-o", str(ro / "out.tif"))
        assert res.returncode == 73 and "not writable" in res.stderr


def test_full_disk_leaves_nothing(tmp_path, good_tif, monkeypatch):
    """ENOSPC while writing the output (streamed as tiles finish): one clear error, no partial output, the
    scratch kept for --resume."""
    from uhrcli.errors import OutputError
    from uhrcli.io.stream import GeoTiffStream
    from uhrcli.segment import segment

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(GeoTiffStream, "write", full)
    out = tmp_path / "out.tif"
    with pytest.raises(OutputError, match="disk full writing .*rerun with --resume"):
        segment(str(good_tif), out, model="fcn-tiny", weights="random", tile=128)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".uhr-tmp")]
    assert (tmp_path / ".out.tif.uhr-partial").is_dir()

def test_full_disk_on_a_real_small_filesystem(tmp_path, good_tif):
    """A 1 MB tmpfs really fills up (needs mount rights; skipped otherwise)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs")
    if os.system(f"mount -t tmpfs -o size=64k tmpfs {mnt} 2>/dev/null") != 0:
        pytest.skip("cannot mount tmpfs here")
    try:
        big = tmp_path / "big.tif"
        rng = np.random.default_rng(0)
        tifffile.imwrite(big, rng.integers(0, 255, (600, 600, 3), dtype=np.uint8))
        res = _segment(str(big), "-o", str(mnt / "out.tif"), "--tile", "256", "--probs")
        assert res.returncode != 0
        assert "disk full" in res.stderr or "No space" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
        assert not (mnt / "out.tif").exists()
    finally:
        os.system(f"umount {mnt}")


def test_unknown_model_and_bad_device(tmp_path, good_tif):
    res = run_uhr("segment", str(good_tif), "-o", str(tmp_path / "o.tif"), "--weights", "random", "--model", "nonet")
    _assert_clean_failure(res, tmp_path, out_name="o.tif", expect="unknown model")
    res = run_uhr("segment", str(good_tif), "-o", str(tmp_path / "o.tif"), "--weights", "random", "--model",
                  "fcn-tiny", "--device", "cuda")
    import torch

    if torch.cuda.is_available():  # a GPU machine runs it
        assert res.returncode == 0, res.stderr
    else:
        _assert_clean_failure(res, tmp_path, out_name="o.tif", expect="CUDA is not available")


def test_debug_shows_traceback(tmp_path):
    res = run_uhr("--debug", "info", str(tmp_path / "missing.tif"))
    assert res.returncode == 66 and "Traceback" in res.stderr


def test_version_and_help():
    res = run_uhr("--version")
    assert res.returncode == 0 and res.stdout.startswith("uhr ")
    res = run_uhr("segment", "--help")
    assert res.returncode == 0 and "--resume" in res.stdout
