"""Files and folders named on a command line -> the inputs a command processes, with stable names.

One rule for every command: a folder contributes its files with a known suffix (or matching a
pattern), sorted, hidden ones skipped, named by their path below the folder; a file given
directly is named by its stem. Outputs are placed by those names, so a tree of inputs becomes the
same tree of outputs.
"""
from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import InputError, MissingInputError, UsageError
from .readers import IMAGE_SUFFIXES, TIFF_SUFFIXES

RASTER_SUFFIXES = frozenset(TIFF_SUFFIXES | IMAGE_SUFFIXES | {".jp2", ".vrt", ".img"})


def stem_of(path: Path) -> str:
    """The name without its suffix; `x.ome.tif` is `x`."""
    name = path.name
    if name.lower().endswith(".ome.tif"):
        return name[: -len(".ome.tif")]
    return path.stem


def is_zarr_store(p: Path) -> bool:
    return p.is_dir() and (p.suffix == ".zarr" or (p / "zarr.json").exists() or (p / ".zarray").exists()
                           or (p / ".zgroup").exists())


def _inside(p: Path, folder: Path) -> bool:
    try:
        p.resolve().relative_to(folder.resolve())
        return True
    except (ValueError, OSError):
        return False


def expand_inputs(inputs: Sequence[str | os.PathLike], suffixes: Iterable[str] = RASTER_SUFFIXES, *,
                  recursive: bool = False, pattern: str | None = None, exclude: Path | None = None,
                  stores: bool = True) -> list[tuple[Path, Path]]:
    """(input, its name: path below the folder given, without suffix) for files and folders.

    pattern: a glob on file names instead of the suffixes. exclude: files under this folder are
    never inputs (a run writing into a folder inside its input tree does not take its own outputs).
    stores: zarr stores (folders) count as inputs.
    """
    suffixes = {s.lower() for s in suffixes}
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        p = Path(item)
        if not p.exists():
            if p.is_symlink():
                raise MissingInputError(f"{p}: a broken symbolic link (or a link loop)")
            raise MissingInputError(f"input not found: {p}")
        if p.is_dir() and not (stores and is_zarr_store(p)):
            files = []
            for q in sorted(p.rglob("*") if recursive else p.iterdir()):
                rel = q.relative_to(p)
                if any(part.startswith(".") for part in rel.parts):
                    continue
                if stores and is_zarr_store(q):
                    pass
                elif not q.is_file():
                    continue
                elif pattern is not None:
                    if not fnmatch.fnmatch(q.name, pattern):
                        continue
                elif q.suffix.lower() not in suffixes and not q.name.lower().endswith(".ome.tif"):
                    continue
                if exclude is not None and _inside(q, exclude):
                    continue
                files.append((q, rel.with_name(stem_of(q))))
            if not files:
                what = f"matching {pattern!r}" if pattern else "with a raster or image suffix"
                hint = "" if recursive else " (use --recursive for subfolders)"
                raise InputError(f"{p}: folder holds no files {what}{hint}")
            found.extend(files)
        else:
            found.append((p, Path(stem_of(p))))
    if not found:
        raise UsageError("no input given")
    return found


__all__ = ["RASTER_SUFFIXES", "expand_inputs", "stem_of", "is_zarr_store"]
