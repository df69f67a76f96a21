"""uhr train: overfitting a real tile, exact resume, data checks via the CLI, dataset layouts, losses."""
from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from uhrcli.models import build_model, list_models
from uhrcli.models.checkpoint import load_checkpoint
from uhrcli.train import TrainConfig, build_spec, discover, poly_lr, train, validate
from uhrcli.train.datasets import CropDataset
from tests.conftest import SALIENCY_STEMS, run_uhr

warnings.filterwarnings("ignore", category=UserWarning)


@pytest.fixture()
def inria_dir(austin_pair: tuple[Path, Path], tmp_path: Path) -> Path:
    """The real Inria sample in the Inria layout (images/ + gt/, 0/255 building mask)."""
    root = tmp_path / "inria"
    (root / "images").mkdir(parents=True)
    (root / "gt").mkdir()
    (root / "images" / "austin1.tif").symlink_to(austin_pair[0])
    (root / "gt" / "austin1.tif").symlink_to(austin_pair[1])
    return root


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=data, model="fcn-tiny", output=out, crop=128, batch_size=4, workers=0, log_every=1,
                optimizer="adamw", lr=0.01, photometric=False, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def test_overfit_real_tile_raises_building_iou(inria_dir: Path, tmp_path: Path) -> None:
    spec = build_spec(inria_dir)
    assert spec.layout == "inria" and spec.decoder.foreground_255
    cpu = torch.device("cpu")
    before = validate(build_model("fcn-tiny", None, num_classes=2, seed=0), spec, cpu)["val_iou_building"]
    res = train(_cfg(inria_dir, tmp_path / "run", steps=120, log_every=20))
    after = validate(build_model(None, res.last), spec, cpu)["val_iou_building"]
    # observed: before 0.142 (an untrained net marks everything building: IoU = building share), after 0.38
    assert before < 0.2
    assert after > 0.3 and after > before + 0.15
    run = tmp_path / "run"
    for name in ("last.safetensors", "last_state.pt", "metrics.csv", "curves.png", "config.json", "best.safetensors"):
        assert (run / name).exists(), name
    _, meta = load_checkpoint(run / "last.safetensors")
    assert meta["model"] == "fcn-tiny" and meta["info"]["class_names"] == ["background", "building"]
    assert meta["extra"]["step"] == 120
    # `uhr eval --weights W --data D` segments the dataset with the checkpoint and scores it in one go
    out = run_uhr("eval", "--weights", str(res.last), "--data", str(inria_dir), "--json", str(tmp_path / "e.json"), "-q")
    assert out.returncode == 0, out.stderr
    scored = json.loads((tmp_path / "e.json").read_text())["iou"]["building"]
    assert abs(scored - after) < 0.03


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("loss")]


def test_resume_continues_step_schedule_and_optimizer(inria_dir: Path, tmp_path: Path) -> None:
    kw = dict(crop=64, batch_size=2, steps=20, checkpoint_every=5)
    train(_cfg(inria_dir, tmp_path / "full", **kw))
    first = train(_cfg(inria_dir, tmp_path / "split", stop_after=10, **kw))
    assert first.step == 10 and first.stopped_early
    state = torch.load(tmp_path / "split" / "last_state.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 10 and state["optimizer"]["state"]  # AdamW moments saved
    second = train(_cfg(inria_dir, tmp_path / "split", resume=True, **kw))
    assert second.resumed_from == 10 and second.step == 20
    # the LR of every step equals the uninterrupted run's, and equals the poly formula
    lr_full = {r["step"]: float(r["lr"]) for r in _rows(tmp_path / "full" / "metrics.csv")}
    lr_split = {r["step"]: float(r["lr"]) for r in _rows(tmp_path / "split" / "metrics.csv")}
    assert sorted(lr_split, key=int) == [str(i) for i in range(1, 21)]
    assert lr_split == lr_full
    assert lr_split["11"] == pytest.approx(poly_lr(10, 20, 0.01), rel=1e-5)
    # seeded, deterministic CPU run: the resumed weights equal the uninterrupted run's exactly
    a, _ = load_checkpoint(tmp_path / "full" / "last.safetensors")
    b, _ = load_checkpoint(tmp_path / "split" / "last.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_poly_schedule_with_warmup() -> None:
    assert poly_lr(0, 100, 0.01) == pytest.approx(0.01)
    assert poly_lr(100, 100, 0.01, min_lr=1e-4) == pytest.approx(1e-4)
    assert poly_lr(50, 100, 0.01, 0.9, 1e-4) == pytest.approx((0.01 - 1e-4) * 0.5 ** 0.9 + 1e-4)
    assert poly_lr(0, 100, 0.01, warmup_steps=10, warmup_ratio=0.1) == pytest.approx(0.001)
    assert poly_lr(5, 100, 0.001, min_lr=1e-2) <= 0.001  # the floor never raises a small lr


def _pair_dataset(root: Path, masks: dict[str, np.ndarray], images: dict[str, tuple[int, int]] | None = None) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for stem, m in masks.items():
        Image.fromarray(m).save(root / "masks" / f"{stem}.png")
    for stem, (h, w) in (images or {s: m.shape for s, m in masks.items()}).items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"{stem}.png")
    return root


def _bad_case(case: str, tmp_path: Path) -> tuple[list[str], str]:
    ok = np.zeros((64, 64), np.uint8)
    ok[:20] = 1
    data = tmp_path / "data"
    if case == "size":
        _pair_dataset(data, {"a": ok, "b": ok}, {"a": (64, 64), "b": (64, 80)})
        return ["--classes", "2"], "b.png"
    if case == "labels":
        bad = ok.copy()
        bad[5, 5] = 7
        _pair_dataset(data, {"a": ok, "b": bad})
        return ["--classes", "3"], "b.png"
    if case == "empty":
        data.mkdir()
        return ["--classes", "2"], "empty"
    if case == "unmatched":
        _pair_dataset(data, {"a": ok, "b": ok}, {"a": (64, 64), "zz": (64, 64)})
        return ["--classes", "2"], "zz.png"
    if case == "rundir":
        _pair_dataset(data, {"a": ok})
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "something.txt").write_text("x")
        return ["--classes", "2"], "--resume"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["size", "labels", "empty", "unmatched", "rundir"])
