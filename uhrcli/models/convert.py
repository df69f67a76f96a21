"""Official ISDNet (mmseg 0.16) checkpoints -> uhr keys (and mmseg's BiSeNetV1/V2 and ICNet ones, whose
keys are ours unchanged).

Our module names follow the official ones, so the mapping is:
  backbone.*, decode_head.*, auxiliary_head.*  -> unchanged
  refine_head.X                                -> X  (the ISDHead's children sit at our top level)
  refine_head.stdc_net.{x2,x4,x8,x16}.0.j.*    -> dropped as aliases of stdc_net.features.j
                                                  (checked equal to their target; reported)

The aliases come from the official ShallowNet's `self.x8 = nn.Sequential(self.features[2:4])`:
slicing an nn.Sequential keeps its children's names, so x8 holds `0.2.*` and `0.3.*`: the number
after `.0.` is the `features` index itself (x2: 0, x4: 1, x8: 2-3, x16: 4-5), 120 alias keys
beside the 440 real ones in an isdnet-r18 checkpoint.
Anything else is reported in `report['unmapped']`; nothing is dropped silently.
The released deepglobe.pth is known to carry ASPP ConvModules saved as
conv-with-bias and no BN (`...conv.bias` instead of `...bn.*`): those keys are
reported under `conv_bias_without_bn`, and with `fold_conv_bias=True` they are
mapped exactly onto conv + an identity BN (weight 1, bias = conv bias,
running mean 0, running var 1 - eps).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import CheckpointError, OutputError

KEEP_PREFIXES = ("backbone.", "decode_head.", "auxiliary_head.", "neck.")  # neck: ICNet's ICNeck
REFINE = "refine_head."
# stdc_net alias containers of the official ShallowNet: <alias>.0.<j> == features.<j>, j in the alias's slice
_ALIASES = {"x2": range(0, 1), "x4": range(1, 2), "x8": range(2, 4), "x16": range(4, 6)}
_ALIAS_RE = re.compile(r"^stdc_net\.(x2|x4|x8|x16)\.0\.(\d+)\.(.*)$")
BN_EPS = 1e-5


def _unwrap(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "model_state_dict"):
        if key in state and isinstance(state[key], Mapping):
            state = state[key]
            break
    out = {}
    for k, v in state.items():
        if k.startswith("module."):
            k = k[len("module."):]
        out[k] = v
    return out


def _map_key(k: str) -> tuple[str | None, str | None]:
    """(our key, None) or (None, alias target) for an alias, or (None, None) if unknown."""
    if k.startswith(KEEP_PREFIXES):
        return k, None
    if k.startswith(REFINE):
        rest = k[len(REFINE):]
        m = _ALIAS_RE.match(rest)
        if m:
            idx = int(m.group(2))
            if idx not in _ALIASES[m.group(1)]:
                return None, None  # not the official layout: report it
            return None, f"stdc_net.features.{idx}.{m.group(3)}"
        return rest, None
    return None, None


def convert_isdnet_mmseg(state_dict: Mapping[str, Any], reference: Mapping[str, torch.Tensor] | None = None,
                         fold_conv_bias: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Map an official ISDNet state dict onto our keys; return (new_state, report).

    reference: our model's state_dict; when given, keys are also checked for
    presence and shape (report['missing'], report['shape_mismatch']), and
    mapped keys the model does not have go to report['unmapped'].
    """
    src = _unwrap(state_dict)
    non_tensor = [k for k, v in src.items() if not isinstance(v, torch.Tensor)]
    if non_tensor:
        raise CheckpointError(f"state dict has non-tensor entries, e.g. {non_tensor[0]!r}")
    new: dict[str, torch.Tensor] = {}
    report: dict[str, Any] = {"mapped": 0, "renamed": [], "aliases": [], "unmapped": [], "missing": [],
                              "shape_mismatch": [], "conv_bias_without_bn": [], "folded": [], "alias_mismatch": []}
    pending_alias: list[tuple[str, str]] = []
    for k, v in src.items():
        dst, alias = _map_key(k)
        if alias is not None:
            pending_alias.append((k, alias))
            continue
        if dst is None:
            report["unmapped"].append(k)
            continue
        if k.endswith(".conv.bias") and reference is not None and dst not in reference:
            report["conv_bias_without_bn"].append(k)
            if fold_conv_bias:
                base = dst[: -len("conv.bias")]
                if base + "bn.weight" in reference:
                    new[base + "bn.weight"] = torch.ones_like(v)
                    new[base + "bn.bias"] = v.clone()
                    new[base + "bn.running_mean"] = torch.zeros_like(v)
                    new[base + "bn.running_var"] = torch.full_like(v, 1.0 - BN_EPS)
                    new[base + "bn.num_batches_tracked"] = torch.tensor(0)
                    report["folded"].append(k)
                    continue
            report["unmapped"].append(k)
            continue
        if reference is not None and dst not in reference:
            report["unmapped"].append(k)
            continue
        new[dst] = v
        report["mapped"] += 1
        if dst != k:
            report["renamed"].append((k, dst))
    for k, target in pending_alias:
        t = new.get(target)
        if t is None or tuple(t.shape) != tuple(src[k].shape) or not torch.equal(t, src[k]):
            report["unmapped"].append(k)  # an alias that disagrees with its target is not safe to drop
            report["alias_mismatch"].append(k)
        else:
            report["aliases"].append(k)
    if reference is not None:
        report["missing"] = [k for k in reference if k not in new]
        report["shape_mismatch"] = [(k, tuple(new[k].shape), tuple(reference[k].shape))
                                    for k in new if k in reference and tuple(new[k].shape) != tuple(reference[k].shape)]
    return new, report


