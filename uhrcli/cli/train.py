"""`uhr train`: parse flags (over a TOML file's defaults), call uhrcli.train.train, show progress."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from .common import app, console, console_err


@app.command("train")
def train_cmd(
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="Required (or from --config). Dataset folder (images/+masks/, img/+ann/, Inria images/+gt/, DeepGlobe *_sat.jpg, DUTS X-Image/X-Mask)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Required (or from --config). Registry model, e.g. fcn-tiny, isdnet-r18."),
    classes: Optional[str] = typer.Option(None, "--classes", "-c", help="Number of classes or a names.txt (one per line); DeepGlobe/Inria default from the layout."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Required (or from --config). Run folder (checkpoints, metrics.csv, curves.png, config.json)."),
    val: Optional[Path] = typer.Option(None, "--val", help="Validation folder (same layouts); mIoU/MAE each epoch picks best.safetensors."),
    layout: Optional[str] = typer.Option(None, "--layout", help="auto, pairs, deepglobe, inria, saliency or flat."),
    task: Optional[str] = typer.Option(None, "--task", help="segment or saliency (default from the data and model)."),
    crop: Optional[str] = typer.Option(None, "--crop", help="Random crop side (default 512), or a range such as "
                                       "224-288: each batch draws its side, so the network meets every alignment of "
                                       "its scales' grids (whole images are rarely a multiple of its stride)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Crops per step (default 4)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs (one epoch = as many crop pixels as the data holds; default 10)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Total optimizer steps (instead of --epochs)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Base LR (default sgd 0.01, adamw 1e-4); poly decay to --min-lr."),
    min_lr: Optional[float] = typer.Option(None, "--min-lr", help="Poly schedule floor (default 1e-4)."),
    warmup_steps: Optional[int] = typer.Option(None, "--warmup-steps", help="Linear warm-up steps (default 0)."),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help="sgd (momentum 0.9, wd 5e-4) or adamw."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="Default sgd 5e-4, adamw 0.01."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N or mps."),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="fp16 autocast (CUDA only; default on for CUDA)."),
    backbone_weights: Optional[Path] = typer.Option(None, "--backbone-weights", help="ImageNet weights from a file: a torchvision ResNet for isdnet/deeplabv3; for pgnet a ResNet-18 and a Swin-B file, comma-separated."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in -o from its last checkpoint (settings from its config.json)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over in a non-empty run folder."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file of defaults (top-level keys or [train]); flags override it."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="Save last.safetensors every N steps (default 500)."),
    log_every: Optional[int] = typer.Option(None, "--log-every", help="metrics.csv row every N steps (default 10)."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", help="Crop-reading worker processes (default 2)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for initialisation and crops (default 0)."),
    ignore_index: Optional[int] = typer.Option(None, "--ignore-index", help="Mask value to ignore (255 is ignored unless masks are 0/255 binary)."),
    stretch: Optional[str] = typer.Option(None, "--stretch", help="auto, none, minmax or percentile[:LOW,HIGH] for non-8-bit images."),
    no_photometric: bool = typer.Option(False, "--no-photometric", help="Turn off the colour jitter."),
    stop_after: Optional[int] = typer.Option(None, "--stop-after", help="End after this global step, as if interrupted (continue with --resume)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Train a registry model on your own image/mask folders (random crops read window by window)."""
    from ..train import TrainConfig, load_toml, train

    values: dict[str, Any] = {}
    if config is not None:
        values.update(load_toml(config))
    out_dir = output or (Path(values["output"]) if values.get("output") else None)
    if resume and out_dir is not None and (out_dir / "config.json").is_file():
        saved = json.loads((out_dir / "config.json").read_text())
        saved.pop("resolved", None)
        for k in ("resume", "overwrite", "stop_after"):
            saved.pop(k, None)
        values.update(saved)
    crop_min, crop_max = _crop_range(crop)
    flags = dict(data=data, model=model, classes=classes, output=output, val=val, layout=layout, task=task,
                 crop=crop_min, crop_max=crop_max, batch_size=batch_size, epochs=epochs, steps=steps, lr=lr, min_lr=min_lr,
                 warmup_steps=warmup_steps, optimizer=optimizer, weight_decay=weight_decay, device=device, amp=amp,
                 backbone_weights=backbone_weights, checkpoint_every=checkpoint_every, log_every=log_every,
                 workers=workers, seed=seed, ignore_index=ignore_index, stretch=stretch, stop_after=stop_after)
    values.update({k: v for k, v in flags.items() if v is not None})
    if epochs is not None and steps is None:  # a flag beats the other length setting from a file
        values.pop("steps", None)
    elif steps is not None and epochs is None:
        values.pop("epochs", None)
    if no_photometric:
        values["photometric"] = False
    values["resume"], values["overwrite"] = resume, overwrite
    cfg = TrainConfig.from_mapping(values)
    if not quiet:
        console_err.print(f"[bold]checking[/bold] {cfg.data} ...", highlight=False)
    progress = Progress(TextColumn("[bold]train[/bold]"), BarColumn(), TaskProgressColumn(),
                        TextColumn("{task.completed:.0f}/{task.total:.0f} steps"), TextColumn("{task.fields[info]}"),
                        TimeRemainingColumn(), console=console_err, disable=quiet)
    state: dict[str, Any] = {}

    def on_event(kind: str, d: dict[str, Any]) -> None:
        if quiet:
            return
        if kind == "start":
            for n in d["notes"]:
                console_err.print(f"[yellow]note:[/yellow] {n}", highlight=False)
            console_err.print(f"{d['layout']} {d['task']} data, {d['samples']} image(s), {len(d['class_names'])} "
                              f"class(es); {d['total_steps']} steps ({d['steps_per_epoch']}/epoch), crop {d['crop']}, "
                              f"lr {d['lr']:g}, device {d['device']}" + (" fp16" if d["amp"] else ""), highlight=False)
            state["task"] = progress.add_task("train", total=d["total_steps"], completed=d["start_step"], info="")
            progress.start()
        elif kind == "step" and "task" in state:
            state["info"] = f"loss {d['loss']:.4f}  lr {d['lr']:.2e}  {d['images_per_s']:.1f} img/s"
            progress.update(state["task"], completed=d["step"], info=state["info"] + state.get("val", ""))
        elif kind == "note":
            progress.console.print(f"[yellow]note:[/yellow] {d['text']}", highlight=False)
        elif kind == "epoch" and "task" in state:
            name = d["metric_name"]
            state["val"] = f"  {name} {d[name]:.4f}"
            progress.console.print(f"epoch {d['epoch']} step {d['step']}: {name} {d[name]:.4f} "
                                   f"(best {d['best']:.4f})", highlight=False)
            progress.update(state["task"], info=state.get("info", "") + state["val"])

    try:
        result = train(cfg, on_event=on_event)
    finally:
        progress.stop()
    if quiet:
        return
    if result.already_complete:
        loss = "none recorded" if result.final_loss != result.final_loss else f"{result.final_loss:.4f}"
        console.print(f"already complete: {result.run_dir} finished all {result.total_steps} steps earlier; nothing "
                      f"trained. Recorded final loss {loss}" + (f"; best {result.metric_name} {result.best_metric:.4f}"
                                                                if result.best_metric is not None else ""),
                      highlight=False)
        console.print(f"weights: {result.last}" + (f"  best: {result.best}" if result.best else ""), highlight=False)
        return
    how = "stopped" if result.stopped_early else "finished"
    console.print(f"{how} at step {result.step}/{result.total_steps} in {result.seconds:.1f} s; final loss "
                  f"{result.final_loss:.4f}" + (f"; best {result.metric_name} {result.best_metric:.4f}"
                                                if result.best_metric is not None else ""), highlight=False)
    console.print(f"weights: {result.last}" + (f"  best: {result.best}" if result.best else "")
                  + f"  log: {result.run_dir / 'metrics.csv'}", highlight=False)
    if result.stopped_early:
        console.print(f"continue with: uhr train -o {result.run_dir} --resume", highlight=False)


def _crop_range(text: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    """'512' -> (512, None); '224-288' -> (224, 288)."""
    if text is None:
        return None, None
    from ..errors import UsageError

    try:
        parts = [int(v) for v in str(text).replace(" ", "").split("-")]
    except ValueError:
        raise UsageError(f"--crop must be a size or a range like 224-288, got {text!r}") from None
    if len(parts) == 1:
        return parts[0], None
    if len(parts) != 2:
        raise UsageError(f"--crop must be a size or a range like 224-288, got {text!r}")
    return parts[0], parts[1]
