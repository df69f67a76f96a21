"""`uhr info FILE`: what a raster holds and what segmenting it would cost."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .common import app, console


def _mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MB"


@app.command("info")
def info_cmd(
    path: Path = typer.Argument(..., help="A raster file or zarr store.", readable=False),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model for the memory estimate."),
    tile: Optional[int] = typer.Option(None, "--tile", help="Tile size for the memory estimate (default: segment's)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Size, bands, dtype, tiling, compression, georeferencing, overviews and the memory `uhr segment` needs."""
    from ..inspect import describe

    d = describe(path, model=model, tile=tile)
    if as_json:
        console.print_json(json.dumps(d, default=str))
        return
    t = Table(show_header=False, show_edge=False, box=None, padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    rows = [
        ("file", d["path"]), ("driver", d["driver"]), ("size", f"{d['width']} x {d['height']} px ({d['width'] * d['height'] / 1e6:,.1f} MP)"),
        ("bands", f"{d['bands']} ({', '.join(d['band_names']) or 'unnamed'}); used: {d['bands_used']}"),
        ("dtype", d["dtype"]), ("blocks", "x".join(map(str, d["block_shape"])) if d["block_shape"] else "-"),
        ("compression", d["compression"] or "none"), ("crs", d["crs"] or "none"),
        ("transform", ", ".join(f"{v:g}" for v in d["transform"]) if d["transform"] else "none"),
        ("nodata", "none" if d["nodata"] is None else f"{d['nodata']:g}"), ("mask", d["mask"]),
        ("overviews", ", ".join(f"1/{f}" for f in d["overviews"]) or "none"),
        ("on disk", _mb(d["size_on_disk"])),
    ]
    for extra in ("bigtiff", "ome", "axes", "pages"):
        if extra in d:
            rows.append((extra, str(d[extra])))
    for k, v in rows:
        t.add_row(k, str(v))
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
