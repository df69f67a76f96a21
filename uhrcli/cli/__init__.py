"""The `uhr` command line: a thin layer that parses, calls uhrcli's API, and prints.

Each command lives in its own module and registers itself on `app`.
"""
from __future__ import annotations

import importlib
import os
import sys

import typer

from .common import app, console_err, run_app

# Command modules register themselves on import; a module missing from a
# partial install should not take the whole CLI down.
_COMMANDS = ["segment", "info", "saliency", "bench", "train", "evaluate", "weights"]
for _name in _COMMANDS:
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as exc:  # pragma: no cover - only in partial trees
        if exc.name != f"{__name__}.{_name}":
            raise


def main() -> None:
    run_app(app)


__all__ = ["app", "main"]
