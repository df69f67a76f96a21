"""Benchmark reports as files (JSON, CSV, PNG) and as rich tables laid out like the papers' tables."""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

from rich.table import Table

from ..errors import pyplot
from .runner import BenchReport

MODEL_COLUMNS = ["model", "size", "status", "fps", "latency_ms_median", "latency_ms_p90", "mp_per_s", "peak_mem_mb",
                 "params_m", "gflops", "gflops_per_s", "efficiency", "baseline_rss_mb", "model_rss_mb"]
PIPELINE_COLUMNS = ["model", "size", "status", "seconds", "e2e_mp_per_s", "model_only_mp_per_s", "ratio", "tiles",
                    "peak_rss_mb", "baseline_rss_mb", "read_s", "model_s", "write_s", "bytes_to_device_per_px"]


def write_json(report: BenchReport, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    return path


def write_csv(report: BenchReport, path: str | os.PathLike) -> Path:
    """One row per record; the main columns first, then every other key (lists as JSON)."""
    path = Path(path)
    first = PIPELINE_COLUMNS if report.mode == "pipeline" else MODEL_COLUMNS
    keys = list(first)
    for r in report.records:
        keys += [k for k in r if k not in keys]
    keys += ["device", "dtype", "torch"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(keys)), extrasaction="ignore")
        w.writeheader()
        for r in report.records:
            row = {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in r.items()}
            row.setdefault("device", report.machine.get("device"))
            row["dtype"] = report.machine.get("settings", {}).get("dtype")
            row["torch"] = report.machine.get("torch")
            w.writerow(row)
    return path


