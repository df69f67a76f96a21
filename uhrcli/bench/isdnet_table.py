"""`uhr bench --table isdnet`: ISDNet's Tables 3 and 4 (Guo et al., CVPR 2022) measured on this machine.

Each registered model of the tables is timed (model only, as `uhr bench` times it) at the papers' input
sizes, 1024 x 2048 (Cityscapes) and 2448 x 2448 (DeepGlobe), and printed beside the paper's own
figures (its GPU; mIoU on Cityscapes, FPS, memory). The paper frames every comparison as
ISD / baseline; so does this table, once with the paper's numbers and once with this machine's:
  - Table 3 rows are compared with ISDNet (isdnet-r18),
  - Table 4 rows with their own ISD graft: PSPNet with isdnet-psp, SegFormer-B0 with isdnet-segformer-b0.
Models of the tables that the registry does not hold are listed as "not in registry".
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from rich.table import Table

from ..errors import UsageError, pyplot

# (registry name, the paper's name, mIoU, FPS, memory MB at 1024 x 2048 on the paper's GPU; None: not given)
PAPER: list[tuple[str, str, float | None, float | None, float | None]] = [
    ("isdnet-r18", "ISDNet", 76.02, 50.79, 1510),
    ("deeplabv3-r18", "DeepLabv3", 76.70, 13.32, 1468),
    ("deeplabv3-r18-down4", "DeepLabv3 (1/4 scale)", None, None, None),
    ("bisenetv1-r18", "BiSeNetV1", 74.44, 42.43, 2147),
    ("bisenetv2", "BiSeNetV2", 75.80, 43.07, 1602),
    ("pspnet-r18", "PSPNet", 74.87, 15.15, 1584),
    ("pspnet-r18-down2", "PSPNet (1/2 scale)", None, None, None),
    ("pspnet-r18-down4", "PSPNet (1/4 scale)", None, None, None),
    ("pspnet-r50", "PSPNet (R50)", None, None, None),
    ("pspnet-r50-down2", "PSPNet (R50, 1/2 scale)", None, None, None),
    ("pspnet-r50-down4", "PSPNet (R50, 1/4 scale)", None, None, None),
    ("icnet", "ICNet", 74.43, 68.55, 1390),
    ("stdc1-seg", "STDC", 74.5, 62.15, 1536),
    ("stdc2-seg", "STDC2", None, None, None),
    ("isdnet-psp", "PSPNet + ISD", 74.30, 58.29, 1540),
    ("segformer-b0", "Segformer-b0", 73.45, 13.70, 3114),
    ("segformer-b0-down2", "Segformer-b0 (1/2 scale)", None, 65.49, None),
    ("segformer-b0-down4", "Segformer-b0 (1/4 scale)", None, 76.22, None),
    ("isdnet-segformer-b0", "Segformer-b0 + ISD", 72.99, 41.82, 1500),
]
PAPER_2448 = {"isdnet-r18": (73.30, 27.70, None)}  # DeepGlobe, the only 2448 x 2448 speed the paper gives
ALIASES = {"isdnet-psp": ("isdnet-psp", "isdnet-r18-psp")}  # the registry's name for ISDNet's PSP graft
DEFAULT_SHAPES = ((1024, 2048), (2448, 2448))


def reference_of(name: str) -> str | None:
    """The ISD model a row is compared with (None for the ISD models themselves)."""
    if name.startswith(("isdnet",)):
        return None
    if name.startswith("pspnet"):
        return "isdnet-psp"
    if name.startswith("segformer"):
        return "isdnet-segformer-b0"
    return "isdnet-r18"


def parse_shapes(sizes: Sequence[str | int] | None) -> list[tuple[int, int]]:
    """'1024x2048' -> (1024, 2048); '2448' -> (2448, 2448)."""
    if not sizes:
        return list(DEFAULT_SHAPES)
    out = []
    for s in sizes:
        parts = str(s).lower().replace("*", "x").split("x")
        if len(parts) not in (1, 2) or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            raise UsageError(f"--sizes takes HxW or N (positive integers), got {s!r}")
        h, w = int(parts[0]), int(parts[-1])
        out.append((h, w))
    return out


def resolve(names: Sequence[str] | None) -> tuple[list[tuple[str, str]], list[str]]:
    """([(table name, registry name)] to run, [table names not in the registry])."""
    from ..models import list_models

    available = set(list_models())
    table = [p[0] for p in PAPER]
    if names:
        unknown = [n for n in names if n not in table]
        if unknown:
            raise UsageError(f"{unknown[0]!r} is not a model of the ISDNet table; its models: {', '.join(table)}")
        table = [n for n in table if n in names]
    run, missing = [], []
    for n in table:
        reg = next((a for a in ALIASES.get(n, (n,)) if a in available), None)
        (run.append((n, reg)) if reg else missing.append(n))
    return run, missing


@dataclass
class TableReport:
    rows: list[dict[str, Any]]
    missing: list[str]
    machine: dict[str, Any]
    shapes: list[tuple[int, int]]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"table": "isdnet", "machine": self.machine, "shapes": [list(s) for s in self.shapes],
                "not_in_registry": self.missing, "notes": self.notes, "rows": self.rows}


def mem_of(rec: dict[str, Any]) -> float | None:
    """The memory compared: the model's own share of RSS on CPU (peak minus an idle worker), else peak."""
    v = rec.get("model_rss_mb")
    return v if v is not None else rec.get("peak_mem_mb")


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """ratio = ISD / baseline (FPS and memory), from the paper's figures and from this machine's, per size."""
    by = {(r["model"], r["size"]): r for r in rows}
    for r in rows:
        ref = by.get((r["reference"], r["size"])) if r["reference"] else None
        r["ratio_fps"] = r["ratio_mem"] = r["paper_ratio_fps"] = r["paper_ratio_mem"] = None
        if ref is None:
            continue
        if r.get("status") == "ok" and ref.get("status") == "ok":
            if r["fps"]:
                r["ratio_fps"] = ref["fps"] / r["fps"]
            if r.get("mem_mb") and ref.get("mem_mb") is not None:
                r["ratio_mem"] = ref["mem_mb"] / r["mem_mb"]
        if r.get("paper_fps") and ref.get("paper_fps"):
            r["paper_ratio_fps"] = ref["paper_fps"] / r["paper_fps"]
        if r.get("paper_mem_mb") and ref.get("paper_mem_mb"):
            r["paper_ratio_mem"] = ref["paper_mem_mb"] / r["paper_mem_mb"]


