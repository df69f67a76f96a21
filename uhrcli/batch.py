"""Many rasters in one run: a bad raster is reported and the batch goes on; reruns finish what is left.

A batch stops early only for what would fail every raster after it (a full disk) and for Ctrl-C; a
single input keeps raising its error, as it always did.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Iterable, TypeVar

from .errors import OutputError, UhrError, UsageError, first_line

R = TypeVar("R")


@dataclass
class Job:
    """One input, its main output, every file it writes, and the scratch store an interrupted run leaves."""

    src: Path
    target: Path
    fmt: str
    outputs: list[Path]
    scratch: Path

    def finished(self) -> bool:
        return all(p.exists() for p in self.outputs)

    def interrupted(self) -> bool:
        return self.scratch.exists()


class BatchReport(list, Generic[R]):
    """The results (a list, as before), plus what failed (input, one-line message) and what was skipped."""

    def __init__(self, results: Iterable[R] = ()):
        super().__init__(results)
        self.failed: list[tuple[Path, str]] = []
        self.skipped: list[Path] = []

    @property
    def ok(self) -> bool:
        return not self.failed


def check_existing(jobs: list[Job], overwrite: bool, skip_existing: bool, resume: bool) -> None:
    """Refuse a batch before any work when it would meet outputs or interrupted runs nobody said what to do with."""
    if overwrite and skip_existing:
        raise UsageError("--overwrite and --skip-existing contradict each other: pick one")
    if overwrite or resume:
        return
    left = [j.scratch for j in jobs if j.interrupted()]
    if left:
        more = f" and {len(left) - 1} more" if len(left) > 1 else ""
        raise OutputError(f"an interrupted run left {left[0]}{more}: pass --resume to finish "
                          f"{'them' if more else 'it'} or --overwrite to start again")
    if skip_existing:
        return
    existing = [p for j in jobs for p in j.outputs if p.exists()]
    if existing:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise OutputError(f"output exists: {existing[0]}{more} (pass --skip-existing to resume, "
                          f"or --overwrite to replace them)")


def plan_jobs(jobs: list[Job], skip_existing: bool, resume: bool) -> tuple[list[tuple[Job, bool]], list[Path]]:
    """(job, replace) for the jobs to run, and the inputs --skip-existing skips (every output there).

    replace=True where --skip-existing meets a partial set of outputs (say, --probs added): written again."""
    todo: list[tuple[Job, bool]] = []
    skipped: list[Path] = []
    for job in jobs:
        replace = False
        if skip_existing and not (resume and job.interrupted()):
            have = [p.exists() for p in job.outputs]
            if all(have):
                skipped.append(job.src)
                continue
            replace = any(have)
        todo.append((job, replace))
    return todo, skipped


def failure_message(job: Job, exc: BaseException) -> str:
    """The one line a batch reports for a raster that failed (it names the input)."""
    msg = str(exc).strip().splitlines()[0] if isinstance(exc, UhrError) and str(exc).strip() \
        else f"{type(exc).__name__}: {first_line(exc)}"
    return msg if str(job.src) in msg else f"{job.src}: {msg}"


def stops_batch(exc: BaseException, msg: str) -> bool:
    """Failures every raster after this one would meet too (a full disk): the batch stops."""
    return isinstance(exc, OutputError) and msg.find("disk full") >= 0


def interrupted_batch(exc: KeyboardInterrupt, job: Job, finished: int, total: int) -> KeyboardInterrupt:
    msg = str(exc) or f"interrupted at {job.src.name}"
    hint = "" if "--resume" in msg else "; rerun with --resume"
    return KeyboardInterrupt(f"{msg}{hint} ({finished} of {total} raster(s) finished in this run)")


def run_batch(jobs: list[Job], run_one: Callable[[Job, bool], R], *, many: bool, skip_existing: bool,
              resume: bool, on_error: Callable[[Path, str], Any] | None = None) -> BatchReport[R]:
    """run_one(job, replace) for every job; replace=True where --skip-existing meets a partial set of outputs.

    many=False: the single input's error is raised as it is.
    """
    report: BatchReport[R] = BatchReport()
    todo, report.skipped = plan_jobs(jobs, skip_existing, resume)
    for job, replace in todo:
        try:
            report.append(run_one(job, replace))
        except KeyboardInterrupt as exc:
            if not many:
                raise
            raise interrupted_batch(exc, job, len(report), len(jobs)) from None
        except Exception as exc:  # noqa: BLE001 - in a batch, any failure of one raster is that raster's
            if not many:
                raise
            msg = failure_message(job, exc)
            if stops_batch(exc, msg):
                raise  # every raster after it would fail the same way
            report.failed.append((job.src, msg))
            if on_error is not None:
                on_error(job.src, msg)
    return report


__all__ = ["BatchReport", "Job", "check_existing", "failure_message", "plan_jobs", "run_batch", "stops_batch"]

