"""`uhr bench`: model-only and pipeline measurements, report files, OOM rows and the CUDA branch's logic."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from uhrcli.bench import (BenchReport, cached_raster, parse_sizes, run_benchmark, run_worker, write_csv, write_json,
                          write_plot)
from uhrcli.bench import machine as bench_machine
from uhrcli.bench import model as bench_model
from uhrcli.errors import UsageError
from uhrcli.models import create_model

from .conftest import run_uhr

REQUIRED = ("model", "size", "fps", "latency_ms_median", "latency_ms_p90", "peak_mem_mb", "params_m", "gflops")


def fcn_tiny_flops(s: int, width: int = 16, depth: int = 3, k: int = 2) -> int:
    """2*MACs of fcn-tiny's convolutions at s x s (FlopCounterMode counts neither bias, BN nor interpolation)."""
    h = s // 2
    flops = 2 * s * s * width * 3 * 9  # 3 -> 16, stride 1
    flops += 2 * h * h * (2 * width) * width * 9  # 16 -> 32, stride 2
    flops += (depth - 1) * 2 * h * h * (2 * width) * (2 * width) * 9  # 32 -> 32
    flops += 2 * h * h * k * (2 * width)  # 1x1 classifier
    return flops


def fcn_tiny_params(width: int = 16, depth: int = 3, k: int = 2) -> int:
    convs = 3 * width * 9 + width * 2 * width * 9 + (depth - 1) * (2 * width) ** 2 * 9
    bns = 2 * width + (1 + depth - 1) * 2 * (2 * width)
    return convs + bns + 2 * width * k + k


@pytest.fixture(scope="module")
def cpu_report() -> BenchReport:
    return run_benchmark(models=["fcn-tiny"], sizes=[128, 256], iters=2, warmup=1, device="cpu", roof_n=512)


def test_model_records(cpu_report: BenchReport) -> None:
    r = cpu_report
    assert [(x["model"], x["size"]) for x in r.records] == [("fcn-tiny", 128), ("fcn-tiny", 256)]
    net = create_model("fcn-tiny")
    assert fcn_tiny_params() == sum(p.numel() for p in net.parameters())
    for rec in r.records:
        assert rec["status"] == "ok", rec
        assert all(k in rec for k in REQUIRED)
        assert rec["fps"] > 0 and rec["mp_per_s"] > 0
        assert rec["latency_ms_p90"] >= rec["latency_ms_median"] > 0
        assert rec["peak_mem_mb"] > r.baseline_rss_mb > 50  # fresh worker: torch import + the case
        assert rec["model_rss_mb"] == pytest.approx(rec["peak_mem_mb"] - r.baseline_rss_mb)
        assert rec["params"] == fcn_tiny_params()
        assert rec["params_m"] == pytest.approx(fcn_tiny_params() / 1e6)
        assert rec["flops"] == fcn_tiny_flops(rec["size"])
        assert rec["gflops_per_s"] == pytest.approx(rec["gflops"] * rec["fps"])
        assert rec["efficiency"] == pytest.approx(rec["gflops_per_s"] / r.roof_gflops)
    assert r.roof_gflops > 0
    m = r.machine
    for k in ("cpu", "cores", "gpu", "torch", "cuda", "settings"):
        assert k in m
    assert m["settings"]["dtype"] == "fp32" and m["settings"]["iters"] == 2 and m["settings"]["isolated"] is True
    assert r.speedups() == []  # needs isdnet-r18 and deeplabv3-r18


def test_report_files(cpu_report: BenchReport, tmp_path) -> None:
    from PIL import Image

    d = json.loads(write_json(cpu_report, tmp_path / "b.json").read_text())
    assert d["machine"]["settings"]["models"] == ["fcn-tiny"] and len(d["records"]) == 2
    assert all(k in d["records"][0] for k in REQUIRED)
    rows = list(csv.DictReader(open(write_csv(cpu_report, tmp_path / "b.csv"))))
    assert [int(x["size"]) for x in rows] == [128, 256] and float(rows[0]["fps"]) > 0
    with Image.open(write_plot(cpu_report, tmp_path / "b.png")) as im:
        assert im.format == "PNG" and im.width > 400


