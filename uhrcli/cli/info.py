"""`uhr info FILE...`: what rasters hold and what segmenting them would cost."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .common import app, console, console_err


def _mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MB"


def number(v: float, decimals: int) -> str:
    """A coordinate in full (never 1e+06 notation): at most `decimals` places, trailing zeros dropped."""
    s = f"{float(v):.{decimals}f}".rstrip("0")
    s = s + "0" if s.endswith(".") else s
    return "0.0" if s in ("-0.0", "0.0") else s


def transform_text(t: list[float] | None, geographic: bool) -> str:
    """Degrees to 1e-9 (about 0.1 mm), metres and other units to 1e-4."""
    if not t:
        return "none"
    return ", ".join(number(v, 9 if geographic else 4) for v in t)


def expand(paths: list[Path]) -> list[Path]:
    """Files as given; folders: the rasters in them (not their subfolders), in name order. A folder named like
    a raster (x.tif/) is taken as a file, and reported as a directory where a raster was expected."""
    from ..io.inputs import RASTER_SUFFIXES, expand_inputs, is_zarr_store

    out: list[Path] = []
    for p in paths:
        if p.is_dir() and not is_zarr_store(p) and p.suffix.lower() not in RASTER_SUFFIXES:
            out.extend(src for src, _ in expand_inputs([p]))
        else:
            out.append(p)
    return out


@app.command("info")
def info_cmd(
    paths: List[Path] = typer.Argument(..., help="Raster files, zarr stores, or folders of them.", readable=False),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model for the memory estimate."),
    tile: Optional[int] = typer.Option(None, "--tile", help="Tile size for the memory estimate (default: segment's)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables (a list for several files)."),
) -> None:
    """Size, bands, dtype, tiling, compression, georeferencing, overviews and the memory `uhr segment` needs.

    Several files (or folders) are described one after another; a file that cannot be read is reported in one
    line and the others are still described (the exit status is then 1).
    """
    from ..errors import UhrError, first_line
    from ..inspect import describe

    files = expand(list(paths))
    if not files:
        from ..errors import InputError

        raise InputError(f"no rasters in {', '.join(map(str, paths))}")
    described: list[dict[str, Any]] = []
    failed = 0
    for i, path in enumerate(files):
        try:
            d = describe(path, model=model, tile=tile)
        except UhrError as exc:
            if len(files) == 1:
                raise
            failed += 1
            console_err.print(f"[red]error:[/red] {escape(first_line(exc))}", highlight=False, soft_wrap=True)
            continue
        described.append(d)
        if not as_json:
            if i:
                console.print()
            _print(d)
    if as_json:
        obj = described[0] if len(files) == 1 else described
        console.print_json(json.dumps(obj, default=str))
    if failed:
        raise SystemExit(1)


def _print(d: dict[str, Any]) -> None:
    t = Table(show_header=False, show_edge=False, box=None, padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    block = d["block_shape"]
    rows = [
        ("file", d["path"]), ("driver", d["driver"]), ("size", f"{d['width']} x {d['height']} px ({d['width'] * d['height'] / 1e6:,.1f} MP)"),
        ("bands", f"{d['bands']} ({', '.join(d['band_names']) or 'unnamed'}); used: {d['bands_used']}"),
        ("dtype", d["dtype"]), ("blocks", f"{block[1]} x {block[0]} px" if block else "-"),
        ("compression", d["compression"] or "none"), ("crs", d["crs"] or "none"),
        ("transform", transform_text(d["transform"], d.get("crs_geographic", False))),
        ("nodata", "none" if d["nodata"] is None else f"{d['nodata']:g}"), ("mask", d["mask"]),
        ("overviews", ", ".join(f"1/{f}" for f in d["overviews"]) or "none"),
        ("on disk", _mb(d["size_on_disk"])),
    ]
    for extra in ("bigtiff", "ome", "axes", "pages"):
        if extra in d:
            rows.append((extra, str(d[extra])))
    for k, v in rows:
        t.add_row(k, Text(str(v)))  # literal: a path may hold [brackets]
    console.print(t)
    sm = d["segment_memory"]
    m = Table(title=f"uhr segment memory ({sm['model']}, tile {sm['tile']}, halo {sm['halo']}, {sm['tiles']} tiles)",
              show_edge=False, header_style="bold")
    m.add_column("component")
    m.add_column("estimate", justify="right")
    for k, v in sm["parts"].items():
        m.add_row(k, _mb(v))
    m.add_row("[bold]total[/bold]", f"[bold]{_mb(sm['total'])}[/bold]")
    for k, v in sm.get("disk", {}).items():
        m.add_row(f"{k} (on disk, beside the output)", _mb(v))
    console.print(m)
