"""Checkpoints: safetensors (preferred) or torch files read with weights_only=True.

A uhr checkpoint carries the model name, constructor kwargs and ModelInfo fields
(classes, palette, normalisation) in its metadata, so `--weights FILE` alone is
enough to rebuild the network. Nothing is ever unpickled beyond plain tensors.
"""
from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import CheckpointError, MissingInputError, OutputError, first_line
from ..io.filemode import usual_mode
from .base import ModelInfo
from .registry import create_model

META_KEY = "uhr"
FORMAT_VERSION = 1


def save_checkpoint(model: nn.Module, path: str | os.PathLike, model_kwargs: dict[str, Any] | None = None,
                    extra: dict[str, Any] | None = None, half: bool = False) -> Path:
    """Write `model` as safetensors with uhr metadata, atomically."""
    path = Path(path)
    info: ModelInfo = model.info
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if half:
        state = _half(state)
    meta = {
        "format_version": FORMAT_VERSION,
        "model": info.name,
        "model_kwargs": model_kwargs or {},
        "info": info.to_dict(),
        "extra": extra or {},
    }
    return _write_safetensors(state, meta, path)


def _half(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors to fp16; integer buffers (num_batches_tracked, indices) stay as they are."""
    return {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}


def _write_safetensors(state: dict[str, torch.Tensor], meta: dict[str, Any], path: Path) -> Path:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(state, str(tmp), metadata={META_KEY: json.dumps(meta)})
        usual_mode(tmp)  # the writer makes it private (0600): a model is shared like any file
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def export_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, *, half: bool = True,
                      overwrite: bool = False) -> Path:
    """Re-save a uhr checkpoint for shipping: fp16 halves the file, and a model built from it
    loads the values back into fp32 parameters, so inference stays fp32 where the device wants it."""
    from ..io.writers import refuse_inputs_as_outputs

    dst = Path(dst)
    refuse_inputs_as_outputs([dst], [Path(src)])
    if dst.exists() and not overwrite:
        raise OutputError(f"output exists: {dst} (pass --overwrite to replace it)")
    state, meta = load_checkpoint(src)
    if not meta.get("model"):
        raise CheckpointError(f"{src}: no uhr metadata (model, classes); for official checkpoints use "
                              "`uhr weights convert`")
    build_model(None, src)  # refuse anything that would not load
    if half:
        state = _half(state)
    meta = {**meta, "extra": {**meta.get("extra", {}), "exported_from": Path(src).name, "half": half}}
    dst.parent.mkdir(parents=True, exist_ok=True)
    return _write_safetensors({k: v.contiguous() for k, v in state.items()}, meta, dst)


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return (state_dict, uhr metadata or {}). Refuses anything that is not plain tensors."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"weights file not found: {path}")
    if path.is_dir():
        return _load_torch_folder(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) < 8:
        raise CheckpointError(f"{path}: file too small to be a checkpoint")
    if sniff_format(head, path.stat().st_size) == "torch":
        return _load_torch(path), {}
    return _load_safetensors(path)


def checkpoint_metadata(path: str | os.PathLike | None) -> dict[str, Any]:
    """A checkpoint's uhr metadata without loading its tensors ({} for 'random', torch files, folders)."""
    if path is None or str(path) == "random":
        return {}
    p = Path(path)
    if not p.is_file():
        return {}
    with open(p, "rb") as f:
        head = f.read(16)
    if len(head) < 9 or sniff_format(head, p.stat().st_size) != "safetensors":
        return {}
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except (SafetensorError, OSError, ValueError):
        return {}
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        return {}


def sniff_format(head: bytes, size: int) -> str:
    """'safetensors' or 'torch' from a file's first bytes.

    safetensors starts with its JSON header's length (u64 little-endian) and then '{'; that length's
    first byte can be 0x80, the pickle protocol marker, so the safetensors test must come first.
    """
    n = int.from_bytes(head[:8], "little")
    if head[8:9] == b"{" and 0 < n <= size - 8:
        return "safetensors"
    if head[:2] == b"PK" or head[:1] == b"\x80":  # torch zip or legacy pickle
        return "torch"
    return "safetensors"  # let the safetensors reader say what is wrong


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta_raw = (f.metadata() or {}).get(META_KEY)
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors or torch checkpoint ({exc})") from None
    meta = json.loads(meta_raw) if meta_raw else {}
    return state, meta


def _numpy_scalar_globals() -> list:
    """The numpy globals a numeric scalar in a checkpoint's metadata pickles to (mmcv's
    meta.hook_msgs.best_score, seeds), under numpy 2 and numpy 1 names: they build numbers, never run code."""
    import numpy as np

    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    kinds = ("Bool", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64", "Float16",
             "Float32", "Float64", "LongDouble", "Complex64", "Complex128")
    dtypes = [getattr(np.dtypes, f"{k}DType") for k in kinds if hasattr(np, "dtypes") and hasattr(np.dtypes, f"{k}DType")]
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"),
            np.dtype, *dtypes]


