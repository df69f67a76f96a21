"""A rich progress bar fed by the API's progress callbacks (megapixels, MP/s, ETA)."""
from __future__ import annotations

import sys
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
    """Yields a callback(event, done, total) suitable for uhrcli.segment(progress=...)."""
    if not enabled or not console_err.is_terminal:
        yield lambda event, done, total: None
        return
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                        TextColumn("{task.completed:,.0f}/{task.total:,.0f} px"), RateColumn("MP/s", 1e6),
                        TimeRemainingColumn(), console=console_err, transient=False)
    state: dict = {}

    def cb(event: str, done: int, total: int) -> None:
        if event == "start":
            state["task"] = progress.add_task(state.get("label", label), total=total)
        elif event == "tile" and "task" in state:
            progress.advance(state["task"], done)
        elif event == "label":
            state["label"] = str(total)

    with progress:
        yield cb
