"""Shared CLI plumbing: the Typer app, error reporting, option parsing helpers."""
from __future__ import annotations

import os
import sys
import traceback
from typing import Optional

import typer
from rich.console import Console

from .. import __version__
from ..errors import UhrError, UsageError


def _console(stderr: bool = False) -> Console:
    """Tables piped to a file or a CI log keep their columns: rich would squeeze them into 80."""
    probe = Console(stderr=stderr)
    if probe.is_terminal or os.environ.get("COLUMNS"):
        return probe
    return Console(stderr=stderr, width=160)


console = _console()
console_err = _console(stderr=True)

app = typer.Typer(
    name="uhr",
    help="Ultra-high-resolution segmentation and saliency on images larger than memory.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_STATE = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"uhr {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    _STATE["debug"] = debug or os.environ.get("UHR_DEBUG") == "1"


def run_app(app_: typer.Typer) -> None:
    """Run the app; expected failures become one line on stderr and an exit code."""
    try:
        app_(standalone_mode=False)
    except UhrError as exc:
        _report(exc, exc.exit_code)
    except KeyboardInterrupt:
        console_err.print("[red]error:[/red] interrupted; run again with --resume to continue", highlight=False)
        sys.exit(130)
    except (typer.Abort,):
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except Exception as exc:  # click usage errors and everything unexpected
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):  # click/typer usage errors
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, OSError) and exc.errno == 28:
            _report(exc, 74, "disk full: ")
        _report(exc, 1, f"{type(exc).__name__}: ")


def _report(exc: BaseException, code: int, prefix: str = "") -> None:
    if _STATE["debug"]:
        traceback.print_exception(exc)
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    console_err.print(f"[red]error:[/red] {prefix}{msg}", highlight=False, soft_wrap=True)
    sys.exit(code)


def parse_int_list(text: Optional[str], what: str) -> Optional[list[int]]:
    if text is None or text == "":
        return None
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise UsageError(f"{what} must be comma-separated integers, got {text!r}") from None


def parse_str_list(text: Optional[str]) -> Optional[list[str]]:
    if text is None or text == "":
        return None
    return [t.strip() for t in text.split(",") if t.strip()]