def write_plot(report: BenchReport, path: str | os.PathLike) -> Path:
    """Two panels, one line per model: latency vs size and memory vs size (rows that failed are left out)."""
    plt = pyplot()

    path = Path(path)
    pipeline = report.mode == "pipeline"
    t_key, t_label = ("seconds", "end-to-end time (s)") if pipeline else ("latency_ms_median", "median latency (ms)")
    m_label = "peak RSS (MB)" if pipeline or str(report.machine.get("device", "")).startswith("cpu") else "peak memory (MB)"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in dict.fromkeys(r["model"] for r in report.records):
        rows = sorted((r for r in report.records if r["model"] == name and r.get("status") == "ok"), key=lambda r: r["size"])
        if not rows:
            continue
        xs = [r["size"] for r in rows]
        ax1.plot(xs, [r.get(t_key) for r in rows], marker="o", label=name)
        ax2.plot(xs, [r.get("peak_mem_mb") for r in rows], marker="o", label=name)
    if report.baseline_rss_mb and m_label.startswith("peak RSS"):
        ax2.axhline(report.baseline_rss_mb, color="grey", ls="--", lw=1, label="idle process (torch)")
    for ax, label in ((ax1, t_label), (ax2, m_label)):
        ax.set_xlabel("input side (pixels)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    m = report.machine
    fig.suptitle(f"uhr bench ({report.mode}) on {m.get('gpu') or m.get('cpu')}, torch {m.get('torch')}, "
                 f"{m.get('settings', {}).get('dtype', '')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _f(v: Any, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def _status(r: dict[str, Any]) -> str | None:
    if r.get("status") == "oom":
        return "[red]OOM[/red]"
    if r.get("status") not in (None, "ok"):
        return "[red]error[/red]"
    return None


def model_table(report: BenchReport) -> Table:
    """Rows like ISDNet Tables 3/4 (Model, FPS, Mem) with the latency, FLOP and efficiency columns beside them."""
    cpu = str(report.machine.get("device", "")).startswith("cpu")
    t = Table(show_edge=False, header_style="bold")
    cols = ["Model", "Size", "FPS", "Lat med ms", "Lat p90 ms", "MP/s", "RSS MB" if cpu else "Mem MB",
            "Params M", "GFLOPs", "GFLOP/s", "Eff %"]
    for c in cols:
        t.add_column(c, justify="left" if c == "Model" else "right")
    for r in report.records:
        bad = _status(r)
        if bad:
            t.add_row(r["model"], str(r["size"]), bad, *[""] * (len(cols) - 3))
            continue
        fps = r["fps"]
        eff = r.get("efficiency")
        t.add_row(r["model"], str(r["size"]) + ("" if r.get("input_side", r["size"]) == r["size"] else f"→{r['input_side']}"),
                  _f(fps, 2 if fps < 100 else 0), _f(r["latency_ms_median"]), _f(r["latency_ms_p90"]),
                  _f(r["mp_per_s"], 2), _f(r.get("peak_mem_mb"), 0), _f(r["params_m"], 2), _f(r["gflops"], 1),
                  _f(r["gflops_per_s"], 1), _f(eff * 100 if eff is not None else None, 1))
    return t


def pipeline_table(report: BenchReport) -> Table:
    t = Table(show_edge=False, header_style="bold")
    cols = ["Model", "Size", "Tiles", "Seconds", "E2E MP/s", "Model MP/s", "Ratio", "Peak RSS MB", "Read s",
            "Model s", "Write s", "B/px to device"]
    for c in cols:
        t.add_column(c, justify="left" if c == "Model" else "right")
    for r in report.records:
        bad = _status(r)
        if bad:
            t.add_row(r["model"], str(r["size"]), bad, *[""] * (len(cols) - 3))
            continue
        t.add_row(r["model"], str(r["size"]), str(r["tiles"]), _f(r["seconds"], 1), _f(r["e2e_mp_per_s"], 2),
                  _f(r["model_only_mp_per_s"], 2), _f(r.get("ratio"), 2), _f(r["peak_rss_mb"], 0),
                  _f(r["read_s"], 1), _f(r["model_s"], 1), _f(r["write_s"], 1),
                  _f(r.get("bytes_to_device_per_px"), 2))
    return t


def summary_lines(report: BenchReport) -> list[str]:
    """Machine, roof, baseline, failures and the bi-path speed-up: the lines printed under the table."""
    m = report.machine
    s = m.get("settings", {})
    lines = [f"machine: {m.get('gpu') or m.get('cpu')} ({m.get('cores')} cores, {m.get('torch_threads')} torch threads), "
             f"torch {m.get('torch')}" + (f", CUDA {m['cuda']}" if m.get("cuda") and m.get("gpu") else "")
             + f"; {s.get('dtype')}, batch {s.get('batch_size')}"
             + (", channels-last" if s.get("channels_last") and report.mode == "model" else "")
             + (", BN folded" if s.get("fold_bn") and report.mode == "model" else "")
             + (", torch.compile" if s.get("compile") else "")
             + (f", warmup {s.get('warmup')}, iters {s.get('iters')}" if report.mode == "model" else f", tile {s.get('tile') or 'default'}")]
    if report.roof_gflops:
        lines.append(f"compute roof: {report.roof_gflops:,.1f} GFLOP/s ({s.get('dtype')} matmul); "
                     "Eff % = achieved GFLOP/s / roof")
        roofs = report.machine.get("roofs_gflops")
        if roofs:
            lines.append("other roofs (matmul GFLOP/s): " + ", ".join(f"{k} {v:,.1f}" for k, v in roofs.items()))
    if report.baseline_rss_mb is not None:
        lines.append(f"baseline RSS of an idle worker with torch imported: {report.baseline_rss_mb:.0f} MB "
                     "(each case ran in a fresh process; its RSS includes this)")
    for r in report.records:
        if r.get("status") not in (None, "ok"):
            lines.append(f"{r['model']} @ {r['size']}: {r.get('status').upper()} ({r.get('error', '')})")
        if r.get("compile_s") is not None:
            lines.append(f"{r['model']} @ {r['size']}: torch.compile + first call {r['compile_s']:.1f} s (not in latency)")
    for sp in report.speedups():
        lines.append(f"bi-path speed-up at {sp['size']}: {sp['fast']} is {sp['speedup']:.2f}x the FPS of {sp['slow']}")
    lines += [f"note: {n}" for n in report.notes]
    return lines
