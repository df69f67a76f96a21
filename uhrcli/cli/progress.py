"""Progress of a run, shown three ways from one uhrcli.progress.JobProgress:

- on a terminal, one rich bar per phase (its name, its own mean rate) with the whole job's ETA on the open one;
- on a log file (stderr not a terminal), one line per finished phase;
- with --json, one JSON object per line on stdout: {"event": "phase", "phase", "done", "total", "seconds",
  "elapsed", "eta", ...} at each phase's start and end and at most every `JSON_INTERVAL` seconds between.
"""
from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any, Iterator

from rich.progress import BarColumn, Progress, ProgressColumn, TaskProgressColumn, TextColumn
from rich.text import Text

from ..progress import JobProgress
from .common import console_err

JSON_INTERVAL = 0.5  # seconds between two events of the same phase (starts and ends always go out)


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "-:--"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def emit_json(obj: dict[str, Any]) -> None:
    """One object per line on stdout, flushed: scripts read it as it comes."""
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


class _TimeColumn(ProgressColumn):
    """A finished phase: how long it took. The open phase: the whole job's ETA at its measured rate."""

    def __init__(self, job: JobProgress):
        super().__init__()
        self.job = job

    def render(self, task) -> Text:
        phase = task.fields.get("phase")
        if phase is None:
            return Text("")
        if phase.ended is not None:
            return Text(f"took {clock(phase.seconds(self.job.clock()))}", style="green")
        return Text(f"job ETA {clock(self.job.eta())}", style="cyan")


class _RateColumn(ProgressColumn):
    def __init__(self, job: JobProgress, unit: str, scale: float):
        super().__init__()
        self.job, self.unit, self.scale = job, unit, scale

    def render(self, task) -> Text:
        phase = task.fields.get("phase")
        rate = phase.rate(self.job.clock()) if phase is not None else None
        return Text("--" if rate is None else f"{rate / self.scale:.2f} {self.unit}", style="cyan")


class _Bars:
    def __init__(self, job: JobProgress, label: str, unit: str, rate_unit: str, scale: float):
        self.job, self.label = job, label
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                                 TextColumn("{task.completed:,.0f}/{task.total:,.0f} " + unit),
                                 _RateColumn(job, rate_unit, scale), _TimeColumn(job), console=console_err,
                                 transient=False)
        self.tasks: list[int] = []
        self.summary = ""

    def __call__(self, job: JobProgress, what: str) -> None:
        if what == "start" and self.tasks:  # the next raster: the last one's bars become one line
            if self.summary:
                self.progress.console.print(self.summary, highlight=False, soft_wrap=True, markup=False)
            for t in self.tasks:
                self.progress.remove_task(t)
            self.tasks, self.summary = [], ""
        if what == "end":
            now = job.clock()
            parts = ", ".join(f"{p.name} {p.seconds(now):.1f} s" for p in job.phases)
            self.summary = f"{job.input or 'raster'}: {parts}; {job.elapsed(now):.1f} s in all"
        if what == "phase":
            self._sync_previous()
            p = job.phases[-1]
            self.tasks.append(self.progress.add_task(f"{self.label}{p.name}", total=max(1, p.total),
                                                     completed=p.done, phase=p))
        elif what in ("advance", "done", "end"):
            self._sync_previous()

    def _sync_previous(self) -> None:
        for task_id, p in zip(self.tasks, self.job.phases):
            self.progress.update(task_id, completed=p.done)


class _Lines:
    """Stderr is a file: a line per finished phase (a log shows where the time went)."""

    def __init__(self, unit: str, scale: float, rate_unit: str):
        self.unit, self.scale, self.rate_unit = unit, scale, rate_unit
        self.reported = 0

    def __call__(self, job: JobProgress, what: str) -> None:
        if what == "start":
            self.reported = 0
        now = job.clock()
        for p in job.phases[self.reported:]:
            if p.ended is None:
                break
            rate = p.rate(now)
            speed = f" ({rate / self.scale:.2f} {self.rate_unit})" if rate else ""
            where = f"{job.input}: " if job.input else ""
            console_err.print(f"{where}{p.name}: {p.done:,}/{p.total:,} {self.unit} in {p.seconds(now):.1f} s{speed}",
                              highlight=False, soft_wrap=True, markup=False)
            self.reported += 1


class _Json:
    def __init__(self, interval: float = JSON_INTERVAL):
        self.interval = interval
        self.last: dict[int, float] = {}
        self.sent_final: set[int] = set()
        self.last_done: dict[int, int] = {}

    def _send(self, job: JobProgress, i: int, now: float) -> None:
        p = job.phases[i]
        eta = job.eta(now)
        emit_json({"event": "phase", "input": job.input, "phase": p.name, "done": p.done, "total": p.total,
                   "seconds": round(p.seconds(now), 3), "elapsed": round(job.elapsed(now), 3),
                   "eta": None if eta is None else round(eta, 1)})
        self.last[i] = now
        self.last_done[i] = p.done

    def __call__(self, job: JobProgress, what: str) -> None:
        now = job.clock()
        if what == "start":
            self.last, self.sent_final, self.last_done = {}, set(), {}
        if what in ("phase", "done", "end"):
            for i, p in enumerate(job.phases):  # what closed: its last state, once
                if p.ended is not None and i not in self.sent_final:
                    if self.last_done.get(i) != p.done:  # not when its last line already said as much
                        self._send(job, i, now)
                    self.sent_final.add(i)
            if what == "phase":
                self._send(job, len(job.phases) - 1, now)
        elif what == "advance":
            i = len(job.phases) - 1
            if i >= 0 and now - self.last.get(i, 0.0) >= self.interval:
                self._send(job, i, now)


@contextmanager
def job_progress(label: str, *, enabled: bool, as_json: bool = False, unit: str = "px",
                 rate_unit: str = "MP/s", scale: float = 1e6) -> Iterator[JobProgress]:
    """A JobProgress to pass as the API's progress callback, shown as bars, log lines or JSON events."""
    if as_json:
        yield JobProgress(_Json())
        return
    if not enabled:
        yield JobProgress()
        return
    if not console_err.is_terminal:
        yield JobProgress(_Lines(unit, scale, rate_unit))
        return
    job = JobProgress()
    bars = _Bars(job, f"{label}: " if label else "", unit, rate_unit, scale)
    job.listener = bars
    with bars.progress:
        yield job
