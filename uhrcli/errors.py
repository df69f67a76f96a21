"""User-facing errors: the CLI prints these as one line and exits non-zero."""
from __future__ import annotations


class UhrError(Exception):
    """An expected failure caused by input, configuration or environment.

    exit_code follows sysexits loosely: 2 usage, 65 bad data, 66 missing input,
    73 cannot create output, 74 I/O error.
    """

    exit_code = 1


class UsageError(UhrError):
    exit_code = 2


class InputError(UhrError):
    """The input exists but cannot be read as what it claims to be."""

    exit_code = 65


class MissingInputError(UhrError):
    exit_code = 66


class OutputError(UhrError):
    """The output cannot be created (exists, unwritable folder, disk full)."""

    exit_code = 73


class CheckpointError(UhrError):
    exit_code = 65


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's first line (or its type's name), for one-line messages."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


class Interrupted(UhrError):
    """Ctrl-C: what was done is kept; the message says how to continue."""

    exit_code = 130


class MissingDependencyError(UhrError):
    """An optional package a command needs is not installed (EX_UNAVAILABLE); the message names the extra."""

    exit_code = 69


class ClusterError(UhrError):
    """A Dask cluster cannot do the run: the scheduler is unreachable, a worker lacks the weights or cannot see
    the scratch folder (EX_UNAVAILABLE)."""

    exit_code = 69


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display), or a one-line error naming the `plot` extra."""
    try:
        import matplotlib
    except ImportError:
        raise MissingDependencyError("plots need matplotlib: pip install 'uhrcli[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
