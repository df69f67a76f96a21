"""Training settings: one dataclass the CLI, a TOML file and the Python API all fill."""
from __future__ import annotations

import json
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import InputError, MissingInputError, UsageError


@dataclass
class TrainConfig:
    """Everything a run depends on; written to RUN_DIR/config.json so a run can be repeated.

    None means "the default for this model/optimizer/layout", resolved by `resolved()`.
    """

    data: Path
    model: str
    output: Path
    classes: Any = None  # int, names.txt path, list of names, or None (from the layout)
    val: Path | None = None
    layout: str = "auto"  # auto | pairs | deepglobe | inria | saliency | flat
    task: str | None = None  # segment | saliency (default: from the layout and the model)
    crop: int = 512
    crop_max: int | None = None  # with crop: each batch's crop side drawn from [crop, crop_max]
    batch_size: int = 4
    epochs: int | None = None
    steps: int | None = None
    lr: float | None = None  # sgd 0.01 (ISDNet), adamw 1e-4
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float | None = None  # sgd 5e-4, adamw 0.01
    power: float = 0.9
    min_lr: float = 1e-4
    warmup_steps: int = 0
    warmup_ratio: float = 0.1  # LR factor at the first warm-up step
    device: str = "auto"
    amp: bool | None = None  # fp16 on CUDA by default, never on CPU
    backbone_weights: Path | None = None
    resume: bool = False
    overwrite: bool = False
    checkpoint_every: int = 500
    log_every: int = 10
    workers: int = 2
    seed: int = 0
    ignore_index: int | None = None  # a raw mask value to ignore (255 is always ignored unless 0/255 binary)
    stretch: str = "auto"
    cat_max_ratio: float = 0.75  # re-draw a crop (up to 10 times) when one class covers more than this
    hflip: float = 0.5
    vflip: float = 0.5
    rot90: float = 0.5
    photometric: bool = True
    val_tile: int = 1024
    mean_excludes: list[int] | None = None  # classes left out of mIoU (DeepGlobe: unknown)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    stop_after: int | None = None  # end this run after this global step, as if interrupted (then --resume)
    check_data: bool = True

    def __post_init__(self) -> None:
        self.data = Path(self.data)
        self.output = Path(self.output)
        if self.val is not None:
            self.val = Path(self.val)
        if self.backbone_weights is not None:
            self.backbone_weights = Path(self.backbone_weights)

    def validate(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise UsageError(f"--optimizer must be sgd or adamw, got {self.optimizer!r}")
        for name in ("crop", "batch_size", "checkpoint_every", "log_every", "val_tile"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("epochs", "steps"):
            v = getattr(self, name)
            if v is not None and int(v) < 1:
                raise UsageError(f"--{name} must be at least 1")
        if self.crop_max is not None and int(self.crop_max) < int(self.crop):
            raise UsageError(f"--crop {self.crop}-{self.crop_max}: the range must not shrink")
        if self.epochs is not None and self.steps is not None:
            raise UsageError("give --epochs or --steps, not both")
        if self.workers < 0:
            raise UsageError("--workers must be >= 0")
        if self.task not in (None, "segment", "saliency"):
            raise UsageError(f"--task must be segment or saliency, got {self.task!r}")
        if self.resume and self.overwrite:
            raise UsageError("--resume and --overwrite contradict each other")
        if self.lr is not None and self.lr <= 0:
            raise UsageError("--lr must be positive")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, Path):
                d[k] = str(v)
        return d

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"unknown training setting(s): {', '.join(unknown)}")
        missing = [k for k in ("data", "model", "output") if values.get(k) in (None, "")]
        if missing:
            raise UsageError("missing " + ", ".join("--" + m if m != "output" else "-o/--output" for m in missing)
                             + " (required: give them as options or in the --config file)")
        return cls(**values)


def load_toml(path: str | Path) -> dict[str, Any]:
    """Defaults from a TOML file: top-level keys or a [train] table; dashes or underscores in keys."""
    p = Path(path)
    if not p.is_file():
        raise MissingInputError(f"config file not found: {p}")
    try:
        with open(p, "rb") as f:
            doc = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{p}: not valid TOML ({exc})") from None
    table = doc.get("train", doc)
    if not isinstance(table, dict):
        raise InputError(f"{p}: [train] must be a table")
    out = {str(k).replace("-", "_"): v for k, v in table.items() if not isinstance(v, dict) or k in ("model_kwargs", "model-kwargs")}
    if "batch" in out and "batch_size" not in out:
        out["batch_size"] = out.pop("batch")
    if "out" in out:
        out["output"] = out.pop("out")
    return out


def parse_classes(spec: Any) -> list[str] | None:
    """A count, a names.txt (one name per line), or a list of names -> class names."""
    from ..models import default_class_names

    if spec is None or spec == "":
        return None
    if isinstance(spec, (list, tuple)):
        names = [str(s) for s in spec]
    elif isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit()):
        n = int(spec)
        if n < 1:
            raise UsageError("--classes must be at least 1")
        names = list(default_class_names(n))
    else:
        p = Path(str(spec))
        if not p.is_file():
            raise UsageError(f"--classes must be a number or a names file (one name per line); {p} not found")
        names = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.startswith("#")]
        if not names:
            raise InputError(f"{p}: no class names in the file")
    if len(names) > 255:
        raise UsageError(f"{len(names)} classes: at most 255 fit in a uint8 class map (255 is ignore)")
    if len(set(names)) != len(names):
        raise UsageError("class names must be unique")
    return names


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)
