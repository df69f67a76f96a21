"""`uhr bench`: parse, call uhrcli.bench.run_benchmark, print the table and write the files."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from .common import app, console, console_err, parse_str_list


@app.command("bench")
def bench_cmd(
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    models: Optional[str] = typer.Option(None, "--models", "-m",
                                         help="Comma-separated registry models (default: isdnet-r18, deeplabv3-r18, "
                                              "deeplabv3-r18-down4 and pgnet, those registered)."),
    sizes: Optional[str] = typer.Option(None, "--sizes", "-s",
                                        help="Square input sides in pixels (default 1024,2448; --pipeline: 4096)."),
    batch_size: int = typer.Option(1, "--batch-size", "-b", help="Images per forward pass."),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="fp16 autocast (default: on for CUDA, as "
                                       "`uhr segment` runs; never on CPU)."),
    channels_last: bool = typer.Option(True, "--channels-last/--no-channels-last",
                                       help="Model and input in channels-last layout (as `uhr segment` runs them)."),
    fold_bn: bool = typer.Option(True, "--fold-bn/--no-fold-bn",
                                 help="Fold BatchNorm into the convs (as `uhr segment` does); off: the plain eval model."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the model (compile time reported apart)."),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="Untimed passes per case (default 2 on CPU, 10 on GPU)."),
    iters: Optional[int] = typer.Option(None, "--iters", help="Timed passes per case (default 5 on CPU, 50 on GPU)."),
    pipeline: bool = typer.Option(False, "--pipeline",
                                  help="Time the whole `uhr segment` path on cached synthetic GeoTIFFs instead."),
    tile: Optional[int] = typer.Option(None, "--tile", help="--pipeline: the engine's tile size (default: segment's)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="--pipeline: folder of the cached synthetic "
                                             "rasters and the runs' temporary outputs (default: $UHR_CACHE_DIR/bench, "
                                             "else ~/.cache/uhr/bench)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the records and machine facts as JSON."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Write one CSV row per model and size."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG: latency and memory against size, per model."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the table."),
    table_: Optional[str] = typer.Option(None, "--table", help="'isdnet': ISDNet's Tables 3/4 (its models at "
                                         "1024x2048 and 2448x2448, --sizes HxW to change) beside the paper's "
                                         "figures, with the ISD / baseline ratios; --models picks rows."),
) -> None:
    """Speed and memory per model and input size (FPS, latency, peak memory, GFLOPs), as in UHR papers."""
    from ..bench import (BenchConfig, model_table, pipeline_table, run_benchmark, summary_lines, write_csv,
                         write_json, write_plot)
    from ..errors import UsageError

    size_list = parse_str_list(sizes)
    if sizes is not None and not size_list:
        raise UsageError("--sizes is empty")
    if table_ is not None:
        _table(table_, parse_str_list(models), size_list, device, warmup, iters, json_out, csv_out, plot, quiet)
        return
    cfg = BenchConfig(models=parse_str_list(models), sizes=size_list, device=device, batch_size=batch_size, amp=amp,
                      channels_last=channels_last, fold_bn=fold_bn, compile=compile_, warmup=warmup, iters=iters, pipeline=pipeline,
                      tile=tile, cache_dir=cache_dir)
    progress = None if quiet else (lambda msg: console_err.print(f"[dim]{escape(msg)}[/dim]", highlight=False))
    report = run_benchmark(cfg, progress=progress)
    console.print(pipeline_table(report) if report.mode == "pipeline" else model_table(report))
    for line in summary_lines(report):
        console.print(line, highlight=False, soft_wrap=True)
    for path, writer in ((json_out, write_json), (csv_out, write_csv), (plot, write_plot)):
        if path is not None:
            writer(report, path)
            if not quiet:
                console_err.print(f"wrote {path}", highlight=False)


def _table(name: str, models, sizes, device: str, warmup, iters, json_out, csv_out, plot, quiet: bool) -> None:
    from ..bench import isdnet_table as it
    from ..errors import UsageError

    if name != "isdnet":
        raise UsageError(f"--table {name!r}: the only table is 'isdnet'")
    progress = None if quiet else (lambda msg: console_err.print(f"[dim]{escape(msg)}[/dim]", highlight=False))
    report = it.run_isdnet_table(models or None, sizes or None, device=device, warmup=warmup, iters=iters,
                                 progress=progress)
    console.print(it.table(report))
    for line in it.summary(report):
        console.print(line, highlight=False, soft_wrap=True)
    for path, writer in ((json_out, it.write_json), (csv_out, it.write_csv), (plot, it.write_plot)):
        if path is not None:
            writer(report, path)
            if not quiet:
                console_err.print(f"wrote {path}", highlight=False)
