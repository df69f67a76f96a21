"""`uhrcli.train.train(TrainConfig)`: the training loop behind `uhr train`.

Everything a resumed run needs is on disk after each checkpoint: the weights
(RUN_DIR/last.safetensors, with uhr metadata so `uhr segment --weights` can use
them directly) and the training state (RUN_DIR/last_state.pt: optimizer,
step, epoch, best metric, RNG; plain tensors and numbers, loaded with
weights_only=True). The LR is a pure function of the step and the crops a pure
function of (seed, sample index), so a resumed run continues exactly.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from rasterio.windows import Window

from ..device import autocast, resolve_device
from ..errors import MissingDependencyError, CheckpointError, InputError, MissingInputError, OutputError, UhrError, UsageError, first_line
from ..evaluate.labels import DEEPGLOBE_COLOURS, IGNORE
from ..evaluate.metrics import confusion_matrix, metrics_from_confusion
from ..io.readers import open_reader
from ..io.scaling import make_scaler
from .augment import AugmentConfig
from .config import TrainConfig, parse_classes, write_json
from .datasets import CropDataset, DatasetSpec, build_spec, steps_per_epoch
from .logs import MetricsCSV, plot_curves
from .losses import compute_losses
from .schedule import poly_lr

LAST, BEST, STATE = "last.safetensors", "best.safetensors", "last_state.pt"
PLOT_EVERY_S = 60.0
RUN_FILES = (LAST, BEST, STATE, "metrics.csv", "curves.png", "config.json")
DEFAULT_EPOCHS = 10

Event = Callable[[str, dict[str, Any]], None]


@dataclass
class TrainResult:
    run_dir: Path
    last: Path
    best: Path | None
    step: int
    total_steps: int
    epoch: int
    metric_name: str
    best_metric: float | None
    last_val: dict[str, float] = field(default_factory=dict)
    final_loss: float = float("nan")
    seconds: float = 0.0
    resumed_from: int = 0
    stopped_early: bool = False
    already_complete: bool = False  # a resume of a finished run: nothing was trained, final_loss is the recorded one
    notes: list[str] = field(default_factory=list)


def recorded_loss(rows: list[dict[str, str]]) -> float:
    """The training loss of the last logged step in metrics.csv (nan when none was logged)."""
    for row in reversed(rows):  # validation rows leave the loss empty
        try:
            return float(row["loss"])
        except (KeyError, TypeError, ValueError):
            continue
    return float("nan")


def _ceil_to(v: int, m: int) -> int:
    return -(-int(v) // m) * m


def _prepare_run_dir(cfg: TrainConfig) -> None:
    d = cfg.output
    if d.exists() and not d.is_dir():
        raise OutputError(f"{d}: the run folder is a file")
    if cfg.resume:
        if not (d / LAST).exists() or not (d / STATE).exists():
            raise MissingInputError(f"{d}: nothing to resume ({LAST} and {STATE} not found)")
        return
    if d.exists() and any(d.iterdir()):
        if not cfg.overwrite:
            raise OutputError(f"{d} exists and is not empty: pass --resume to continue that run or --overwrite "
                              f"to start over")
        for name in RUN_FILES:
            p = d / name
            if p.is_file():
                p.unlink()
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{d}: cannot create the run folder ({exc.strerror})") from None


def _create_model(cfg: TrainConfig, spec: DatasetSpec) -> tuple[nn.Module, dict[str, Any]]:
    from ..models import create_model, list_models

    if cfg.model not in list_models():
        raise UsageError(f"unknown model {cfg.model!r}; available: {', '.join(list_models())}")
    kw = dict(cfg.model_kwargs)
    if spec.task == "saliency":
        if not cfg.model.startswith("pgnet"):
            kw.setdefault("task", "saliency")
    else:
        kw["num_classes"] = len(spec.class_names)
    torch.manual_seed(cfg.seed)
    try:
        model = create_model(cfg.model, **kw)
    except TypeError as exc:
        raise UsageError(f"model {cfg.model} cannot be built with {kw}: {exc}") from None
    if model.info.task != spec.task:
        raise UsageError(f"model {cfg.model} is a {model.info.task} model but the data is a {spec.task} set "
                         f"(set --task or pick another model)")
    if spec.task == "segment":
        palette = DEEPGLOBE_COLOURS if spec.layout == "deepglobe" else None
        model.info = model.info.with_classes(spec.class_names, palette)
    return model, kw


def _optimizer(cfg: TrainConfig, model: nn.Module, base_lr: float) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    if cfg.optimizer == "sgd":
        wd = 5e-4 if cfg.weight_decay is None else cfg.weight_decay
        # mmseg applies weight decay to every parameter for SGD: keep that for the ISDNet recipe
        return torch.optim.SGD(model.parameters(), lr=base_lr, momentum=cfg.momentum, weight_decay=wd)
    wd = 0.01 if cfg.weight_decay is None else cfg.weight_decay
    return torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=base_lr)


@torch.no_grad()
def validate(model: nn.Module, spec: DatasetSpec, device: torch.device, amp: bool = False, tile: int | None = None,
             stretch: str = "auto", mean_excludes: list[int] | None = None) -> dict[str, float]:
    """Score the model on a dataset with the inference deployment runs: `uhr segment`'s inferer (exact
    whole-image predictions, tiled) or `uhr saliency`'s resize-predict-resize. best.safetensors is chosen
    on what deployment computes."""
    from ..inference import InferOptions
    from ..inference.raster import infer_raster
    from ..saliency import predict_saliency

    info = model.info
    was_training = model.training
    model.eval()
    k = max(1, len(spec.class_names))
    cm = np.zeros((k, k + 1), np.int64)
    abs_err, n_px = 0.0, 0
    dec = spec.decoder
    size = int(info.extra.get("default_size", 1024))
    try:
        for s, (h, w) in zip(spec.samples, spec.sizes):
            with open_reader(s.image, validate=False) as img, \
                    open_reader(s.mask, bands=dec.bands, validate=False, expand_palette=dec.kind == "deepglobe") as mk:
                whole = Window(0, 0, w, h)
                y = dec(mk.read(whole), mk.read_mask(whole))
                if spec.task == "saliency":
                    p = predict_saliency(model, make_scaler(img, stretch)(img.read(whole)), size, device, amp)
                    abs_err += float(np.abs(p - y).sum())
                    n_px += y.size
                else:
                    pred = infer_raster(model, img, device=device, stretch=stretch, tile=tile,
                                        options=InferOptions(amp=amp, channels_last=False)).classes
                    cm += confusion_matrix(pred, y, k, IGNORE)
    finally:
        model.train(was_training)
    if spec.task == "saliency":
        return {"val_mae": abs_err / max(1, n_px)}
    m = metrics_from_confusion(cm, spec.class_names, mean_excludes or [])
    out_d = {"val_miou": m.miou, "val_mf1": m.mf1, "val_acc": m.pixel_accuracy}
    for name, v in zip(spec.class_names, m.iou):
        out_d[f"val_iou_{name}"] = float(v)
    return out_d


def _scaling_record(spec: Any, stretch: str) -> dict[str, Any]:
    """The training images' scaling (uhrcli.io.radiometry), from their headers (no pixels are read)."""
    from contextlib import ExitStack

    from ..io.radiometry import scaling_record
    from ..io.readers import open_reader

    with ExitStack() as stack:
        readers = [stack.enter_context(open_reader(s.image, validate=False)) for s in spec.samples]
        return scaling_record(readers, stretch)