def to_official_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our keys -> the official layout, aliases included: for exporting to the official code."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k.startswith(KEEP_PREFIXES):
            out[k] = v
            continue
        out[REFINE + k] = v
        m = re.match(r"^stdc_net\.features\.(\d+)\.(.*)$", k)
        if m:
            i, rest = int(m.group(1)), m.group(2)
            for name, span in _ALIASES.items():
                if i in span:
                    out[f"{REFINE}stdc_net.{name}.0.{i}.{rest}"] = v
    return out


def summarize(report: Mapping[str, Any]) -> str:
    """One line for the CLI/log."""
    parts = [f"{report['mapped']} mapped", f"{len(report['aliases'])} alias(es) dropped"]
    for key in ("unmapped", "alias_mismatch", "missing", "shape_mismatch", "conv_bias_without_bn", "folded"):
        items = report.get(key) or []
        if items:
            first = items[0][0] if isinstance(items[0], tuple) else items[0]
            parts.append(f"{len(items)} {key.replace('_', ' ')} (e.g. {first})")
    return "; ".join(parts)


def convert_file(src: str | os.PathLike, dst: str | os.PathLike, model_name: str = "isdnet-r18",
                 num_classes: int | None = None, fold_conv_bias: bool = False, strict: bool = True,
                 overwrite: bool = False) -> dict[str, Any]:
    """Convert an official .pth into a uhr safetensors checkpoint; returns the report.

    The class count is read from refine_head.conv_seg.conv_out.weight unless
    given. strict=True refuses to write when any key is unmapped, missing or
    of the wrong shape; strict=False keeps the model's initial values for
    missing keys (listed in the report) and still refuses shape mismatches.
    """
    from ..io.writers import refuse_inputs_as_outputs
    from .checkpoint import load_checkpoint, save_checkpoint
    from .registry import create_model

    refuse_inputs_as_outputs([Path(dst)], [Path(src)])
    if Path(dst).exists() and not overwrite:
        raise OutputError(f"output exists: {dst} (pass --overwrite to replace it)")

    state, _ = load_checkpoint(src)
    src_state = _unwrap(state)
    if num_classes is None:
        w = src_state.get("refine_head.conv_seg.conv_out.weight", src_state.get("conv_seg.conv_out.weight"))
        if w is None:  # the mmseg baselines (bisenetv1-r18, bisenetv2, icnet): keys unchanged
            w = src_state.get("decode_head.conv_seg.weight")
        if w is None:
            raise CheckpointError(f"{src}: no refine_head.conv_seg.conv_out.weight; is this an ISDNet checkpoint?")
        num_classes = int(w.shape[0])
    model = create_model(model_name, num_classes=num_classes)
    ref = model.state_dict()
    new, report = convert_isdnet_mmseg(src_state, ref, fold_conv_bias=fold_conv_bias)
    if report["shape_mismatch"] or (strict and (report["unmapped"] or report["missing"])):
        raise CheckpointError(f"{src}: cannot convert to {model_name}: {summarize(report)}")
    merged = {**ref, **new}
    model.load_state_dict(merged, strict=True)
    save_checkpoint(model, Path(dst), model_kwargs={"num_classes": num_classes},
                    extra={"converted_from": str(src), "conversion": summarize(report)})
    return report
