"""Phases, measured rates and the whole job's ETA, from the API's progress(event, done, total) calls.

`uhrcli.segment.segment(progress=...)` reports its work as calls (all units are full-resolution pixels):

  ("input:PATH", 0, 0)               the next raster
  ("start", 0, pixels)               it begins
  ("plan:NAME=COST;...", 0, pixels)  the phases it expects, with their relative cost per pixel
  ("phase:NAME", done, total)        a phase begins (done > 0: work an interrupted run already did)
  ("advance" or "tile", n, 0)        n more units of the open phase
  ("done", 0, 0)                     the raster's outputs are in place
  ("end", 0, 0)                      the raster is finished, or failed

`JobProgress` turns those calls into phases with their own measured rates and one ETA for the job:
the open phase's rest at that phase's mean rate, and the phases still to come (weighted by their cost per
pixel, measured on this project's CPU) at the job's measured rate so far. It imports nothing heavy, so notebooks
can pass `JobProgress(listener)` as the callback.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

# Relative seconds per pixel of each phase, from `benchmarks/twoscale_throughput.py --side 10000` (isdnet-r18,
# 2-core CPU: deep branch 13-16 s, shallow pass 49-52 s, fusion pass 4 s, tile pass ~10 s of ~80 s) and
# 9-megapixel runs of the demo model and fcn-tiny (writing 1-2% of the job, 5% with --probs).
WRITING_COST = 0.02
WRITING_COST_PROBS = 0.06


def plan_event(phases: Sequence[tuple[str, float]]) -> str:
    """The "plan:..." event for phases [(name, relative cost per pixel), ...]."""
    return "plan:" + ";".join(f"{name}={cost:g}" for name, cost in phases)


def parse_plan(event: str) -> list[tuple[str, float]]:
    out = []
    for part in event[len("plan:"):].split(";"):
        name, _, cost = part.rpartition("=")
        if name:
            try:
                out.append((name, float(cost)))
            except ValueError:
                continue
    return out


def segment_plan(inferer: Any, probs: bool) -> str:
    """The phases a segmentation run goes through: the inferer's, then writing the outputs."""
    phases = list(getattr(inferer, "phases", (("tiles", 1.0),)))
    return plan_event(phases + [("writing", WRITING_COST_PROBS if probs else WRITING_COST)])


@dataclass
class Phase:
    name: str
    total: int
    started: float
    done: int = 0
    start_done: int = 0  # what an earlier (interrupted) run had done: not part of this run's rate
    ended: float | None = None

    def seconds(self, now: float) -> float:
        return (self.ended if self.ended is not None else now) - self.started

    def rate(self, now: float) -> float | None:
        """Units per second in this phase so far (its mean, not a sliding window)."""
        s = self.seconds(now)
        n = self.done - self.start_done
        return n / s if s > 0 and n > 0 else None

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total > 0 else 1.0


Listener = Callable[["JobProgress", str], Any]