def _save(model: nn.Module, path: Path, kw: dict[str, Any], extra: dict[str, Any]) -> None:
    from ..models.checkpoint import save_checkpoint

    save_checkpoint(model, path, model_kwargs=kw, extra=extra)


def _save_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(cfg: TrainConfig, on_event: Event | None = None) -> TrainResult:
    """Fit `cfg.model` on `cfg.data`; all data checks run before the first step. Returns where things went."""
    t_start = time.perf_counter()
    emit: Event = on_event or (lambda kind, data: None)
    cfg.validate()
    _prepare_run_dir(cfg)
    names = parse_classes(cfg.classes)
    task = cfg.task or ("saliency" if cfg.model.startswith("pgnet") else None)
    emit("check", {"what": "train", "path": str(cfg.data)})
    spec = build_spec(cfg.data, layout=cfg.layout, task=task, class_names=names, ignore_index=cfg.ignore_index,
                      check=cfg.check_data)
    val_spec = None
    if cfg.val is not None:
        emit("check", {"what": "val", "path": str(cfg.val)})
        val_spec = build_spec(cfg.val, layout=cfg.layout, task=spec.task, class_names=spec.class_names,
                              ignore_index=cfg.ignore_index, check=cfg.check_data)
        if val_spec.decoder.kind == "index" and spec.decoder.foreground_255 and not val_spec.decoder.foreground_255:
            val_spec.decoder.foreground_255 = True
    model, model_kwargs = _create_model(cfg, spec)
    info = model.info
    for sp in (spec, val_spec):
        if sp is None:
            continue
        for s, b in zip(sp.samples, sp.bands):
            if b != info.in_channels:
                raise InputError(f"{s.image}: {b} band(s), model {info.name} expects {info.in_channels}")
    mean_excludes = cfg.mean_excludes if cfg.mean_excludes is not None else ([0] if spec.layout == "deepglobe" else [])

    device = resolve_device(cfg.device)
    notes = list(spec.notes)
    amp = device.type == "cuda" if cfg.amp is None else bool(cfg.amp)
    if amp and device.type == "cpu":
        amp = False
        notes.append("--amp ignored on CPU (fp32; bf16 autocast is never used on CPU)")
    base_lr = cfg.lr if cfg.lr is not None else (0.01 if cfg.optimizer == "sgd" else 1e-4)
    # segmentation crops keep their size: the networks run at any size and infer on whole images that are
    # rarely a multiple of their stride, where their scales' grids sit differently (the official ISDNet
    # configs crop 1224 and 2000 px); saliency trains at multiples of 32, as PGNet's multi-scale batches do
    crop = int(cfg.crop)
    if spec.task == "saliency":
        crop = _ceil_to(cfg.crop, max(1, int(info.size_multiple)))
        if crop != cfg.crop:
            notes.append(f"crop rounded up to {crop} (a multiple of the model's stride {info.size_multiple})")
    spe = steps_per_epoch(spec, crop, cfg.batch_size)
    total = int(cfg.steps) if cfg.steps is not None else spe * int(cfg.epochs or DEFAULT_EPOCHS)

    if cfg.backbone_weights is not None and not cfg.resume:
        if not hasattr(model, "load_backbone_weights"):
            raise UsageError(f"model {cfg.model} has no backbone loader: --backbone-weights is not supported for it")
        for part in str(cfg.backbone_weights).split(","):  # PGNet takes two: its ResNet's and its Swin's
            if not Path(part).exists():
                raise MissingInputError(f"backbone weights not found: {part}")
            rep = model.load_backbone_weights(part)
            if isinstance(rep, dict) and "loaded" in rep:
                notes.append(f"backbone weights: {rep['loaded']} tensor(s) loaded from {part}")
                notes.extend(rep.get("notes", []))
    model.to(device)
    opt = _optimizer(cfg, model, base_lr)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda")

    run = cfg.output
    step, best = 0, None
    if cfg.resume:
        from ..models.checkpoint import load_checkpoint, load_state_strict

        try:
            state = torch.load(run / STATE, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure of the safe loader: a damaged state file
            raise CheckpointError(f"{run / STATE}: cannot read the training state ({first_line(exc, 160)})") from None
        sd, meta = load_checkpoint(run / LAST)
        if state.get("model") != cfg.model:
            raise CheckpointError(f"{run} holds a {state.get('model')} run, not {cfg.model}")
        if int(meta.get("extra", {}).get("step", -1)) != int(state["step"]):
            raise CheckpointError(f"{run}: {LAST} and {STATE} are from different steps (an interrupted save); "
                                  f"start over with --overwrite")
        load_state_strict(model, sd, str(run / LAST))
        model.to(device)
        opt.load_state_dict(state["optimizer"])
        if state.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        step = int(state["step"])
        best = None if state.get("best") is None or math.isnan(float(state["best"])) else float(state["best"])
        if int(state.get("total_steps", total)) != total:
            notes.append(f"total steps changed from {int(state['total_steps'])} to {total}: the LR schedule follows the new total")
    resumed_from = step
    write_json(run / "config.json", {**cfg.to_json(), "resolved": {
        "task": spec.task, "layout": spec.layout, "class_names": spec.class_names, "lr": base_lr, "crop": crop,
        "total_steps": total, "steps_per_epoch": spe, "device": str(device), "amp": amp,
        "mean_excludes": mean_excludes, "samples": len(spec.samples),
        "val_samples": len(val_spec.samples) if val_spec else 0, "notes": notes}})

    metric_name = ("val_mae" if spec.task == "saliency" else "val_miou") if val_spec else "train_loss"
    higher_better = metric_name == "val_miou"
    csv_log = MetricsCSV(run / "metrics.csv", resume_step=step if cfg.resume else None)
    aug = AugmentConfig(cfg.hflip, cfg.vflip, cfg.rot90, cfg.photometric)
    crop_max = None if cfg.crop_max is None or spec.task == "saliency" else int(cfg.crop_max)
    ds = CropDataset(spec, crop, info.mean, info.std, seed=cfg.seed, augment=aug, stretch=cfg.stretch,
                     crop_max=crop_max, batch_size=cfg.batch_size,
                     cat_max_ratio=cfg.cat_max_ratio if spec.task == "segment" else 1.0)
    stop_at = total if cfg.stop_after is None else min(total, int(cfg.stop_after))
    emit("start", {"total_steps": total, "start_step": step, "steps_per_epoch": spe, "samples": len(spec.samples),
                   "layout": spec.layout, "task": spec.task, "device": str(device), "amp": amp, "lr": base_lr,
                   "crop": f"{crop}-{crop_max}" if crop_max else crop, "notes": notes,
                   "class_names": spec.class_names})

    scaling = _scaling_record(spec, cfg.stretch)  # how the images were scaled: `uhr segment` scales the same way

    def checkpoint(epoch: int) -> None:
        extra = {"step": step, "epoch": epoch, "task": spec.task, "layout": spec.layout, "total_steps": total,
                 "scaling": scaling}
        _save(model, run / LAST, model_kwargs, extra)
        _save_state(run / STATE, {"model": cfg.model, "step": step, "epoch": epoch, "total_steps": total,
                                  "optimizer": opt.state_dict(),
                                  "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                                  "torch_rng": torch.get_rng_state(),
                                  "best": float("nan") if best is None else float(best)})

    loss_keys: list[str] | None = None
    val_cols: list[str] = []
    window: dict[str, list[float]] = {}
    epoch_losses: list[float] = []
    last_val: dict[str, float] = {}
    final_loss = float("nan")
    t_win, n_win = time.perf_counter(), 0
    last_plot = t_win
    plots = True
    model.train()
    loader = torch.utils.data.DataLoader(
        ds, batch_size=cfg.batch_size, sampler=range(step * cfg.batch_size, stop_at * cfg.batch_size),
        num_workers=cfg.workers, pin_memory=device.type == "cuda", drop_last=False,
        persistent_workers=False,
        # spawn, not fork: a forked child inherits GDAL's thread pool state and can deadlock on its first read
        multiprocessing_context="spawn" if cfg.workers > 0 else None)

    def columns() -> list[str]:
        return ["step", "epoch", "lr", "images_per_s"] + (loss_keys or []) + val_cols

    try:
        for x, y in loader:
            lr = poly_lr(step, total, base_lr, cfg.power, cfg.min_lr, cfg.warmup_steps, cfg.warmup_ratio)
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_mult", 1.0)
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            with autocast(device, amp):
                losses = compute_losses(model, x, y, spec.task, IGNORE)
            loss = losses["loss"]
            if not torch.isfinite(loss):
                raise UhrError(f"the loss became {float(loss)} at step {step + 1}: lower --lr (now {base_lr:g}) "
                               f"or check the masks")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            step += 1
            n_win += x.shape[0]
            vals = {k: float(v.detach()) for k, v in losses.items() if k.startswith("loss") and torch.is_tensor(v)}
            if loss_keys is None:
                loss_keys = ["loss"] + sorted(k for k in vals if k != "loss")
                val_cols = (["val_mae"] if spec.task == "saliency" else
                            ["val_miou", "val_mf1", "val_acc"] + [f"val_iou_{n}" for n in spec.class_names]) \
                    if val_spec else ["train_loss"]
            for k, v in vals.items():
                window.setdefault(k, []).append(v)
            epoch_losses.append(vals["loss"])
            final_loss = vals["loss"]
            epoch = (step - 1) // spe + 1
            if step % cfg.log_every == 0 or step == stop_at:
                dt = max(1e-9, time.perf_counter() - t_win)
                ips = n_win / dt
                row = {"step": step, "epoch": epoch, "lr": lr, "images_per_s": ips,
                       **{k: float(np.mean(v)) for k, v in window.items()}}
                csv_log.write(row, columns())
                emit("step", {"step": step, "total": total, "epoch": epoch, "lr": lr, "images_per_s": ips,
                              "loss": row["loss"], "losses": {k: row[k] for k in window}})
                window.clear()
                t_win, n_win = time.perf_counter(), 0
            epoch_end = step % spe == 0 or step == total
            if epoch_end:
                if val_spec is not None:
                    last_val = validate(model, val_spec, device, amp, cfg.val_tile, cfg.stretch, mean_excludes)
                else:
                    last_val = {"train_loss": float(np.mean(epoch_losses))}
                epoch_losses = []
                csv_log.write({"step": step, "epoch": epoch, "lr": lr, **last_val}, columns())
                value = last_val[metric_name]
                improved = best is None or (value > best if higher_better else value < best)
                if improved and not math.isnan(value):
                    best = value
                    _save(model, run / BEST, model_kwargs, {"step": step, "epoch": epoch, "task": spec.task,
                                                            "metric": {metric_name: value}, "scaling": scaling})
                emit("epoch", {"step": step, "epoch": epoch, "metric_name": metric_name, "best": best, **last_val})
            saving = step % cfg.checkpoint_every == 0 or step == stop_at
            if saving:
                checkpoint(epoch)
            # a plot costs 0.2-0.8 s: redraw with checkpoints, else at most once a minute (small epochs)
            if plots and (saving or (epoch_end and time.perf_counter() - last_plot > PLOT_EVERY_S)):
                try:
                    plot_curves(run / "metrics.csv", run / "curves.png", metric_name)
                except MissingDependencyError as exc:  # training goes on; metrics.csv holds the numbers
                    plots = False
                    emit("note", {"text": f"curves.png not drawn: {exc}"})
                last_plot = time.perf_counter()
            if step >= stop_at:
                break
    finally:
        ds.close()
    already = step == resumed_from and step >= total
    if step == resumed_from:  # nothing left to do (a resume of a finished run)
        notes.append(f"nothing to train: the run is already at step {step} of {total}")
        final_loss = recorded_loss(csv_log.rows())
    # the last step always checkpoints, and the curves were redrawn with it
    result = TrainResult(run_dir=run, last=run / LAST, best=(run / BEST) if (run / BEST).exists() else None,
                         step=step, total_steps=total, epoch=(max(step, 1) - 1) // spe + 1, metric_name=metric_name,
                         best_metric=best, last_val=last_val, final_loss=final_loss,
                         seconds=time.perf_counter() - t_start, resumed_from=resumed_from,
                         stopped_early=step < total, already_complete=already, notes=notes)
    emit("end", {"result": result})
    return result
