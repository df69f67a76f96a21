"""Run folder records: metrics.csv (one row per logged step or validation) and curves.png."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Sequence

from ..errors import pyplot


class MetricsCSV:
    """Append-only CSV whose columns are fixed at the first row; a resumed run drops rows past its step."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = path
        self.columns: list[str] | None = None
        if resume_step is not None and path.exists():
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
                cols = list(rows[0].keys()) if rows else None
            keep = [r for r in rows if int(float(r["step"])) <= resume_step]
            if cols:
                self.columns = cols
                self._rewrite(keep)
        elif path.exists():
            path.unlink()

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns or [])
            w.writeheader()
            w.writerows(rows)
        tmp.replace(self.path)

    def write(self, row: dict[str, Any], columns: Sequence[str]) -> None:
        if self.columns is None:
            self.columns = list(columns)
            self._rewrite([])
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            w.writerow({k: _fmt(v) for k, v in row.items()})

    def rows(self) -> list[dict[str, str]]:
        if not self.path.exists():
            return []
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return v


def plot_curves(csv_path: Path, out: Path, metric: str) -> None:
    """Loss terms and the validation metric against the step (matplotlib Agg, no display needed)."""
    plt = pyplot()

    if not csv_path.exists():
        return
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    loss_cols = [c for c in rows[0] if c.startswith("loss")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for c in loss_cols:
        pts = [(float(r["step"]), float(r[c])) for r in rows if r.get(c) not in (None, "")]
        if pts:
            axes[0].plot(*zip(*pts), label=c, lw=1.2 if c == "loss" else 0.8)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("loss")
    axes[0].set_yscale("log")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=7)
    pts = [(float(r["step"]), float(r[metric])) for r in rows if r.get(metric) not in (None, "")]
    if pts:
        axes[1].plot(*zip(*pts), marker="o")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel(metric)
    axes[1].grid(alpha=0.3)
    fig.tight_layout()
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(out)
