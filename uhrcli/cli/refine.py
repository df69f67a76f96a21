"""`uhr refine`: parse, call uhrcli.refine.refine, print a summary."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import app, console, parse_int_list
from .progress import job_progress

METHOD_HELP = ("guided: the guided filter (He et al.; ISDNet's DGF baseline without learned layers), tiled exactly; "
               "crf: DenseCRF (Kraehenbuehl & Koltun), needs the 'crf' extra, tiled with a halo (an approximation).")


@app.command("refine")
def refine_cmd(
    image: Path = typer.Argument(..., help="The image the probabilities were computed from (the guide).", readable=False),
    probs: Path = typer.Argument(..., help="Probabilities as `uhr segment --probs` writes them (uint8 x/255, one "
                                 "band per class, the image's grid).", readable=False),
    output: Path = typer.Option(..., "-o", "--output", help="Refined class map (.tif; COG with --format cog)."),
    method: str = typer.Option("guided", "--method", help=METHOD_HELP),
    radius: int = typer.Option(4, "--radius", help="guided: window radius in pixels (a tile reads 2x this around it)."),
    eps: float = typer.Option(1e-3, "--eps", help="guided: regularisation on 0..1 values (larger: smoother)."),
    crf_iterations: int = typer.Option(5, "--crf-iterations", help="crf: mean-field iterations."),
    crf_sxy: float = typer.Option(80.0, "--crf-sxy", help="crf: spatial sigma of the bilateral kernel, pixels."),
    crf_srgb: float = typer.Option(13.0, "--crf-srgb", help="crf: colour sigma of the bilateral kernel, 0..255."),
    crf_compat: float = typer.Option(10.0, "--crf-compat", help="crf: weight of the bilateral kernel."),
    tile: int = typer.Option(512, "--tile", help="Tile size in pixels."),
    halo: Optional[int] = typer.Option(None, "--halo", help="Context per side (default: the guided filter's exact "
                                       "reach, 2x radius; crf: twice the bilateral kernel's spatial sigma)."),
    bands: Optional[str] = typer.Option(None, "--bands", help="1-based image bands for the guide: 1 or 3 (crf: 3)."),
    stretch: str = typer.Option("auto", "--stretch", help="Image scaling to 0..255, as in `uhr segment`."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="tif or cog (default from the suffix)."),
    write_probs: bool = typer.Option(False, "--probs", help="Also write the refined probabilities (<name>_probs.tif)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
) -> None:
    """Refine a segmentation's probabilities with the image as guide, tile by tile, into a georeferenced class map."""
    from ..refine import RefineOptions, refine
    from ..refine.crf import CrfParams

    opts = RefineOptions(method=method, radius=radius, eps=eps, crf=CrfParams(iterations=crf_iterations, bilateral_sxy=crf_sxy,
                                                                       bilateral_srgb=crf_srgb, bilateral_compat=crf_compat), tile=tile,
                         halo=halo, bands=parse_int_list(bands, "--bands"), stretch=stretch, fmt=fmt,
                         write_probs=write_probs, overwrite=overwrite)
    with job_progress("refine", enabled=not quiet) as cb:
        r = refine(image, probs, output, options=opts, progress=cb)
    if not quiet:
        extra = f" and {r.probs_output}" if r.probs_output else ""
        console.print(f"{r.output}{extra}: {r.method}, {r.width}x{r.height} px, {r.tiles} tile(s) in {r.seconds:.1f} s "
                      f"({r.mpix_per_s:.2f} MP/s), peak RSS {r.peak_rss_mb:.0f} MB", highlight=False)