def _load_torch(path: Path) -> dict[str, torch.Tensor]:
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused: the file holds pickled objects other than tensors (weights_only load failed: "
            f"{first_line(exc, 160)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated torch checkpoint ({first_line(exc, 160)})") from None
    return _extract_state_dict(obj, path)


def _load_torch_folder(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A checkpoint unzipped into a folder (data.pkl + data/): re-zip in memory and load safely."""
    if not (path / "data.pkl").exists():
        raise CheckpointError(f"{path}: a folder given as weights must be an unzipped torch checkpoint (data.pkl missing)")
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for p in sorted(path.rglob("*")):
            if p.is_file():
                zf.write(p, arcname=f"archive/{p.relative_to(path).as_posix()}")
    buf.seek(0)
    try:
        obj = torch.load(buf, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - report any failure of the safe loader as one line
        raise CheckpointError(f"{path}: cannot load unzipped checkpoint folder ({first_line(exc, 160)})") from None
    return _extract_state_dict(obj, path), {}


def _extract_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "model_state_dict", "net"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: does not contain a state_dict of tensors")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load with strict key and shape checks and a one-line summary of what differs."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} shape mismatch(es), e.g. {k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}")
        raise CheckpointError(f"{source} does not fit model {model.info.name}: " + "; ".join(parts))
    cast = {k: v.to(own[k].dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(cast, strict=True)


def build_model(name: str | None, weights: str | os.PathLike | None = None, *, num_classes: int | None = None,
                seed: int = 0, **kwargs: Any) -> nn.Module:
    """Create a model ready for inference.

    weights: a checkpoint path, or None/'random' for a seeded untrained model.
    name: None takes the name stored in a uhr checkpoint. A name that differs
    from the checkpoint's, or a class count that differs, is refused.
    """
    if weights is None or str(weights) == "random":
        if name is None:
            raise CheckpointError("no model name and no weights: nothing to build")
        torch.manual_seed(seed)
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        model = create_model(name, **kwargs)
        return model.eval()

    state, meta = load_checkpoint(weights)
    if meta:
        ck_name = meta.get("model")
        if name is not None and ck_name and name != ck_name:
            raise CheckpointError(f"{weights} holds model {ck_name!r}, not {name!r} (drop --model or pick the right file)")
        name = ck_name or name
        mk = dict(meta.get("model_kwargs", {}))
        mk.update(kwargs)
        info = meta.get("info", {})
        if num_classes is not None and info.get("num_classes") not in (None, num_classes):
            raise CheckpointError(f"{weights} was trained for {info.get('num_classes')} classes, not {num_classes}")
        model = create_model(name, **mk)
        if info:
            model.info = _merge_info(model.info, info)
    else:
        if name is None:
            raise CheckpointError(f"{weights} has no uhr metadata: name the model with --model")
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        model = create_model(name, **kwargs)
    load_state_strict(model, state, str(weights))
    return model.eval()


def _merge_info(base: ModelInfo, stored: dict[str, Any]) -> ModelInfo:
    """Classes, palette and normalisation come from the checkpoint; geometry from the code."""
    from dataclasses import asdict

    d = asdict(base)
    for key in ("num_classes", "mean", "std"):
        if key in stored:
            d[key] = tuple(stored[key]) if isinstance(stored[key], list) else stored[key]
    if stored.get("class_names"):
        d["class_names"] = tuple(stored["class_names"])
    if stored.get("palette"):
        d["palette"] = tuple(tuple(p) for p in stored["palette"])
    return ModelInfo(**d)
