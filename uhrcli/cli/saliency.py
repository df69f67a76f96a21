"""`uhr saliency` and `uhr eval saliency`: parse, call the API, print."""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import typer
from rich.table import Table

from ..errors import OutputError
from .common import app, cluster_client, console, console_err
from .progress import emit_json, job_progress

from .evaluate import eval_app


@contextmanager
def image_progress(enabled: bool, as_json: bool = False) -> Iterator[Callable[[str, int, int], None]]:
    """run_saliency's progress callback ("start", "image", "end") as one phase, "images", of a JobProgress:
    a bar with images/s and the ETA, log lines, or JSON events."""
    with job_progress("saliency", enabled=enabled, as_json=as_json, unit="images", rate_unit="img/s",
                      scale=1.0) as job:
        def cb(event: str, done: int, total: int) -> None:
            if event == "start":
                job("start", 0, total)
                job("phase:images", 0, total)
            elif event == "image":
                job("advance", done, 0)
            elif event == "end":
                p = job.current
                if p is not None and p.done >= p.total:
                    job("done", 0, 0)
                job("end", 0, 0)

        yield cb


@app.command("saliency")
def saliency_cmd(
    inputs: List[Path] = typer.Argument(..., help="Image files and/or folders (JPEG, PNG 8/16-bit, TIFF, WebP).", readable=False),
    outdir: Path = typer.Option(..., "-o", "--outdir", help="Output folder; names mirror the input tree."),
    output: List[str] = typer.Option(["map"], "--output", help="map, mask, rgba, overlay (repeat or comma-separate)."),
    model: str = typer.Option("pgnet", "--model", "-m", help="Registry model."),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help="Checkpoint file, or 'random' for an untrained dry run."),
    size: Optional[int] = typer.Option(None, "--size", help="High-resolution input size S (multiple of 32; default: the model's, 1024 for PGNet)."),
    threshold: float = typer.Option(0.5, "--threshold", help="Probability for --output mask."),
    bit_depth: int = typer.Option(8, "--bit-depth", help="8 or 16 bits for the map."),
    batch_size: int = typer.Option(1, "--batch-size", "-b", min=1, help="Images per forward pass."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile (TorchInductor) the network: tens of "
                                  "seconds to start, for long folders."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="fp16 autocast (CUDA/MPS only; default on for CUDA)."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Descend into subfolders of folder inputs."),
    pattern: Optional[str] = typer.Option(None, "--pattern", help="Only files matching this glob in folders, e.g. '*.jpg'."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Skip images whose outputs all exist (resume a run)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Run on this Dask cluster (tcp://HOST:8786), "
                                            "a few photos per task (needs the cluster extra)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Start N Dask worker processes on this "
                                          "machine and run on them."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
    as_json: bool = typer.Option(False, "--json", help="Progress and results as JSON lines on stdout (phase events, "
                                 "one result per image, a summary); human text goes to stderr."),
) -> None:
    """Salient-object maps (PGNet) for photos and gigapixel images.

    Existing outputs stop the run before any work unless --skip-existing or
    --overwrite is given. Unreadable images are reported and skipped; the exit
    status is 1 when any image failed.
    """
    from ..saliency import run_saliency

    if weights == "random" and not quiet:
        console_err.print("[yellow]warning:[/yellow] --weights random: an untrained, seeded model; "
                          "the maps are meaningless (use it for dry runs and speed tests)", highlight=False)

    def on_error(path: Path, msg: str) -> None:
        console_err.print(f"[red]error:[/red] {msg}", highlight=False, soft_wrap=True)

    with cluster_client(scheduler, workers, quiet or as_json) as client, image_progress(not quiet, as_json) as cb:
        report = run_saliency([str(p) for p in inputs], outdir, model=model, weights=weights, size=size,
                              outputs=output, threshold=threshold, bit_depth=bit_depth, device=device, amp=amp,
                              batch_size=batch_size, recursive=recursive, pattern=pattern, compile=compile_,
                              skip_existing=skip_existing, overwrite=overwrite, progress=cb, on_error=on_error,
                              client=client)
    for note in report.notes:
        console_err.print(f"[yellow]note:[/yellow] {note}", highlight=False, soft_wrap=True)
    if as_json:
        _emit_report(report)
    elif not quiet:
        streamed = sum(r.streamed for r in report.results)
        extra = f", {streamed} streamed" if streamed else ""
        console.print(f"{len(report.results)} image(s) written{extra}, {len(report.failed)} failed, "
                      f"{len(report.skipped)} skipped in {report.seconds:.1f} s ({report.images_per_s:.2f} images/s), "
                      f"peak RSS {report.peak_rss_mb:.0f} MB ({report.model} at {report.size}px on {report.device})",
                      highlight=False, markup=False)
    if not report.ok:
        # not typer.Exit: run_app runs click with standalone_mode=False, which would swallow its code
        raise SystemExit(1)


@eval_app.command("saliency")
def eval_saliency_cmd(
    pred: Path = typer.Option(..., "--pred", help="Folder of predicted saliency maps (PNG/TIFF/JPEG, 8 or 16-bit).", readable=False),
    gt: Path = typer.Option(..., "--gt", help="Folder of ground-truth masks; files are matched by relative path and stem.", readable=False),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON to this file."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No table (the JSON is still written)."),
) -> None:
    """MAE, S-measure, F-measures, E-measures, weighted F and boundary IoU (pysodmetrics)."""
    from ..metrics.saliency import METRIC_LABELS, evaluate_saliency_dirs

    res = evaluate_saliency_dirs(pred, gt)
    for note in res["notes"]:
        console_err.print(f"[yellow]note:[/yellow] {note}", highlight=False, soft_wrap=True)
    if json_out is not None:
        _write_json(json_out, res)
    if quiet:
        return
    table = Table(title=f"{res['n_images']} image(s): {pred} vs {gt}", show_edge=False, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, label in METRIC_LABELS.items():
        table.add_row(label, f"{res['metrics'][key]:.4f}")
    console.print(table)


def _emit_report(report) -> None:
    """`uhr saliency --json`: one result per image written, one per failure, then the run's summary."""
    for r in report.results:
        emit_json({"event": "result", "input": str(r.input), "outputs": [str(o) for o in r.outputs],
                   "width": r.width, "height": r.height, "seconds": round(r.seconds, 3), "streamed": r.streamed,
                   "notes": list(r.notes)})
    for path, msg in report.failed:
        emit_json({"event": "failed", "input": str(path), "error": msg})
    emit_json({"event": "summary", "written": len(report.results), "failed": len(report.failed),
               "skipped": len(report.skipped), "seconds": round(report.seconds, 3),
               "images_per_s": round(report.images_per_s, 3), "peak_rss_mb": round(report.peak_rss_mb, 1),
               "model": report.model, "size": report.size, "device": report.device, "notes": list(report.notes)})


def _write_json(path: Path, res: dict) -> None:
    """Atomic JSON write (temp name, then rename)."""
    from ..io import writers as W

    if path.exists() and path.is_dir():
        raise OutputError(f"--json {path}: is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = W.temp_path(path)
        tmp.write_text(json.dumps(res, indent=2) + "\n")
        W.commit(tmp, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


__all__ = ["saliency_cmd", "eval_saliency_cmd", "eval_app", "image_progress"]