@dataclass
class JobProgress:
    """A progress callback that keeps the phases of the current raster; `listener(self, what)` hears of
    each change: "input", "start", "phase" (a new phase; the previous one is closed), "advance", "done",
    "end"."""

    listener: Listener | None = None
    clock: Callable[[], float] = time.perf_counter
    input: str | None = None
    rasters: int = 0
    total: int = 0
    started: float = 0.0
    finished: bool = False
    phases: list[Phase] = field(default_factory=list)
    plan: list[tuple[str, float]] = field(default_factory=list)
    history: dict[str, dict[str, float]] = field(default_factory=dict)  # input -> seconds per phase, when ended

    @property
    def current(self) -> Phase | None:
        return self.phases[-1] if self.phases and self.phases[-1].ended is None else None

    def __call__(self, event: str, done: int, total: int) -> None:
        now = self.clock()
        if event.startswith("input:"):
            self.input = event[len("input:"):]
            what = "input"
        elif event == "start":
            self.rasters += 1
            self.total, self.started, self.finished = int(total), now, False
            self.phases, self.plan = [], []
            what = "start"
        elif event.startswith("plan:"):
            self.plan = parse_plan(event)
            return
        elif event.startswith("phase:"):
            self._close(now, complete=True)  # a phase begins only when the one before it is through
            start = min(int(done), int(total))
            self.phases.append(Phase(event[len("phase:"):], int(total), now, start, start))
            what = "phase"
        elif event in ("advance", "tile"):
            p = self.current
            if p is None:
                return
            p.done = min(p.total, p.done + int(done))
            what = "advance"
        elif event == "done":
            self._close(now, complete=True)
            self.finished = True
            what = "done"
        elif event == "end":
            self._close(now, complete=False)  # after an error the open phase stays where it stopped
            self.history[str(self.input)] = self.phase_seconds()
            what = "end"
        else:
            return
        if self.listener is not None:
            self.listener(self, what)

    def _close(self, now: float, complete: bool) -> None:
        p = self.current
        if p is not None:
            if complete:
                p.done = p.total
            p.ended = now

    def elapsed(self, now: float | None = None) -> float:
        return (self.clock() if now is None else now) - self.started

    def _cost(self, name: str) -> float:
        for n, c in self.plan:
            if n == name:
                return c
        return 1.0 / max(1, len(self.plan)) if self.plan else 1.0

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left for the whole raster: the open phase's rest at its own measured rate, the phases still
        to come at the job's measured rate per unit of cost (None until something was measured)."""
        now = self.clock() if now is None else now
        if self.finished:
            return 0.0
        done_work = later = 0.0
        for p in self.phases:
            done_work += self._cost(p.name) * (p.done - p.start_done)
        names = [n for n, _ in self.plan]
        seen = {p.name for p in self.phases}
        last = max((names.index(p.name) for p in self.phases if p.name in names), default=-1)
        for i, (name, c) in enumerate(self.plan):  # phases still to come (earlier ones not seen were skipped)
            if i > last and name not in seen:
                later += c * self.total
        elapsed = now - self.started
        if done_work <= 0 or elapsed <= 0:
            return None
        per_work = elapsed / done_work
        cur = self.current
        if cur is None:
            return later * per_work
        rate = cur.rate(now)
        rest = (cur.total - cur.done) / rate if rate else self._cost(cur.name) * (cur.total - cur.done) * per_work
        return rest + later * per_work

    def phase_seconds(self) -> dict[str, float]:
        now = self.clock()
        return {p.name: round(p.seconds(now), 3) for p in self.phases}


class ReportReads:
    """Stands in for a scratch store while the outputs are written: every row band read from its `classes`
    or `probs` arrays advances the "writing" phase, so writing a large map shows progress.

    Units are image pixels: with n arrays written, each row read counts width / n."""

    def __init__(self, scratch: Any, progress: Callable[[str, int, int], Any], arrays: int):
        self._scratch, self._progress = scratch, progress
        self._scale = 1.0 / max(1, arrays)
        self._rows = 0.0
        self._reported = 0
        self._width = int(scratch.classes.shape[-1])

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._scratch, name)
        if name in ("classes", "probs") and value is not None:
            return _RowCounter(value, self)
        return value

    def finish(self, total: int) -> None:
        """The outputs are in place: what the reads did not count (closing streamed outputs) is done too."""
        if total > self._reported:
            self._progress("advance", total - self._reported, 0)
            self._reported = total

    def _read(self, rows: int) -> None:
        self._rows += rows * self._scale
        now = int(self._rows * self._width)
        if now > self._reported:
            self._progress("advance", now - self._reported, 0)
            self._reported = now


class _RowCounter:
    def __init__(self, array: Any, owner: ReportReads):
        self._array, self._owner = array, owner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._array, name)

    def __getitem__(self, key: Any) -> Any:
        out = self._array[key]
        axis = self._array.ndim - 2  # rows: classes (H, W), probs (K, H, W)
        parts = key if isinstance(key, tuple) else (key,)
        rows = parts[axis] if len(parts) > axis else slice(None)
        if isinstance(rows, slice):
            a, b, _ = rows.indices(int(self._array.shape[axis]))
            self._owner._read(max(0, b - a))
        return out


__all__ = ["JobProgress", "Phase", "ReportReads", "plan_event", "parse_plan", "segment_plan"]
