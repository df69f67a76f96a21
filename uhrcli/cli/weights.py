"""`uhr weights convert` (official ISDNet checkpoints -> uhr) and `uhr weights export` (ship a checkpoint)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import app, console

weights_app = typer.Typer(help="Checkpoint utilities.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")


@weights_app.command("convert")
def convert_cmd(
    src: Path = typer.Argument(..., help="Official ISDNet checkpoint (.pth, mmseg key layout).", readable=False),
    dst: Path = typer.Argument(..., help="Output .safetensors with uhr metadata."),
    model: str = typer.Option("isdnet-r18", "--model", "-m", help="Registry model the checkpoint belongs to."),
    num_classes: Optional[int] = typer.Option(None, "--classes", help="Class count (default: read from the checkpoint)."),
    fold_conv_bias: bool = typer.Option(False, "--fold-conv-bias", help="Map ASPP convs saved with a bias and no BN (the released deepglobe.pth) exactly onto identity BNs."),
    lenient: bool = typer.Option(False, "--lenient", help="Write even when keys are missing (they keep their initial values; listed)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
) -> None:
    """Map an official ISDNet checkpoint's keys onto uhr's model; every unmapped key is reported."""
    from ..models.convert import convert_file, summarize

    report = convert_file(src, dst, model_name=model, num_classes=num_classes, fold_conv_bias=fold_conv_bias,
                          strict=not lenient, overwrite=overwrite)
    console.print(summarize(report), highlight=False)
    console.print(f"wrote {dst}")


@weights_app.command("export")
def export_cmd(
    src: Path = typer.Argument(..., help="uhr checkpoint, e.g. RUN_DIR/last.safetensors.", readable=False),
    dst: Path = typer.Argument(..., help="Output .safetensors."),
    half: bool = typer.Option(True, "--half/--full", help="Store weights in fp16 (half the size; loaded back as fp32)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
) -> None:
    """Re-save a trained checkpoint for sharing: half precision, metadata kept."""
    from ..models.checkpoint import export_checkpoint

    out = export_checkpoint(src, dst, half=half, overwrite=overwrite)
    console.print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)", highlight=False)
