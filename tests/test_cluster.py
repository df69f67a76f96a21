"""uhr on a Dask cluster (2 worker processes, 1 thread each): the same bytes as a local run, for a folder and
for one raster split across both workers, after a worker is killed mid-run, and resumed after the cluster
went away; bad setups give one line."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import rasterio

from uhrcli.errors import ClusterError, InputError
from uhrcli.segment import segment

from .conftest import EXAMPLES, run_uhr, sha256

distributed = pytest.importorskip("distributed")

DEMO = str(EXAMPLES.parent / "isdnet-r18-slim-austin.safetensors")
MODELS = {"demo": dict(weights=DEMO, tile=512), "fcn-tiny": dict(model="fcn-tiny", weights="random", tile=512)}


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                       env={"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"})
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


def _write(path, data, src_profile):
    prof = src_profile | dict(height=data.shape[1], width=data.shape[2], tiled=True, blockxsize=256, blockysize=256,
                              compress="deflate")
    with rasterio.open(path, "w", **prof) as ds:
        ds.write(data)


@pytest.fixture(scope="module")
def rasters(tmp_path_factory):
    """A 1500 x 1300 raster (the bundled aerial crop, mirrored out) and a folder of two crops and a broken file."""
    d = tmp_path_factory.mktemp("cluster")
    with rasterio.open(EXAMPLES / "austin_inria_crop.tif") as ds:
        a, prof = ds.read(), ds.profile
    _write(d / "big.tif", np.pad(a, ((0, 0), (0, 500), (0, 300)), mode="reflect"), prof)
    (d / "folder").mkdir()
    _write(d / "folder" / "a.tif", a[:, :600, :700], prof)
    _write(d / "folder" / "c.tif", a[:, 300:, 250:], prof)
    (d / "folder" / "b.tif").write_text("not a raster\n" * 20)
    return d


def _pixels(path):
    with rasterio.open(path) as ds:
        return ds.read()


def _same(a, b):
    assert np.array_equal(_pixels(a), _pixels(b))
    assert sha256(a) == sha256(b), f"{a} and {b} hold the same pixels but differ in bytes"


@pytest.fixture(scope="module")
def local(rasters, tmp_path_factory):
    """The local runs every cluster run is compared with."""
    out = tmp_path_factory.mktemp("local")
    for name, kw in MODELS.items():
        segment(str(rasters / "big.tif"), out / f"big-{name}.tif", **kw)
    res = segment(str(rasters / "folder"), out / "folder", **MODELS["fcn-tiny"])
    return out, res


@pytest.mark.parametrize("name", list(MODELS))
def test_one_raster_split_across_both_workers(client, rasters, local, tmp_path, name):
    seen = []
    res = segment(str(rasters / "big.tif"), tmp_path / "big.tif", client=client,
                  progress=lambda e, d, t: seen.append(e), **MODELS[name])
    _same(tmp_path / "big.tif", local[0] / f"big-{name}.tif")
    assert res[0].stats.extra["tiles"] == 9 and res[0].stats.tiles == 9
    assert seen.count("tile") == 3  # a task per tile row, followed by the progress
    if name == "demo":
        assert [e for e in seen if e.startswith("phase:")] == ["phase:deep branch", "phase:shallow pass",
                                                                "phase:fusion pass", "phase:tiles", "phase:writing"]
    assert not list(tmp_path.glob(".*uhr-partial"))


def test_folder_one_task_per_raster_with_errors_per_file(client, rasters, local, tmp_path):
    failed = []
    res = segment(str(rasters / "folder"), tmp_path / "out", client=client,
                  on_error=lambda p, m: failed.append((p.name, m)), **MODELS["fcn-tiny"])
    want = local[1]
    assert [r.input.name for r in res] == ["a.tif", "c.tif"]
    assert res.failed == want.failed and failed == [(p.name, m) for p, m in want.failed]
    for n in ("a.tif", "c.tif"):
        _same(tmp_path / "out" / n, local[0] / "folder" / n)
    # a raster over split_pixels (c.tif, 525000 px; fewer such rasters than workers) is split across the workers
    # inside the folder run, a.tif runs as one task: the same bytes again
    res = segment(str(rasters / "folder"), tmp_path / "split", client=client, split_pixels=500_000, **MODELS["demo"])
    assert [r.input.name for r in res] == ["a.tif", "c.tif"] and len(res.failed) == 1
    assert "tiles_recomputed" in res[1].stats.extra and "tiles_recomputed" not in res[0].stats.extra
    single = segment(str(rasters / "folder" / "c.tif"), tmp_path / "c-local.tif", **MODELS["demo"])
    assert single[0].stats.tiles == res[1].stats.tiles
    _same(tmp_path / "split" / "c.tif", tmp_path / "c-local.tif")


class _KillOnce(distributed.WorkerPlugin):
    """Kills its worker process (SIGKILL) a moment after a task whose key starts with `prefix` begins, once in
    the whole cluster (a marker file says it happened)."""

    def __init__(self, marker: str, prefix: str, delay: float):
        self.marker, self.prefix, self.delay = marker, prefix, delay

    def transition(self, key, start, finish, **kw):
        import signal
        import threading

        name = key if isinstance(key, str) else str(key)
        if finish == "executing" and name.startswith(self.prefix):
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return
            os.close(fd)
            threading.Timer(self.delay, os.kill, (os.getpid(), signal.SIGKILL)).start()


@pytest.mark.parametrize("prefix", ["uhr-shallow", "uhr-tiles", "uhr-raster"])
def test_worker_killed_mid_run_loses_no_tile(client, rasters, local, tmp_path, prefix):
    """SIGKILL of a worker process in a split raster's shallow or tile pass, or in a folder's raster task (whose
    next attempt resumes the scratch store the killed one left): the output is byte-identical to the local run."""
    marker = tmp_path / "killed"
    before = set(client.scheduler_info(n_workers=-1)["workers"])
    client.register_plugin(_KillOnce(str(marker), prefix, 0.1), name="kill-once")
    try:
        if prefix == "uhr-raster":
            res = segment(str(rasters / "folder"), tmp_path / "out", client=client, **MODELS["fcn-tiny"])
        else:
            res = segment(str(rasters / "big.tif"), tmp_path / "big.tif", client=client, **MODELS["demo"])
    finally:
        client.unregister_worker_plugin("kill-once")
    assert marker.exists()
    if prefix == "uhr-raster":
        assert [r.input.name for r in res] == ["a.tif", "c.tif"] and len(res.failed) == 1
        for n in ("a.tif", "c.tif"):
            _same(tmp_path / "out" / n, local[0] / "folder" / n)
        assert not list((tmp_path / "out").glob(".*uhr-partial"))
    else:
        _same(tmp_path / "big.tif", local[0] / "big-demo.tif")
        assert res[0].stats.tiles + res[0].stats.tiles_resumed == 9
    # the kill may land just after the run's last task: wait until the scheduler has seen the worker go and the
    # nanny bring it back, under a new address
    import time

    deadline = time.monotonic() + 60
    while set(client.scheduler_info(n_workers=-1)["workers"]) == before and time.monotonic() < deadline:
        time.sleep(0.2)
    client.wait_for_workers(2, timeout=60)
    assert set(client.scheduler_info(n_workers=-1)["workers"]) != before


def test_resume_after_the_cluster_went_away(client, rasters, local, tmp_path):
    def stop_after_first_band(event, done, total):
        if event == "tile":
            raise KeyboardInterrupt

    for finish_on in ("cluster", "local"):
        out = tmp_path / f"{finish_on}.tif"
        with pytest.raises(KeyboardInterrupt, match="--resume"):
            segment(str(rasters / "big.tif"), out, client=client, progress=stop_after_first_band, **MODELS["demo"])
        store = next(tmp_path.glob(f".{out.name}.uhr-partial"))
        # tasks already running on the workers when the client stops finish their rows (only pending ones are
        # cancelled): on a quiet machine that can be every row; the resume must give the same bytes either way
        assert not out.exists() and 0 < np.asarray(__import__("zarr").open_group(str(store))["done"][:]).sum() <= 9
        res = segment(str(rasters / "big.tif"), out, client=client if finish_on == "cluster" else None, resume=True,
                      **MODELS["demo"])
        assert res[0].resumed
        _same(out, local[0] / "big-demo.tif")


def test_scratch_folder_elsewhere(client, rasters, local, tmp_path):
    res = segment(str(rasters / "big.tif"), tmp_path / "out" / "big.tif", client=client, scratch=tmp_path / "shared",
                  **MODELS["fcn-tiny"])
    assert res[0].stats.tiles == 9
    _same(tmp_path / "out" / "big.tif", local[0] / "big-fcn-tiny.tif")
    assert not [p for p in (tmp_path / "shared").iterdir() if p.name.endswith("uhr-partial")]


def test_bad_setups_one_line(client, rasters, tmp_path):
    from uhrcli.cluster import preflight

    with pytest.raises(ClusterError, match=r"worker tcp://.* cannot read .*nowhere.safetensors: every worker needs it"):
        preflight(client, [tmp_path / "nowhere.safetensors"], [tmp_path])
    # a folder the workers do not see as the client does (a local disk elsewhere): the probe they read differs
    from uhrcli.cluster.worker import check_paths

    (tmp_path / "probe").write_text("what this worker sees")
    answers = client.run(check_paths, [], [(str(tmp_path / "probe"), "what the client wrote")])
    assert len(answers) == 2 and all("must be on storage every worker sees" in a for a in answers.values())
    with pytest.raises(InputError):  # a single broken raster raises its own error, as locally
        segment(str(rasters / "folder" / "b.tif"), tmp_path / "b.tif", client=client, **MODELS["fcn-tiny"])
    env_res = _uhr_env("segment", str(rasters / "big.tif"), "-o", str(tmp_path / "x.tif"), "--weights", "random",
                       "--scheduler", "tcp://127.0.0.1:9", "-q")
    assert env_res.returncode == 69, env_res.stderr
    lines = env_res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach the Dask scheduler at tcp://127.0.0.1:9")


def _uhr_env(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "uhrcli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200", "UHR_DASK_CONNECT_TIMEOUT": "1"})


def test_cli_workers_runs_a_folder(rasters, local, tmp_path):
    folder = tmp_path / "in"
    shutil.copytree(rasters / "folder", folder)
    res = run_uhr("segment", str(folder), "-o", str(tmp_path / "out"), "--model", "fcn-tiny", "--weights", "random",
                  "--tile", "512", "--workers", "2")
    assert res.returncode == 1, res.stderr  # b.tif is broken: the exit status of a local folder run
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 2 and "b.tif" in errors[0] and "1 of 3 raster(s) failed: b.tif" in errors[1], res.stderr
    assert "Dask dashboard: http" in res.stderr
    for n in ("a.tif", "c.tif"):
        _same(tmp_path / "out" / n, local[0] / "folder" / n)


def test_saliency_photos_as_tasks(client, saliency_pairs, tmp_path):
    from uhrcli.saliency import run_saliency

    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    for i in range(3):
        for p in saliency_pairs.glob("*.jpg"):
            shutil.copy(p, (photos / "sub" if i == 2 else photos) / f"{p.stem}_{i}.jpg")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    kw = dict(model="fcn-tiny", weights="random", size=256, outputs=("map", "mask"), recursive=True)
    want = run_saliency([photos], tmp_path / "local", **kw)
    seen = []
    got = run_saliency([photos], tmp_path / "cluster", client=client, on_error=lambda p, m: seen.append(p.name),
                       **kw)
    assert [r.input for r in got.results] == [r.input for r in want.results] and len(got.results) == 6
    assert got.failed == want.failed and seen == ["broken.jpg"]
    for r in want.results:
        for o in r.outputs:
            twin = tmp_path / "cluster" / o.relative_to(tmp_path / "local")
            assert sha256(twin) == sha256(o), twin


def test_eval_run_on_workers_scores_as_locally(rasters, tmp_path):
    """`uhr eval run --workers 2` on an Inria-layout dataset of two images: the same scores as the local run."""
    import json

    root = tmp_path / "inria"
    (root / "images").mkdir(parents=True)
    (root / "gt").mkdir()
    with rasterio.open(EXAMPLES / "austin_inria_crop.tif") as a, \
            rasterio.open(EXAMPLES / "austin_inria_crop_buildings.tif") as b:
        img, gt, pa, pb = a.read(), b.read(), a.profile, b.profile
    for name, (r, c) in (("austin1", (0, 0)), ("austin2", (400, 300))):
        _write(root / "images" / f"{name}.tif", img[:, r:r + 600, c:c + 700], pa)
        _write(root / "gt" / f"{name}.tif", gt[:, r:r + 600, c:c + 700], pb)
    scores = []
    for extra in ([], ["--workers", "2"]):
        out = tmp_path / f"e{len(scores)}.json"
        res = run_uhr("eval", "run", "--weights", DEMO, "--data", str(root), "--tile", "512", "--json", str(out),
                      "-q", *extra)
        assert res.returncode == 0, res.stderr
        rec = json.loads(out.read_text())
        for f in rec["files"]:  # predictions went into a temporary folder of each run
            f["pred"] = os.path.basename(f["pred"])
        scores.append(rec)
    assert len(scores[0]["files"]) == 2 and scores[0] == scores[1]
