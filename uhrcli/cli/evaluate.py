"""`uhr eval`: score predictions against ground truth (segment), or a model on a dataset (run).

`eval_app` is a Typer sub-app so other evaluations (`uhr eval saliency`) can
register on it: `from uhrcli.cli.evaluate import eval_app`.
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from typer.core import TyperGroup

from .common import app, cluster_client, console, console_err


class _RunByDefault(TyperGroup):
    """`uhr eval --model M --weights W --data D` means `uhr eval run ...`: options first pick `run`."""

    def parse_args(self, ctx, args):  # type: ignore[no-untyped-def]
        if args and args[0].startswith("-") and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)

    def format_help(self, ctx, formatter):  # type: ignore[no-untyped-def]
        """`uhr eval --help` also shows the options of `uhr eval --weights W --data D` (that is `run`'s)."""
        super().format_help(ctx, formatter)
        run = self.get_command(ctx, "run")
        if run is not None:
            import click

            console.print("\n[bold]uhr eval --weights W --data D[/bold] (the same as [bold]uhr eval run[/bold]): "
                          "these options", highlight=False)
            run.format_help(click.Context(run, info_name="run", parent=ctx), formatter)


eval_app = typer.Typer(cls=_RunByDefault, no_args_is_help=True,
                       help="Score segmentation (and saliency) outputs against ground truth; "
                            "`uhr eval --weights W --data D` runs a model on a dataset and scores it "
                            "(its options are listed below).")
app.add_typer(eval_app, name="eval")


def _fmt(v: float) -> str:
    return "-" if v is None or math.isnan(v) else f"{100 * v:.2f}"


def print_report(report, title: str) -> None:
    """A per-class table, the means, the confusion matrix and what was left unmatched."""
    m = report.metrics
    t = Table(title=title, show_edge=False, header_style="bold")
    for col in ("class", "IoU %", "F1 %", "precision %", "recall %", "GT pixels"):
        t.add_column(col, justify="left" if col == "class" else "right")
    gt_px = m.confusion.sum(1)
    for i, name in enumerate(m.class_names):
        mark = " (not in mean)" if i in m.mean_excludes else ""
        t.add_row(name + mark, _fmt(m.iou[i]), _fmt(m.f1[i]), _fmt(m.precision[i]), _fmt(m.recall[i]),
                  f"{int(gt_px[i]):,}")
    console.print(t)
    console.print(f"mIoU {_fmt(m.miou)}  mF1 {_fmt(m.mf1)}  pixel accuracy {_fmt(m.pixel_accuracy)}  "
                  f"unlabelled predictions {_fmt(m.unlabelled_fraction)} % of scored pixels", highlight=False)
    cm = Table(title="confusion (rows: ground truth, columns: prediction)", show_edge=False, header_style="bold")
    cm.add_column("")
    for name in list(m.class_names) + ["unlabelled"]:
        cm.add_column(name[:12], justify="right")
    if m.num_classes <= 20:
        for i, name in enumerate(m.class_names):
            cm.add_row(name[:12], *[f"{int(v):,}" for v in m.confusion[i]])
        console.print(cm)
    for n in report.notes:
        console_err.print(f"[yellow]note:[/yellow] {n}", highlight=False)
    for what, items in (("prediction(s) without ground truth", report.unmatched_pred),
                        ("ground truth(s) without prediction", report.unmatched_gt)):
        if items:
            names = ", ".join(p.name for p in items[:8]) + (", ..." if len(items) > 8 else "")
            console_err.print(f"[yellow]warning:[/yellow] {len(items)} {what} not scored: {names}", highlight=False)


def _names(classes: Optional[str]) -> Optional[list[str]]:
    from ..train.config import parse_classes

    return parse_classes(classes)


def _excludes(text: Optional[str]) -> list[int]:
    from .common import parse_int_list

    return parse_int_list(text, "--mean-exclude") or []


def _stored_names(pred: Path, gt: Path) -> Optional[list[str]]:
    """The class names the first prediction (else the first label) carries, as `uhr segment` writes them."""
    from ..evaluate.files import list_rasters, stored_class_names

    for where in (pred, gt):
        try:
            files = list_rasters(Path(where))
        except Exception:  # noqa: BLE001 - evaluate_paths reports a bad path in its own words
            continue
        names = stored_class_names(files[0]) if files else None
        if names:
            return names
    return None


@eval_app.command("segment")
def eval_segment(
    pred: Path = typer.Option(..., "--pred", "-p", help="Predicted class map, or a folder of them (matched by stem).", readable=False),
    gt: Path = typer.Option(..., "--gt", "-g", help="Ground-truth mask, or a folder of them.", readable=False),
    classes: Optional[str] = typer.Option(None, "--classes", "-c", help="Number of classes or names.txt (default: the names the prediction or the label carries, else 2: background, foreground)."),
    ignore_index: Optional[int] = typer.Option(None, "--ignore-index", help="GT value left out (255 always is, except 0/255 two-class masks, where it means class 1 unless named here)."),
    mean_exclude: Optional[str] = typer.Option(None, "--mean-exclude", help="Class ids left out of the means, e.g. 0 for DeepGlobe 'unknown'."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write every number to this JSON file."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No table (use with --json)."),
) -> None:
    """Per-class IoU/F1, mIoU, pixel accuracy and the confusion matrix, streamed over 1024-row blocks.

    Predicted values outside the classes (nodata 255) where the ground truth is
    valid are counted in an 'unlabelled' column: misses of the true class.
    """
    from ..evaluate import evaluate_paths

    names = _names(classes) or _stored_names(pred, gt) or ["background", "foreground"]
    report = evaluate_paths(pred, gt, len(names), ignore_index=ignore_index, class_names=names,
                            mean_excludes=_excludes(mean_exclude))
    if json_out is not None:
        json_out.write_text(json.dumps(report.to_dict(), indent=2))
    if not quiet:
        print_report(report, f"{len(report.files)} file pair(s)")


@eval_app.command("run")
def eval_run(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Registry model (default: the checkpoint's)."),
    weights: str = typer.Option(..., "--weights", "-w", help="Checkpoint (e.g. RUN_DIR/best.safetensors)."),
    data: Path = typer.Option(..., "--data", "-d", help="Dataset folder in any `uhr train` layout.", readable=False),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Keep the predictions in this folder (default: a temporary one)."),
    layout: str = typer.Option("auto", "--layout", help="auto, pairs, deepglobe, inria, saliency or flat."),
    ignore_index: Optional[int] = typer.Option(None, "--ignore-index", help="GT value left out."),
    mean_exclude: Optional[str] = typer.Option(None, "--mean-exclude", help="Class ids left out of the means."),
    tile: Optional[int] = typer.Option(None, "--tile", help="Inference tile size (default: segment's; the scores do not depend on it)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write every number to this JSON file."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Segment on this Dask cluster "
                                            "(tcp://HOST:8786; -o on storage every worker sees)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Segment on N Dask worker processes "
                                          "started on this machine."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No table."),
) -> None:
    """Segment every image of a dataset with a model, then score all of it against its masks in one go."""
    from ..errors import InputError, UsageError
    from ..evaluate import evaluate_pairs
    from ..models import build_model
    from ..segment import segment
    from ..train.datasets import build_spec

    net = build_model(model, weights)
    names = list(net.info.class_names)
    spec = build_spec(data, layout=layout, class_names=names if layout != "deepglobe" else None,
                      ignore_index=ignore_index, in_channels=net.info.in_channels)
    if spec.task != "segment":
        raise UsageError("this is a saliency dataset; use `uhr eval saliency`")
    excludes = _excludes(mean_exclude) if mean_exclude is not None else ([0] if spec.layout == "deepglobe" else [])
    with tempfile.TemporaryDirectory(prefix="uhr-eval-") as tmp, cluster_client(scheduler, workers, quiet) as client:
        out = Path(output) if output is not None else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        if len(spec.samples) == 1:  # one input: segment() writes a file, not into a folder
            from ..io.inputs import stem_of

            target = out / (stem_of(spec.samples[0].image) + ".tif")
            results = segment(str(spec.samples[0].image), target, model=model, weights=weights, device=device,
                              tile=tile, overwrite=True, client=client)
        else:
            results = segment([str(s.image) for s in spec.samples], out, model=model, weights=weights,
                              device=device, tile=tile, overwrite=True, client=client)
            if results.failed:  # a score needs every image: the first failure ends the evaluation
                more = f" (and {len(results.failed) - 1} more)" if len(results.failed) > 1 else ""
                raise InputError(results.failed[0][1] + more)
        pairs = [(r.output, s.mask) for r, s in zip(results, spec.samples)]
        report = evaluate_pairs(pairs, len(names), class_names=names, decoder=spec.decoder, mean_excludes=excludes)
        report.notes = list(spec.notes) + report.notes
        if json_out is not None:
            json_out.write_text(json.dumps(report.to_dict(), indent=2))
        if not quiet:
            print_report(report, f"{net.info.name} on {len(pairs)} image(s) of {data}")