def run_isdnet_table(models: Sequence[str] | None = None, sizes: Sequence[str | int] | None = None,
                     device: str = "auto", warmup: int | None = None, iters: int | None = None,
                     isolate: bool | None = None, timeout_s: float | None = None,
                     progress: Callable[[str], Any] | None = None) -> TableReport:
    """Measure the table's registered models at each size; rows carry the paper's figures and the ratios."""
    from ..device import resolve_device
    from .machine import machine_info
    from .runner import run_worker

    dev = resolve_device(device)
    shapes = parse_shapes(sizes)
    run, missing = resolve(models)
    accel = dev.type in ("cuda", "mps")
    warmup = (10 if accel else 1) if warmup is None else warmup
    iters = (50 if accel else 3) if iters is None else iters
    if warmup < 0 or iters < 1:
        raise UsageError("--warmup must be >= 0 and --iters >= 1")
    isolate = dev.type == "cpu" if isolate is None else isolate
    amp = dev.type == "cuda"
    settings = {"mode": "model", "table": "isdnet", "dtype": "fp16-autocast" if amp else "fp32", "amp": amp,
                "channels_last": True, "fold_bn": True, "batch_size": 1, "warmup": warmup, "iters": iters,
                "sizes": [f"{h}x{w}" for h, w in shapes], "models": [r for _, r in run], "isolated": isolate}
    machine = machine_info(dev, settings)
    baseline = None
    if isolate:
        baseline = run_worker({"mode": "baseline"}, timeout_s).get("peak_rss_mb")
        machine["baseline_rss_mb"] = baseline
    paper = {p[0]: p for p in PAPER}
    rows: list[dict[str, Any]] = []
    for name, reg in run:
        for h, w in shapes:
            if progress:
                progress(f"{reg} @ {h}x{w}")
            spec = {"mode": "model", "model": reg, "size": h, "height": h, "width": w, "device": str(dev),
                    "batch_size": 1, "amp": amp, "channels_last": True, "fold_bn": True, "compile": False,
                    "warmup": warmup, "iters": iters, "seed": 0}
            if isolate:
                rec = run_worker(spec, timeout_s)
            else:
                from .model import measure_model

                rec = measure_model(spec)
            if baseline is not None and rec.get("peak_rss_mb") is not None:
                rec["baseline_rss_mb"] = baseline
                rec["model_rss_mb"] = rec["peak_rss_mb"] - baseline
            _, pname, miou, pfps, pmem = paper[name]
            if (h, w) != (1024, 2048):  # the paper's Cityscapes figures are for 1024 x 2048 only
                miou, pfps, pmem = PAPER_2448.get(name, (None, None, None)) if (h, w) == (2448, 2448) else (
                    None, None, None)
            rows.append({"model": name, "registry_name": reg, "size": f"{h}x{w}", "height": h, "width": w,
                         "status": rec.get("status", "ok"), "error": rec.get("error"),
                         "fps": rec.get("fps"), "latency_ms": rec.get("latency_ms_median"),
                         "mem_mb": mem_of(rec), "peak_mem_mb": rec.get("peak_mem_mb"),
                         "params_m": rec.get("params_m"), "gflops": rec.get("gflops"),
                         "paper_name": pname, "paper_miou": miou, "paper_fps": pfps, "paper_mem_mb": pmem,
                         "reference": reference_of(name)})
    add_ratios(rows)
    notes = []
    if dev.type == "cpu":
        notes.append("memory here: peak RSS of a fresh worker minus an idle worker's (torch imported); the "
                     "paper's: GPU memory. FPS: median of the timed passes, batch 1, fp32")
    return TableReport(rows=rows, missing=missing, machine=machine, shapes=shapes, notes=notes)