def test_errors() -> None:
    with pytest.raises(UsageError, match="available: .*fcn-tiny"):
        run_benchmark(models=["no-such-net"], sizes=[64], device="cpu")
    for bad in (["0"], ["-5"], ["abc"], [1.5], [True]):
        with pytest.raises(UsageError, match="positive integers"):
            parse_sizes(bad)
    assert parse_sizes(["128", 256]) == [128, 256]
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            run_benchmark(models=["fcn-tiny"], sizes=[64], device="cuda")


def test_oom_rows_and_others_finish(monkeypatch) -> None:
    # honest injection: the test hook makes the case raise MemoryError (in process) or SIGKILL its worker
    monkeypatch.setenv(bench_model.FAKE_OOM_ENV, "fcn-tiny@64,fcn-tiny@96:kill")
    r = run_benchmark(models=["fcn-tiny"], sizes=[64, 128], iters=2, warmup=0, device="cpu", roof=False,
                      isolate=False)
    assert [x["status"] for x in r.records] == ["oom", "ok"]
    assert "MemoryError" in r.records[0]["error"] and r.records[1]["fps"] > 0
    killed = run_worker({"mode": "model", "model": "fcn-tiny", "size": 96, "iters": 1, "warmup": 0})
    assert killed["status"] == "oom" and "killed" in killed["error"]
    from uhrcli.bench import model_table, summary_lines

    assert any("OOM" in line for line in summary_lines(r))
    assert model_table(r).row_count == 2


class _FakeEvent:
    """torch.cuda.Event stand-in: every timed region 'takes' 4 ms."""

    records = 0
    fail = False

    def __init__(self, enable_timing: bool = False) -> None:
        assert enable_timing

    def record(self, stream=None) -> None:
        if _FakeEvent.fail:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        _FakeEvent.records += 1

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, other: "_FakeEvent") -> float:
        return 4.0


def test_cuda_branch_logic_with_mocks(monkeypatch) -> None:
    """Only the logic: in-process cases, event timing, per-case peak reset, allocator peaks, OOM rows.

    Tensors stay on the CPU (to_device is the identity); every torch.cuda call the branch makes is faked.
    """
    calls: dict[str, int] = {"reset": 0, "empty": 0, "sync": 0}
    cu = torch.cuda
    monkeypatch.setattr(cu, "is_available", lambda: True)
    monkeypatch.setattr(cu, "device_count", lambda: 1)
    monkeypatch.setattr(cu, "get_device_name", lambda d=None: "Fake H100")
    monkeypatch.setattr(cu, "Event", _FakeEvent)
    monkeypatch.setattr(cu, "synchronize", lambda d=None: calls.__setitem__("sync", calls["sync"] + 1))
    monkeypatch.setattr(cu, "reset_peak_memory_stats", lambda d=None: calls.__setitem__("reset", calls["reset"] + 1))
    monkeypatch.setattr(cu, "empty_cache", lambda: calls.__setitem__("empty", calls["empty"] + 1))
    monkeypatch.setattr(cu, "max_memory_allocated", lambda d=None: 123 * 2**20)
    monkeypatch.setattr(cu, "max_memory_reserved", lambda d=None: 200 * 2**20)
    monkeypatch.setattr(bench_machine, "to_device", lambda obj, device: obj)
    monkeypatch.setattr(bench_model, "to_device", lambda obj, device: obj)
    monkeypatch.setattr("uhrcli.bench.runner.run_worker", lambda *a, **k: pytest.fail("CUDA cases run in process"))
    _FakeEvent.records, _FakeEvent.fail = 0, False

    r = run_benchmark(models=["fcn-tiny"], sizes=[32, 64], device="cuda", roof_n=64, amp=False)
    s = r.machine["settings"]
    assert (s["warmup"], s["iters"], s["isolated"]) == (10, 50, False)  # GPU defaults
    assert r.machine["gpu"] == "Fake H100" and r.baseline_rss_mb is None
    assert calls["reset"] == 2 and calls["sync"] > 0
    assert _FakeEvent.records == 2 * 2 * 50  # start + end per timed iteration, no warm-up timed
    for rec in r.records:
        assert rec["status"] == "ok"
        assert rec["latency_ms_median"] == rec["latency_ms_p90"] == 4.0
        assert rec["fps"] == pytest.approx(250.0)
        assert rec["peak_mem_mb"] == 123.0 and rec["peak_reserved_mb"] == 200.0
        assert rec["mem_source"] == "cuda_max_memory_allocated"
        assert rec["flops"] == fcn_tiny_flops(rec["size"])
    assert set(r.machine["roofs_gflops"]) == {"fp32", "tf32", "fp16"}  # CUDA reports every roof

    _FakeEvent.fail = True
    empty_before = calls["empty"]
    r = run_benchmark(models=["fcn-tiny"], sizes=[32], device="cuda", iters=2, warmup=0, roof=False)
    assert r.records[0]["status"] == "oom" and calls["empty"] > empty_before + 1  # cache freed after the OOM


