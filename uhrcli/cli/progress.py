"""A rich progress bar fed by the API's progress callbacks (megapixels, MP/s, ETA)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from rich.progress import BarColumn, Progress, ProgressColumn, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

from .common import console_err


class RateColumn(ProgressColumn):
    def __init__(self, unit: str, scale: float):
        super().__init__()
        self.unit, self.scale = unit, scale

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("--" if speed is None else f"{speed / self.scale:.2f} {self.unit}", style="cyan")


@contextmanager
def pixel_progress(label: str, enabled: bool) -> Iterator[Callable[[str, int, int], None]]:
    """Yields a callback(event, done, total) for uhrcli.segment(progress=...): one bar per phase.

    Events: "phase:NAME" (0, units) opens a bar; "advance"/"tile" (n, 0) move the open bar on.
    """
    if not enabled or not console_err.is_terminal:
        yield lambda event, done, total: None
        return
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                        TextColumn("{task.completed:,.0f}/{task.total:,.0f} px"), RateColumn("MP/s", 1e6),
                        TimeRemainingColumn(), console=console_err, transient=False)
    state: dict = {}

    def cb(event: str, done: int, total: int) -> None:
        if event.startswith("phase:"):
            if "task" in state:
                progress.update(state["task"], completed=progress.tasks[-1].total)
            state["task"] = progress.add_task(f"{label}: {event[6:]}", total=total)
        elif event in ("tile", "advance") and "task" in state:
            progress.advance(state["task"], done)

    with progress:
        yield cb
