"""Progress: the phases a two-scale run reports, the job's ETA, and `--json` events."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from uhrcli.progress import JobProgress, parse_plan, plan_event
from uhrcli.segment import segment

from .conftest import EXAMPLES, run_uhr

TWO_SCALE = ["deep branch", "shallow pass", "fusion pass", "tiles", "writing"]


@pytest.fixture(scope="module")
def small_raster(tmp_path_factory) -> Path:
    """A 400 x 360 crop of the bundled aerial GeoTIFF (georeferenced)."""
    import rasterio
    from rasterio.windows import Window

    src = EXAMPLES / "austin_inria_crop.tif"
    out = tmp_path_factory.mktemp("progress") / "crop.tif"
    with rasterio.open(src) as ds:
        win = Window(100, 200, 400, 360)
        prof = ds.profile
        prof.update(width=400, height=360, transform=ds.window_transform(win))
        data = ds.read(window=win)
    with rasterio.open(out, "w", **prof) as ds:
        ds.write(data)
    return out


def _record(events: list):
    def cb(event: str, done: int, total: int) -> None:
        events.append((event, done, total))
    return cb


def _phases(events: list) -> dict[str, dict]:
    """Per phase: its total, the done it began from, and the advances that followed."""
    out: dict[str, dict] = {}
    cur = None
    for e, d, t in events:
        if e.startswith("phase:"):
            cur = out.setdefault(e[6:], {"total": t, "start": d, "advances": []})
        elif e in ("advance", "tile") and cur is not None:
            cur["advances"].append(d)
        elif e == "end":
            cur = None
    return out


def test_two_scale_run_reports_every_phase_in_order(small_raster, tmp_path):
    events: list = []
    segment(str(small_raster), tmp_path / "m.tif", model="isdnet-r18", weights="random", tile=192, progress=_record(events))
    names = [e[6:] for e, _, _ in events if e.startswith("phase:")]
    assert names == TWO_SCALE
    plan = [e for e, _, _ in events if e.startswith("plan:")]
    assert [n for n, _ in parse_plan(plan[0])] == TWO_SCALE
    for name, p in _phases(events).items():
        assert p["total"] == 400 * 360, name
        assert p["start"] == 0
        assert len([a for a in p["advances"] if a > 0]) >= 1, f"{name} never moved before it ended"
        assert p["start"] + sum(p["advances"]) == p["total"], name  # done reaches total, exactly
    kinds = [e for e, _, _ in events if not e.startswith(("phase:", "plan:", "input:")) and e not in ("advance", "tile")]
    assert kinds == ["start", "done", "end"]


@pytest.mark.parametrize("name", ["m.zarr", "m.tif"])
def test_probs_and_preview_writing_counts_every_array(small_raster, tmp_path, name):
    """zarr is written from the scratch store at the end: every array read moves the bar. A GeoTIFF was
    written with the tiles: only the preview is left, and the phase still reaches its total."""
    events: list = []
    segment(str(small_raster), tmp_path / name, model="fcn-tiny", weights="random", tile=128, probs=True,
            preview=True, progress=_record(events))
    phases = _phases(events)
    assert list(phases) == ["tiles", "writing"]
    w = phases["writing"]
    assert sum(w["advances"]) == w["total"] and len(w["advances"]) >= (3 if name.endswith(".zarr") else 1)


def test_resumed_tile_pass_starts_from_the_finished_tiles(small_raster, tmp_path):
    out = tmp_path / "m.tif"
    seen = {"n": 0}

    def stop(event, done, total):
        if event == "tile":
            seen["n"] += 1
            if seen["n"] == 12:  # two tile rows: crop merge records a row band at a time
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        segment(str(small_raster), out, model="fcn-tiny", weights="random", tile=96, progress=stop)
    events: list = []
    segment(str(small_raster), out, model="fcn-tiny", weights="random", tile=96, resume=True,
            progress=_record(events))
    tiles = _phases(events)["tiles"]
    assert 0 < tiles["start"] < tiles["total"]
    assert tiles["start"] + sum(tiles["advances"]) == tiles["total"]


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_eta_uses_the_open_phase_rate_and_the_job_rate_for_what_follows():
    clock = FakeClock()
    job = JobProgress(clock=clock)
    job("start", 0, 100)
    job(plan_event([("a", 1.0), ("b", 3.0), ("writing", 0.5)]), 0, 100)
    job("phase:a", 0, 100)
    assert job.eta() is None  # nothing measured yet
    clock.t = 10.0
    job("advance", 50, 0)  # a: 5 px/s; the job: 10 s per 50 cost units
    # a's rest: 50 px at 5 px/s = 10 s; b and writing: (3 + 0.5) * 100 units at 0.2 s per unit = 70 s
    assert job.eta() == pytest.approx(10 + 70)
    clock.t = 20.0
    job("phase:b", 0, 100)  # a is through
    assert job.phases[0].done == 100 and job.phases[0].seconds(clock.t) == 20.0
    clock.t = 50.0
    job("advance", 10, 0)  # b: 10 px in 30 s; job: 50 s for 100 + 30 units
    assert job.eta() == pytest.approx(90 / (10 / 30) + 0.5 * 100 * 50 / 130)
    job("phase:writing", 0, 100)
    job("done", 0, 0)
    assert job.eta() == 0.0 and all(p.done == p.total for p in job.phases)


def test_a_failed_run_leaves_the_open_phase_where_it_stopped():
    clock = FakeClock()
    job = JobProgress(clock=clock)
    job("start", 0, 100)
    job("phase:tiles", 0, 100)
    job("advance", 30, 0)
    job("end", 0, 0)
    assert job.phases[0].done == 30 and not job.finished


def test_segment_json_lines(small_raster, tmp_path):
    out = tmp_path / "m.tif"
    res = run_uhr("segment", str(small_raster), "-o", str(out), "--weights", "random", "--model", "isdnet-r18",
                  "--tile", "192", "--json")
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines()]  # stdout holds JSON only
    phases = [o for o in lines if o["event"] == "phase"]
    order = list(dict.fromkeys(o["phase"] for o in phases))
    assert order == TWO_SCALE
    for name in TWO_SCALE:
        mine = [o for o in phases if o["phase"] == name]
        assert mine[-1]["done"] == mine[-1]["total"] == 400 * 360
        assert all(o["seconds"] >= 0 and o["input"] == str(small_raster) for o in mine)
        assert [o["done"] for o in mine] == sorted(o["done"] for o in mine)
    result = lines[-1]
    assert result["event"] == "result" and result["output"] == str(out) and result["width"] == 400
    assert list(result["phases"]) == TWO_SCALE
    assert "warning" in res.stderr  # human text (the random-weights warning) went to stderr


def test_saliency_json_lines(tmp_path):
    from PIL import Image

    import rasterio

    with rasterio.open(EXAMPLES / "austin_inria_crop.tif") as ds:
        rgb = ds.read().transpose(1, 2, 0)
    for i in range(2):
        Image.fromarray(np.ascontiguousarray(rgb[i * 100:i * 100 + 90, :120])).save(tmp_path / f"p{i}.png")
    res = run_uhr("saliency", str(tmp_path / "p0.png"), str(tmp_path / "p1.png"), "-o", str(tmp_path / "out"),
                  "--model", "fcn-tiny", "--weights", "random", "--size", "64", "--json")
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    phases = [o for o in lines if o["event"] == "phase"]
    assert {o["phase"] for o in phases} == {"images"} and phases[-1]["done"] == phases[-1]["total"] == 2
    assert [o["event"] for o in lines[-3:]] == ["result", "result", "summary"]
    assert lines[-1]["written"] == 2 and lines[-1]["failed"] == 0