def test_amp_default_follows_the_device() -> None:
    from uhrcli.bench.runner import BenchConfig

    assert BenchConfig().amp is None  # decided per device: on for CUDA (as segment runs), never on CPU
    r = run_benchmark(models=["fcn-tiny"], sizes=[32], device="cpu", iters=1, warmup=0, roof=False, isolate=False)
    assert r.machine["settings"]["amp"] is False and r.machine["settings"]["dtype"] == "fp32"


def test_cli_bench(tmp_path) -> None:
    out = tmp_path / "out.json"
    p = run_uhr("bench", "--models", "fcn-tiny", "--sizes", "128", "--iters", "2", "--warmup", "1", "--device", "cpu",
                "--json", str(out), "--amp")
    assert p.returncode == 0, p.stderr
    d = json.loads(out.read_text())
    assert d["records"][0]["model"] == "fcn-tiny" and d["records"][0]["fps"] > 0
    assert "fcn-tiny" in p.stdout and "compute roof" in p.stdout and "--amp ignored on CPU" in p.stdout
    p = run_uhr("bench", "--models", "nope", "--sizes", "128")
    assert p.returncode == 2 and "available:" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_pipeline_record(tmp_path) -> None:
    r = run_benchmark(models=["fcn-tiny"], sizes=[512], pipeline=True, cache_dir=tmp_path, roof=False, device="cpu")
    rec = r.records[0]
    assert rec["status"] == "ok", rec
    assert (rec["height"], rec["width"], rec["pixels"], rec["tiles"]) == (512, 512, 512 * 512, 1)
    assert rec["model_only_tiles"] == rec["tiles"]
    assert rec["e2e_mp_per_s"] > 0 and rec["model_only_mp_per_s"] > 0
    assert rec["ratio"] == pytest.approx(rec["e2e_mp_per_s"] / rec["model_only_mp_per_s"])
    assert rec["peak_rss_mb"] > r.baseline_rss_mb
    assert rec["seconds"] >= rec["model_s"] > 0
    # one 512 tile, no neighbours to take a halo from: exactly the raw RGB bytes crossed, not 4 x 3 floats
    assert rec["bytes_to_device_per_px"] == 3.0
    path, cached = cached_raster(512, tmp_path)
    assert cached and str(path) == rec["raster"]
    import rasterio

    with rasterio.open(path) as ds:
        assert (ds.width, ds.height, ds.count, ds.dtypes[0]) == (512, 512, 3, "uint8")
        assert ds.block_shapes[0] == (512, 512) and ds.crs is not None