def test_bad_data_one_line_error(case: str, tmp_path: Path) -> None:
    extra, needle = _bad_case(case, tmp_path)
    out = run_uhr("train", "--data", str(tmp_path / "data"), "--model", "fcn-tiny", "-o", str(tmp_path / "run"),
                  "--steps", "2", "--crop", "32", "--workers", "0", *extra)
    assert out.returncode != 0
    lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
    assert len([ln for ln in lines if ln.startswith("error:")]) == 1, out.stderr
    assert "Traceback" not in out.stderr
    err = next(ln for ln in lines if ln.startswith("error:"))
    assert needle in " ".join(lines), err
    assert not (tmp_path / "run" / "last.safetensors").exists()


def test_deepglobe_layout_and_rgb_masks(tmp_path: Path) -> None:
    root = tmp_path / "dg"
    root.mkdir()
    mask = np.zeros((64, 64, 3), np.uint8)
    mask[:32] = (0, 255, 255)  # urban
    mask[32:, :32] = (0, 0, 255)  # water
    mask[32:, 32:] = (255, 255, 255)  # barren
    for stem in ("100", "101"):
        Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(root / f"{stem}_sat.jpg")
        Image.fromarray(mask).save(root / f"{stem}_mask.png")
    layout, samples = discover(root)
    assert layout == "deepglobe" and len(samples) == 2
    spec = build_spec(root)
    assert spec.class_names[1] == "urban" and len(spec.class_names) == 7
    ds = CropDataset(spec, 64, (0, 0, 0), (1, 1, 1), seed=0)
    ds.augment = type(ds.augment)(0, 0, 0, False)
    _, y = ds[0]
    assert set(np.unique(y.numpy()).tolist()) == {1, 5, 6}
    assert (y[:32] == 1).all() and (y[32:, :32] == 5).all()
    ds.close()


def test_inria_layout_detection_and_binary_masks(tmp_path: Path) -> None:
    root = tmp_path / "inria"
    (root / "images").mkdir(parents=True)
    (root / "gt").mkdir()
    m = np.zeros((48, 48), np.uint8)
    m[10:20] = 255
    for stem in ("austin1", "chicago2"):
        Image.fromarray(np.full((48, 48, 3), 80, np.uint8)).save(root / "images" / f"{stem}.tif")
        Image.fromarray(m).save(root / "gt" / f"{stem}.tif")
    spec = build_spec(root)
    assert spec.layout == "inria" and spec.class_names == ["background", "building"]
    assert spec.decoder.foreground_255 and spec.class_pixels == {0: 2 * 38 * 48, 1: 2 * 10 * 48}
    # an explicit --ignore-index 255 keeps 255 as ignore instead
    assert not build_spec(root, ignore_index=255).decoder.foreground_255


def test_config_toml_defaults_cli_overrides(tmp_path: Path) -> None:
    ok = np.zeros((64, 64), np.uint8)
    ok[:30] = 1
    data = _pair_dataset(tmp_path / "data", {"a": ok, "b": ok})
    (tmp_path / "c.toml").write_text('[train]\nmodel = "fcn-tiny"\nclasses = 2\ncrop = 32\nsteps = 50\n'
                                     'batch-size = 2\nworkers = 0\nlr = 0.5\n')
    out = run_uhr("train", "--config", str(tmp_path / "c.toml"), "--data", str(data), "-o", str(tmp_path / "run"),
                  "--steps", "3", "--lr", "0.001", "-q")
    assert out.returncode == 0, out.stderr
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["steps"] == 3 and cfg["lr"] == 0.001 and cfg["crop"] == 32 and cfg["batch_size"] == 2
    assert cfg["resolved"]["total_steps"] == 3


