"""Shared CLI plumbing: the Typer app, error reporting, option parsing helpers."""
from __future__ import annotations

import functools
import os
import sys
import traceback
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import typer
from rich.console import Console

from .. import __version__
from ..errors import Interrupted, UhrError, UsageError, first_line


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


def quiet_libraries(debug: bool) -> None:
    """GDAL's messages reach Python's logging through rasterio; without a handler they would print bare lines
    (a full disk prints dozens). uhr reports failures itself, in one line; --debug shows them all."""
    import logging

    for name in ("rasterio", "fiona", "pyogrio", "tifffile"):
        log = logging.getLogger(name)
        if debug:
            log.setLevel(logging.DEBUG)
            if not log.handlers:
                log.addHandler(logging.StreamHandler())
        else:
            log.addHandler(logging.NullHandler())
            log.propagate = False


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    _STATE["debug"] = debug or os.environ.get("UHR_DEBUG") == "1"
    if _STATE["debug"]:
        os.environ["UHR_DEBUG"] = "1"  # GDAL's messages too (uhrcli.io.readers.gdal_env)
    quiet_libraries(_STATE["debug"])


def interruptible(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Ctrl-C inside a command becomes Interrupted (exit 130) with the API's own message (what was done,
    how to continue): the CLI library would otherwise swallow it into a silent exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt as exc:
            raise Interrupted(str(exc) or "interrupted") from None

    return wrapper


def wrap_commands(app_: typer.Typer) -> None:
    """Make every registered command (sub-apps included) interruptible, its help texts literal."""
    for cmd in app_.registered_commands:
        if cmd.callback is not None and not getattr(cmd.callback, "__wrapped__", None):
            cmd.callback = interruptible(cmd.callback)
            literal_help(cmd.callback)
    for group in app_.registered_groups:
        if group.typer_instance is not None:
            wrap_commands(group.typer_instance)


def run_app(app_: typer.Typer) -> None:
    """Run the app; expected failures become one line on stderr and an exit code."""
    try:
        rv = app_(standalone_mode=False, prog_name="uhr")
    except UhrError as exc:
        _report(exc, exc.exit_code)
    except KeyboardInterrupt as exc:
        _report(Interrupted(str(exc) or "interrupted"), 130)
    except (typer.Abort,):
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except Exception as exc:  # click usage errors and everything unexpected
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # click/typer usage errors: one line
            ctx = getattr(exc, "ctx", None)
            where = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
            _report(UsageError(exc.format_message().replace("\n", " ") + where), exc.exit_code)
        if isinstance(exc, OSError) and exc.errno == 28:
            _report(exc, 74, "disk full: ")
        _report(exc, 1, f"{type(exc).__name__}: ")
    if isinstance(rv, int) and rv:  # an exit code the CLI library returned instead of raising
        sys.exit(rv)


def _report(exc: BaseException, code: int, prefix: str = "") -> None:
    if _STATE["debug"]:
        traceback.print_exception(exc)
    msg = first_line(exc, 10_000)
    console_err.print(f"[red]error:[/red] {prefix}{msg}", highlight=False, soft_wrap=True)
    sys.exit(code)


def parse_int_list(text: Optional[str], what: str) -> Optional[list[int]]:
    if text is None or text == "":
        return None
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise UsageError(f"{what} must be comma-separated integers, got {text!r}") from None


def parse_batch_size(text: str) -> int | str:
    """'auto' or a whole number >= 1 (--batch-size)."""
    t = text.strip().lower()
    if t == "auto":
        return t
    try:
        n = int(t)
    except ValueError:
        n = 0
    if n < 1:
        raise UsageError(f"--batch-size must be a whole number >= 1 or auto, got {text!r}")
    return n


def parse_str_list(text: Optional[str]) -> Optional[list[str]]:
    if text is None or text == "":
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def literal_help(fn: Callable[..., Any]) -> None:
    """Help texts are shown through rich markup, which would eat "[train]" or "percentile[:LOW,HIGH]":
    escape the brackets of the docstring and of every option's and argument's help."""
    import inspect

    from rich.markup import escape

    if fn.__doc__:
        fn.__doc__ = escape(fn.__doc__)
    for param in inspect.signature(fn).parameters.values():
        info = param.default
        if getattr(info, "help", None) and hasattr(info, "param_decls"):
            info.help = escape(info.help)


@contextmanager
def cluster_client(scheduler: Optional[str], workers: Optional[int], quiet: bool = False) -> Iterator[Any]:
    """A distributed.Client for --scheduler/--workers (None without them), closed after the command; Dask is
    imported only here."""
    if not scheduler and not workers:
        yield None
        return
    from ..cluster import connect

    with connect(scheduler, workers) as cluster:
        link = cluster.dashboard_link
        if not quiet and link:
            console_err.print(f"Dask dashboard: {link}", highlight=False, soft_wrap=True, markup=False)
        yield cluster.client
