"""`uhr bench --table isdnet`: ISDNet Tables 3/4 layout, files and ratio arithmetic (tiny size, 3 models)."""
from __future__ import annotations

import csv
import json

import pytest

from uhrcli.bench import isdnet_table as it
from uhrcli.errors import UsageError

from .conftest import run_uhr

MODELS = ["isdnet-segformer-b0", "segformer-b0-down4", "deeplabv3-r18-down4"]


@pytest.fixture(scope="module")
def report():
    return it.run_isdnet_table(MODELS, ["128x160"], device="cpu",
                               warmup=0, iters=1, isolate=False)


def test_rows_files_and_ratios(tmp_path, report):
    rows = {r["model"]: r for r in report.rows}
    assert set(rows) == set(MODELS) and all(r["status"] == "ok" for r in rows.values())
    seg, isd, dl = rows["segformer-b0-down4"], rows["isdnet-segformer-b0"], rows["deeplabv3-r18-down4"]
    assert seg["reference"] == "isdnet-segformer-b0" and dl["reference"] == "isdnet-r18" and isd["reference"] is None
    assert seg["params_m"] == pytest.approx(3.720051 - (256 * 19 + 19 - 256 * 2 - 2) / 1e6)  # 2 classes here
    # the ratios are the ISD model's measured figure over the row's
    assert seg["ratio_fps"] == pytest.approx(isd["fps"] / seg["fps"])
    assert seg["ratio_mem"] == pytest.approx(isd["mem_mb"] / seg["mem_mb"])
    assert dl["ratio_fps"] is None  # isdnet-r18 was not measured
    assert seg["paper_fps"] is None  # the paper's figures are for 1024 x 2048 only
    it.write_csv(report, tmp_path / "t.csv")
    it.write_json(report, tmp_path / "t.json")
    with open(tmp_path / "t.csv") as f:
        got = list(csv.DictReader(f))
    assert list(got[0]) == it.COLUMNS
    by = {r["model"]: r for r in got}
    assert float(by["segformer-b0-down4"]["ratio_fps"]) == pytest.approx(
        float(by["isdnet-segformer-b0"]["fps"]) / float(by["segformer-b0-down4"]["fps"]))
    d = json.loads((tmp_path / "t.json").read_text())
    assert d["table"] == "isdnet" and d["shapes"] == [[128, 160]]
    assert {r["model"] for r in d["rows"]} == set(MODELS)
    assert all(set(it.COLUMNS) <= set(r) for r in d["rows"])
    pytest.importorskip("matplotlib")
    assert it.write_plot(report, tmp_path / "t.png").stat().st_size > 1000


def test_paper_ratios_are_the_papers_own_framing():
    """ISD / baseline from the quoted figures: ISDNet 50.79 FPS vs DeepLabv3 13.32, Segformer+ISD vs Segformer."""
    rows = []
    for name, _, miou, fps, mem in it.PAPER:
        rows.append({"model": name, "size": "1024x2048", "status": "error", "paper_fps": fps, "paper_mem_mb": mem,
                     "reference": it.reference_of(name)})
    it.add_ratios(rows)
    by = {r["model"]: r for r in rows}
    assert by["deeplabv3-r18"]["paper_ratio_fps"] == pytest.approx(50.79 / 13.32)
    assert by["deeplabv3-r18"]["paper_ratio_mem"] == pytest.approx(1510 / 1468)
    assert by["segformer-b0"]["paper_ratio_fps"] == pytest.approx(41.82 / 13.70)
    assert by["segformer-b0"]["paper_ratio_mem"] == pytest.approx(1500 / 3114)
    assert by["pspnet-r18"]["paper_ratio_fps"] == pytest.approx(58.29 / 15.15)
    assert by["segformer-b0-down2"]["paper_ratio_fps"] == pytest.approx(41.82 / 65.49)
    assert by["isdnet-r18"]["paper_ratio_fps"] is None and by["deeplabv3-r18"]["ratio_fps"] is None


def test_missing_models_and_bad_options():
    run, missing = it.resolve(["isdnet-psp", "icnet", "segformer-b0"])
    assert ("isdnet-psp", "isdnet-r18-psp") in run or ("isdnet-psp", "isdnet-psp") in run
    from uhrcli.models import list_models

    assert ("icnet" in missing) == ("icnet" not in list_models())
    assert it.parse_shapes(["1024x2048", "2448"]) == [(1024, 2048), (2448, 2448)]
    with pytest.raises(UsageError):
        it.parse_shapes(["12xx"])
    with pytest.raises(UsageError):
        it.resolve(["fcn-tiny"])
    p = run_uhr("bench", "--table", "nope")
    assert p.returncode == 2 and "only table is 'isdnet'" in p.stderr
