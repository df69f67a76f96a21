"""`uhr segment`: parse, call uhrcli.segment.segment, print a summary."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ..units import parse_size
from .common import app, cluster_client, console, console_err, parse_batch_size, parse_int_list
from .progress import emit_json, job_progress


@app.command("segment")
def segment_cmd(
    inputs: List[Path] = typer.Argument(..., help="Raster file(s) or folder(s): GeoTIFF/TIFF/JP2/VRT, zarr, PNG/JPEG.", readable=False),
    output: Path = typer.Option(..., "-o", "--output", help="Output file, or a directory for several inputs."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Registry model (default: the checkpoint's, or isdnet-r18 with --weights random)."),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help="Checkpoint file, or 'random' for an untrained dry run."),
    tile: Optional[int] = typer.Option(None, "--tile", help="Tile size in pixels (default by model and device: 1024, "
                                       "2048 for ISDNet on CPU, larger on CUDA)."),
    halo: Optional[int] = typer.Option(None, "--halo", help="Context margin per side (default: what makes the output "
                                       "equal the whole-image forward)."),
    border: str = typer.Option("clip", "--border", help="clip: the network pads at the image border, as on the whole "
                               "image; mirror: mirror pixels past it (local models)."),
    cache_ram: Optional[str] = typer.Option(None, "--cache-ram", help="Host RAM for features kept between passes "
                                            "(two-scale models), e.g. 2G (default 256M)."),
    cache_disk: Optional[str] = typer.Option(None, "--cache-disk", help="Disk for them beyond that, e.g. 100G "
                                             "(default: 80% of the free space)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Folder of that disk cache (default: beside the output)."),
    merge: str = typer.Option("crop", "--merge", help="crop (keep tile cores) or blend (cosine seams)."),
    batch_size: str = typer.Option("auto", "--batch-size", "-b", help="Tiles per forward pass, or auto: 1 on CPU, "
                                   "what half the free memory holds on CUDA."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile (TorchInductor) what the model runs per "
                                  "tile: tens of seconds to start, for long runs."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="fp16 autocast (CUDA/MPS only; default on for CUDA)."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="tif, cog, zarr or png (default from the output suffix)."),
    probs: bool = typer.Option(False, "--probs", help="Also write per-class probabilities (uint8, x/255)."),
    preview: bool = typer.Option(False, "--preview", help="Also write <name>_preview.png: the class map tinted over the image."),
    vector: Optional[Path] = typer.Option(None, "--vector", help="Also write the class map's polygons (.gpkg, .fgb, "
                                          ".geojson, .parquet), as `uhr vectorize` does; with --probs, mean_prob."),
    refine: Optional[str] = typer.Option(None, "--refine", help="Refine the probabilities with the image as guide "
                                         "before the class map: guided (guided filter, exact in tiles) or crf "
                                         "(DenseCRF, the 'crf' extra); defaults as `uhr refine`'s. GeoTIFF/COG only."),
    bands: Optional[str] = typer.Option(None, "--bands", help="1-based bands to use, e.g. 1,2,3 or 4,3,2."),
    stretch: str = typer.Option("auto", "--stretch", help="Pixel scaling to 0..255: auto (the checkpoint's recorded "
                                "scaling, else 2-98 percentiles for integers wider than 8 bits), range (the type's "
                                "full range), none, minmax or percentile[:LOW,HIGH]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    resume: bool = typer.Option(False, "--resume", help="Finish interrupted runs from their scratch stores (in a "
                                "folder: every one, leaving finished outputs as they are)."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Skip inputs whose outputs all exist (resume a "
                                       "folder run)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Run on this Dask cluster (tcp://HOST:8786): "
                                            "a task per raster, a large raster split into row bands across the "
                                            "workers (needs the cluster extra)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Start N Dask worker processes on this "
                                          "machine and run on them (cores shared out; one GPU each where there are "
                                          "GPUs)."),
    scratch: Optional[str] = typer.Option(None, "--scratch", help="Folder of the scratch stores (default: beside "
                                          "each output); on a cluster, storage every worker sees."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
    as_json: bool = typer.Option(False, "--json", help="Progress and results as JSON lines on stdout (one object a "
                                 "line: phase events, then one result per output); human text goes to stderr."),
) -> None:
    """Segment rasters of any size into georeferenced class maps, tile by tile in bounded memory.

    In a folder run a raster that fails is reported and the others go on; the exit status is 1 when
    any failed. Existing outputs stop a folder run before any work unless --skip-existing, --resume
    or --overwrite is given.
    """
    from ..segment import SegmentOptions, segment
    if weights == "random" and not quiet:
        console_err.print("[yellow]warning:[/yellow] --weights random: an untrained, seeded model; "
                          "the map is meaningless (use it for dry runs and speed tests)", highlight=False)
    opts = SegmentOptions(tile=tile, halo=halo, merge=merge, batch_size=parse_batch_size(batch_size), fmt=fmt,
                          probs=probs, compile=compile_,
                          bands=parse_int_list(bands, "--bands"), stretch=stretch, overwrite=overwrite,
                          resume=resume, skip_existing=skip_existing, amp=amp, preview=preview, border=border,
                          cache_ram=parse_size(cache_ram, "--cache-ram"), cache_disk=parse_size(cache_disk, "--cache-disk"),
                          cache_dir=cache_dir, vector=vector, refine=refine, scratch=scratch)

    def on_error(path: Path, msg: str) -> None:
        if as_json:
            emit_json({"event": "failed", "input": str(path), "error": msg})
        console_err.print(f"[red]error:[/red] {msg}", highlight=False, soft_wrap=True)

    def on_note(msg: str) -> None:
        console_err.print(f"[yellow]note:[/yellow] {msg}", highlight=False, soft_wrap=True)

    opts.on_note = on_note

    with cluster_client(scheduler, workers, quiet or as_json) as client, \
            job_progress("", enabled=not quiet, as_json=as_json) as job:
        results = segment([str(p) for p in inputs] if len(inputs) > 1 else str(inputs[0]), output, model=model,
                          weights=weights, device=device, options=opts, progress=job, on_error=on_error,
                          client=client)
    if as_json:
        for r in results:
            emit_json(result_json(r, job.history.get(str(r.input), {})))
    elif not quiet:
        _summary(results)
    if results.failed:
        console_err.print(f"[red]error:[/red] {len(results.failed)} of "
                          f"{len(results) + len(results.failed) + len(results.skipped)} raster(s) failed: "
                          + ", ".join(p.name for p, _ in results.failed), highlight=False, soft_wrap=True)
        # not typer.Exit: run_app runs click with standalone_mode=False, which would swallow its code
        raise SystemExit(1)


def _summary(results) -> None:
    if results.skipped:
        console.print(f"{len(results.skipped)} raster(s) skipped: their outputs exist", highlight=False)
    if not results:
        return
    table = Table(title=None, show_edge=False, header_style="bold")
    for col in ("input", "output", "size", "seconds", "MP/s", "peak RSS"):
        table.add_column(col, justify="right" if col in ("seconds", "MP/s", "peak RSS") else "left")
    for r in results:
        note = f" ({', '.join(r.notes)})" if r.notes else (" (resumed)" if r.resumed else "")
        table.add_row(r.input.name, str(r.output) + note, f"{r.width}x{r.height}", f"{r.seconds:.1f}",
                      f"{r.mpix_per_s:.2f}", f"{r.peak_rss_mb:.0f} MB")
    console.print(table)
    total_px = sum(r.width * r.height for r in results)
    total_s = sum(r.seconds for r in results)
    console.print(f"{len(results)} raster(s), {total_px / 1e6:.1f} MP in {total_s:.1f} s "
                  f"({total_px / 1e6 / max(total_s, 1e-9):.2f} MP/s), peak RSS {max(r.peak_rss_mb for r in results):.0f} MB",
                  highlight=False)


def result_json(r, phases: dict[str, float]) -> dict:
    """The summary object of one output (`uhr segment --json`)."""
    return {"event": "result", "input": str(r.input), "output": str(r.output),
            "probs_output": None if r.probs_output is None else str(r.probs_output), "width": r.width,
            "height": r.height, "seconds": round(r.seconds, 3), "mpix_per_s": round(r.mpix_per_s, 3),
            "peak_rss_mb": round(r.peak_rss_mb, 1), "resumed": r.resumed, "notes": list(r.notes), "phases": phases}