@pytest.fixture()
def duts_dir(saliency_pairs: Path, tmp_path: Path) -> Path:
    """Two real photos with their masks in the DUTS layout."""
    root = tmp_path / "sod"
    (root / "DUTS-TR-Image").mkdir(parents=True)
    (root / "DUTS-TR-Mask").mkdir()
    for s in SALIENCY_STEMS:
        (root / "DUTS-TR-Image" / f"{s}.jpg").symlink_to(saliency_pairs / f"{s}.jpg")
        (root / "DUTS-TR-Mask" / f"{s}.png").symlink_to(saliency_pairs / f"{s}.png")
    return root


def test_saliency_training_with_default_loss(duts_dir: Path, tmp_path: Path) -> None:
    root = duts_dir
    res = train(_cfg(root, tmp_path / "run", steps=4, crop=64, val=root, val_tile=512))
    assert res.metric_name == "val_mae" and 0.0 <= res.last_val["val_mae"] <= 1.0
    m = build_model(None, res.last)
    assert m.info.task == "saliency" and m.info.num_classes == 1


def test_backbone_weights_unsupported_is_clear(inria_dir: Path, tmp_path: Path) -> None:
    from uhrcli.errors import UsageError

    (tmp_path / "bb.pth").write_bytes(b"x" * 32)
    with pytest.raises(UsageError, match="backbone"):
        train(_cfg(inria_dir, tmp_path / "run", steps=1, backbone_weights=tmp_path / "bb.pth"))


@pytest.mark.skipif("isdnet-r18" not in list_models(), reason="isdnet-r18 not registered")
def test_isdnet_r18_smoke_training(inria_dir: Path, tmp_path: Path) -> None:
    res = train(_cfg(inria_dir, tmp_path / "run", model="isdnet-r18", steps=2, crop=256, batch_size=2,
                     optimizer="sgd", lr=0.01, log_every=1))
    rows = _rows(tmp_path / "run" / "metrics.csv")
    assert {"loss", "loss_seg", "loss_aspp", "loss_recon", "loss_fa"} <= set(rows[0])
    assert np.isfinite(res.final_loss)
    assert build_model(None, res.last).info.name == "isdnet-r18"


def test_pgnet_training_logs_its_loss_terms(duts_dir: Path, tmp_path: Path) -> None:
    """`uhr train --model pgnet` runs PGNet's own supervision (incl. the attention-guided term) end to end."""
    out = run_uhr("train", "--data", str(duts_dir), "--model", "pgnet", "-o", str(tmp_path / "run"), "--crop", "224",
                  "--batch-size", "2", "--steps", "2", "--log-every", "1", "--workers", "0", "-q", timeout=600)
    assert out.returncode == 0, out.stderr
    rows = _rows(tmp_path / "run" / "metrics.csv")
    terms = {k for k in rows[0] if k.startswith("loss") and rows[0][k]}
    assert len(terms) >= 3 and all(np.isfinite(float(rows[-1][k])) for k in terms)
    m = build_model(None, tmp_path / "run" / "last.safetensors")
    assert m.info.name == "pgnet" and m.info.task == "saliency"


def test_backbone_weights_reach_the_isdnet_deep_branch(inria_dir: Path, tmp_path: Path) -> None:
    """`--backbone-weights` with a torchvision ResNet-18 file loads its layers into isdnet-r18's backbone."""
    from uhrcli.models import create_model

    ref = create_model("isdnet-r18").backbone.state_dict()
    g = torch.Generator().manual_seed(5)
    tv = {k: torch.randn(v.shape, generator=g) for k, v in ref.items()
          if k.startswith("layer") and v.is_floating_point() and not k.endswith(("running_mean", "running_var"))}
    tv["fc.weight"] = torch.zeros(1000, 512)
    torch.save(tv, tmp_path / "resnet18.pth")
    res = train(_cfg(inria_dir, tmp_path / "run", model="isdnet-r18", steps=1, crop=128, batch_size=2,
                     optimizer="sgd", lr=1e-12, weight_decay=0.0, backbone_weights=tmp_path / "resnet18.pth"))
    assert any("backbone weights" in n and "loaded" in n for n in res.notes)
    sd, _ = load_checkpoint(res.last)
    assert torch.allclose(sd["backbone.layer3.1.conv1.weight"].float(), tv["layer3.1.conv1.weight"], atol=1e-6)
