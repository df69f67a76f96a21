"""`uhr vectorize`: parse, call uhrcli.vector.vectorize, print a summary."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import app, console, console_err, parse_int_list
from .progress import job_progress

CLASSES_HELP = ("Class ids to vectorise, e.g. 1,2 (default: every class except the nodata value, 255 in uhr's "
                "maps, and a class named 'background').")


@app.command("vectorize")
def vectorize_cmd(
    class_map: Path = typer.Argument(..., help="Class map: uhr segment's GeoTIFF/COG/zarr/PNG, or any single-band "
                                     "integer raster.", readable=False),
    output: Path = typer.Option(..., "-o", "--output", help="Polygons: .gpkg, .fgb, .geojson/.json, or .parquet "
                                "(GeoParquet, with the 'parquet' extra). The format follows the suffix."),
    simplify: float = typer.Option(0.0, "--simplify", help="Simplify each polygon by this distance in map units "
                                   "(metres for a metric CRS), keeping its topology; 0 keeps the pixel edges."),
    min_area: float = typer.Option(0.0, "--min-area", help="Drop polygons smaller than this, in map units squared "
                                   "(m² for a metric CRS)."),
    classes: Optional[str] = typer.Option(None, "--classes", help=CLASSES_HELP),
    probs: Optional[Path] = typer.Option(None, "--probs", help="Probability raster (uhr segment --probs) to add each "
                                         "polygon's mean probability of its class (mean_prob).", readable=False),
    connectivity: int = typer.Option(4, "--connectivity", help="4: pixels join by their sides, as GDAL's polygonize; "
                                     "8: also by their corners."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
) -> None:
    """Polygons per class from a class map, in its CRS, streamed in row bands in bounded memory.

    Attributes: class_id, class_name, area (map units squared: m² for a metric CRS), pixels; mean_prob with --probs.
    """
    from ..vector import VectorOptions, vectorize

    opts = VectorOptions(simplify=simplify, min_area=min_area, classes=parse_int_list(classes, "--classes"),
                         connectivity=connectivity, probs=probs, overwrite=overwrite)
    with job_progress("vectorize", enabled=not quiet) as cb:
        r = vectorize(class_map, output, options=opts, progress=cb)
    if quiet:
        return
    for note in r.notes:
        console_err.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    per = ", ".join(f"{n}: {c}" for n, c in sorted(r.per_class.items())) or "none"
    console.print(f"{r.output}: {r.polygons} polygons ({per}), area in {r.area_units}; {r.width}x{r.height} px in "
                  f"{r.seconds:.1f} s ({r.mpix_per_s:.1f} MP/s), peak RSS {r.peak_rss_mb:.0f} MB", highlight=False)
