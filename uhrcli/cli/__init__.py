"""The `uhr` command line: a thin layer that parses, calls uhrcli's API, and prints.

Each command lives in its own module and registers itself on `app`.
"""
from __future__ import annotations

import importlib

from .common import app, run_app, wrap_commands

# Command modules register themselves on `app` when imported.
_COMMANDS = ["segment", "info", "saliency", "bench", "train", "evaluate", "weights", "vectorize", "refine"]
for _name in _COMMANDS:
    importlib.import_module(f"{__name__}.{_name}")
wrap_commands(app)


def main() -> None:
    run_app(app)


__all__ = ["app", "main"]