# -- output -------------------------------------------------------------------------------------------------
COLUMNS = ["model", "registry_name", "size", "status", "fps", "latency_ms", "mem_mb", "peak_mem_mb", "params_m",
           "gflops", "paper_name", "paper_miou", "paper_fps", "paper_mem_mb", "reference", "ratio_fps",
           "ratio_mem", "paper_ratio_fps", "paper_ratio_mem", "error"]


def _f(v: Any, digits: int = 1) -> str:
    return "-" if v is None else (f"{v:,.{digits}f}" if isinstance(v, float) else str(v))


def table(report: TableReport) -> Table:
    cpu = str(report.machine.get("device", "")).startswith("cpu")
    t = Table(show_edge=False, header_style="bold", title="ISDNet Tables 3/4: this machine | the paper (its GPU)")
    for c in ("Model", "Size", "FPS", "Lat ms", "RSS MB" if cpu else "Mem MB", "Params M", "GFLOPs", "vs",
              "ISD/x FPS", "ISD/x Mem", "Paper model", "mIoU", "P. FPS", "P. Mem", "P. ISD/x FPS", "P. ISD/x Mem"):
        t.add_column(c, justify="left" if c in ("Model", "vs", "Paper model") else "right",
                     no_wrap=c in ("Model", "Size", "vs"))
    for r in report.rows:
        ok = r["status"] == "ok"
        here = ([_f(r["fps"], 2), _f(r["latency_ms"], 0), _f(r["mem_mb"], 0), _f(r["params_m"], 2),
                 _f(r["gflops"], 1)] if ok else [f"[red]{r['status']}[/red]", "", "", "", ""])
        t.add_row(r["model"], r["size"], *here, r["reference"] or "", _f(r["ratio_fps"], 2), _f(r["ratio_mem"], 2),
                  r["paper_name"], _f(r["paper_miou"], 2), _f(r["paper_fps"], 2), _f(r["paper_mem_mb"], 0),
                  _f(r["paper_ratio_fps"], 2), _f(r["paper_ratio_mem"], 2))
    for n in report.missing:
        t.add_row(n, "", "[dim]not in registry[/dim]", *[""] * 13)
    return t


def summary(report: TableReport) -> list[str]:
    m = report.machine
    lines = [f"machine: {m.get('gpu') or m.get('cpu')} ({m.get('cores')} cores), torch {m.get('torch')}; "
             f"ISD/x = the ISD model's figure over the row's (FPS: > 1 means ISD is faster; memory: < 1 means it "
             "needs less)"]
    if report.missing:
        lines.append("not in registry: " + ", ".join(report.missing))
    for r in report.rows:
        if r["status"] != "ok":
            lines.append(f"{r['model']} @ {r['size']}: {r['status']} ({r.get('error')})")
    return lines + [f"note: {n}" for n in report.notes]


def write_json(report: TableReport, path: str | os.PathLike) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def write_csv(report: TableReport, path: str | os.PathLike) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in report.rows:
            w.writerow(r)
        for n in report.missing:
            w.writerow({"model": n, "status": "not in registry"})
    os.replace(tmp, path)
    return path


def write_plot(report: TableReport, path: str | os.PathLike) -> Path:
    """FPS against memory: one panel per measured size, and the paper's 1024 x 2048 GPU figures."""
    plt = pyplot()
    path = Path(path)
    sizes = list(dict.fromkeys(r["size"] for r in report.rows))
    fig, axes = plt.subplots(1, len(sizes) + 1, figsize=(5.2 * (len(sizes) + 1), 4.4), squeeze=False)
    panels = [(s, [r for r in report.rows if r["size"] == s and r["status"] == "ok"], "fps", "mem_mb")
              for s in sizes]
    shown = {r["model"] for r in report.rows} | set(report.missing)  # the paper's points for the rows asked
    panels.append(("paper, 1024x2048 (its GPU)", [{"model": n, "paper_fps": f, "paper_mem_mb": m}
                                                  for n, _, _, f, m in PAPER if n in shown and f and m],
                   "paper_fps", "paper_mem_mb"))
    cpu = str(report.machine.get("device", "")).startswith("cpu")
    colour = {p[0]: f"C{i % 10}" for i, p in enumerate(PAPER)}  # one colour per model in every panel
    for ax, (title, rows, fk, mk) in zip(axes[0], panels):
        for r in rows:
            isd = r["model"].startswith("isdnet")
            ax.scatter(r[mk], r[fk], marker="*" if isd else "o", s=90 if isd else 40, color=colour.get(r["model"]))
            ax.annotate(r["model"], (r[mk], r[fk]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("memory (MB)" if mk == "paper_mem_mb" else ("model RSS (MB)" if cpu else "peak memory (MB)"))
        ax.set_ylabel("FPS")
        ax.grid(alpha=0.3)
    m = report.machine
    fig.suptitle(f"uhr bench --table isdnet on {m.get('gpu') or m.get('cpu')}, torch {m.get('torch')}", fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".part" + path.suffix)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


__all__ = ["PAPER", "TableReport", "run_isdnet_table", "table", "summary", "write_csv", "write_json", "write_plot",
           "parse_shapes", "add_ratios"]
