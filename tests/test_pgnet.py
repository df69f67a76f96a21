"""PGNet: checkpoint layout, forward contract, checkpoint loading and the official training loss.

Numerical equality with the official iCVTEAM/PGNet code (bit-exact logits at 256/512/1024, train-mode
outputs, loss terms) was checked outside the repository; these tests pin what can be checked without it:
the exact state_dict layout of the released checkpoints (from shared/reference when present), shapes and
modes of the forward, `module.`-prefixed and unzipped-folder torch checkpoints through build_model, and
the loss formulas. All tests use the full Swin-B (2-2-18-2) network.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from uhrcli.errors import CheckpointError
from uhrcli.models import build_model, create_model, list_models
from uhrcli.models.pgnet import PGNet, PGNetOutput
from uhrcli.models.pgnet_losses import affinity, attention_guided_loss, bce_iou_loss, pgnet_loss

# keys and shapes of the released checkpoints, read from the official code (copied from shared/reference)
SHAPES_JSON = Path(__file__).resolve().parent / "data" / "pgnet_state_dict_shapes.json"


@pytest.fixture(scope="module")
def model() -> PGNet:
    torch.manual_seed(0)
    m = create_model("pgnet")
    return m.eval()


def test_registered_with_info(model: PGNet) -> None:
    assert "pgnet" in list_models()
    info = model.info
    assert (info.name, info.task, info.num_classes, info.class_names) == ("pgnet", "saliency", 1, ("salient",))
    assert info.mean == (124.55, 118.90, 102.94) and info.std == (56.77, 55.97, 57.50)
    assert info.size_multiple == 32 and info.two_scale
    assert info.extra == {"transformer_size": 224, "default_size": 1024}


def test_state_dict_matches_released_layout(model: PGNet) -> None:
    sd = model.state_dict()
    # facts that hold without the reference file
    assert len(sd) == 689
    assert tuple(sd["swin.layers.2.blocks.17.atten_mask"].shape) == (4, 49, 49)
    assert tuple(sd["swin.norm.weight"].shape) == (1024,)
    assert tuple(sd["decoder.GF.conv.weight"].shape) == (8, 8, 3, 3)
    assert "swin.layers.2.downsample.reduction.weight" not in sd  # the last built stage has no merge
    assert sum(v.numel() for k, v in sd.items() if not k.endswith("num_batches_tracked")) / 1e6 == pytest.approx(73.1, abs=0.1)
    ref = json.loads(SHAPES_JSON.read_text())
    assert list(sd) == list(ref)  # same keys, same order
    bad = {k: (list(sd[k].shape), ref[k]) for k in ref if list(sd[k].shape) != ref[k]}
    assert not bad


def test_eval_forward_shapes(model: PGNet) -> None:
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        y = model(x)
        aux = model(x, return_aux=True)
        sized = model(x, out_size=(300, 200))
    assert isinstance(y, torch.Tensor) and y.shape == (1, 1, 256, 256)
    assert isinstance(aux, PGNetOutput)
    assert aux.pred.shape == (1, 1, 256, 256) and aux.wr.shape == aux.ws.shape == (1, 1, 28, 28)
    assert aux.attn.shape == (1, 1, 784, 784)
    assert torch.equal(aux.pred, y)  # skipping the side heads in eval changes nothing
    assert sized.shape == (1, 1, 300, 200)
    assert torch.isfinite(y).all()


def test_train_mode_returns_official_outputs() -> None:
    torch.manual_seed(0)
    m = create_model("pgnet", swin_depths=(2, 2, 2, 2)).train()
    out = m(torch.randn(2, 3, 224, 288))
    assert isinstance(out, tuple) and len(out) == 4
    pred, wr, ws, attn = out
    assert pred.shape == (2, 1, 224, 288) and wr.shape == ws.shape == (2, 1, 28, 28) and attn.shape == (2, 1, 784, 784)
    assert isinstance(m(torch.randn(1, 3, 64, 64), return_aux=False), torch.Tensor)


def test_module_prefixed_torch_checkpoint(model: PGNet, tmp_path: Path) -> None:
    """Released checkpoints are DDP state_dicts: every key starts with `module.`."""
    path = tmp_path / "model-32"
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, path)
    loaded = build_model("pgnet", path)
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_unzipped_checkpoint_folder_and_mismatch(tmp_path: Path) -> None:
    """Drive serves the release unzipped (data.pkl + data/); a wrong architecture is refused by name."""
    torch.manual_seed(1)
    small = create_model("pgnet", swin_depths=(2, 2, 2, 2)).eval()
    path = tmp_path / "ck.pth"
    torch.save({"module." + k: v for k, v in small.state_dict().items()}, path)
    folder = tmp_path / "unzipped"
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            rel = name.split("/", 1)[1]
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(zf.read(name))
    loaded = build_model("pgnet", folder, swin_depths=(2, 2, 2, 2))
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(loaded(x), small(x))
    with pytest.raises(CheckpointError, match="missing key"):
        build_model("pgnet", path)  # full Swin-B expects 16 more blocks in stage 3


def test_bad_constructor_args() -> None:
    with pytest.raises(ValueError):
        create_model("pgnet", num_classes=3)
    with pytest.raises(ValueError):
        create_model("pgnet", task="segment")


def test_loss_formulas() -> None:
    torch.manual_seed(0)
    mask = (torch.rand(2, 1, 32, 32) > 0.5).float()
    # bce_iou: confident correct logits beat confident wrong ones, and the IoU term is per image
    good, bad = (mask * 2 - 1) * 8, (1 - 2 * mask) * 8
    assert bce_iou_loss(good, mask) < 0.05 < 1.0 < bce_iou_loss(bad, mask)
    # affinity: outer product of the map resized to the grid
    m = torch.rand(1, 1, 4, 4)
    g = affinity(m, grid=4)
    assert g.shape == (1, 1, 16, 16)
    assert torch.allclose(g[0, 0], torch.outer(m.flatten(), m.flatten()))
    # AGL against a direct evaluation of the documented formula
    attn = torch.randn(2, 1, 16, 16)
    wr, ws = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    mk = F.interpolate(mask, size=(4, 4), mode="bilinear", align_corners=False).reshape(2, 16)
    pr, ps = torch.sigmoid(wr).reshape(2, 16), torch.sigmoid(ws).reshape(2, 16)
    G = mk[:, :, None] * mk[:, None, :]
    w = 1 + 0.5 * ((G - pr[:, :, None] * pr[:, None, :]).abs() + (G - ps[:, :, None] * ps[:, None, :]).abs())
    z = attn[:, 0]
    expected = (w * (torch.clamp(z, min=0) - z * G + torch.log1p(torch.exp(-z.abs())))).mean()
    assert torch.allclose(attention_guided_loss(attn, mask, wr, ws), expected, atol=1e-6)
    # totals and weights; side maps are detached inside AGL
    pred = torch.randn(2, 1, 32, 32)
    wr.requires_grad_(True)
    out = pgnet_loss((pred, wr, ws, attn), mask[:, 0])
    assert set(out) == {"loss", "loss_pred", "loss_side", "loss_agl"}
    side = 0.125 * (bce_iou_loss(wr, mask) + bce_iou_loss(ws, mask))
    assert torch.allclose(out["loss_side"], side) and torch.allclose(out["loss"], out["loss_pred"] + out["loss_side"] + out["loss_agl"])
    assert out["loss_side"].requires_grad and not out["loss_agl"].requires_grad  # wr/ws are detached inside AGL
    with pytest.raises(ValueError, match="training outputs"):
        pgnet_loss(pred, mask)


def test_sgd_steps_reduce_loss_on_real_image(saliency_pairs: Path) -> None:
    """Full Swin-B + ResNet-18 at 256x256 (about 1.3 s a step on 2 cores); drop path off for a fixed result."""
    from PIL import Image

    stem = saliency_pairs / "austin_a"
    torch.manual_seed(0)
    m = create_model("pgnet", drop_path_rate=0.0).train()
    img = np.asarray(Image.open(stem.with_suffix(".jpg")).convert("RGB"), dtype=np.float32)
    msk = np.asarray(Image.open(stem.with_suffix(".png")).convert("L"), dtype=np.float32) / 255.0
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    x = (x - torch.tensor(m.info.mean).view(1, 3, 1, 1)) / torch.tensor(m.info.std).view(1, 3, 1, 1)
    x = F.interpolate(x, size=(256, 256), mode="bilinear", align_corners=False)
    y = F.interpolate(torch.from_numpy(msk)[None, None], size=(256, 256), mode="bilinear", align_corners=False)
    opt = torch.optim.SGD(m.parameters(), lr=3e-4, momentum=0.9, nesterov=True, weight_decay=5e-4)
    losses = []
    for _ in range(5):
        out = pgnet_loss(m(x), y)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    with torch.no_grad():
        final = pgnet_loss(m(x), y)
    assert all(np.isfinite(losses))
    assert final["loss"].item() < 0.8 * losses[0], (losses, final["loss"].item())
    assert final["loss_pred"].item() < losses[0]


def test_backbone_weights_fill_each_encoder(tmp_path):
    """ImageNet files in the upstream layouts: Swin ('model' wrapper, head, masks) and torchvision ResNet-18."""
    from uhrcli.errors import CheckpointError

    m = create_model("pgnet", swin_depths=(2, 2, 2, 2))
    own = m.state_dict()
    g = torch.Generator().manual_seed(0)
    swin = {k[len("swin."):]: torch.randn(v.shape, generator=g) for k, v in own.items()
            if k.startswith("swin.") and v.is_floating_point() and "atten_mask" not in k}
    swin["head.weight"] = torch.zeros(1000, 1024)
    swin["layers.0.blocks.1.attn_mask"] = torch.zeros(64, 49, 49)
    torch.save({"model": swin}, tmp_path / "swin_base.pth")
    res = {k[len("resnet."):]: torch.randn(v.shape, generator=g) for k, v in own.items()
           if k.startswith("resnet.") and v.is_floating_point()}
    res["fc.weight"] = torch.zeros(1000, 512)
    torch.save(res, tmp_path / "resnet18.pth")
    rep_s = m.load_backbone_weights(str(tmp_path / "swin_base.pth"))
    rep_r = m.load_backbone_weights(str(tmp_path / "resnet18.pth"))
    after = m.state_dict()
    assert torch.equal(after["swin.layers.1.blocks.0.attn.qkv.weight"], swin["layers.1.blocks.0.attn.qkv.weight"])
    assert torch.equal(after["resnet.layer4.1.conv2.weight"], res["layer4.1.conv2.weight"])
    assert torch.equal(after["swin.layers.0.blocks.1.atten_mask"], own["swin.layers.0.blocks.1.atten_mask"])
    assert "head.weight" in rep_s["skipped"] and "fc.weight" in rep_r["skipped"] and not rep_r["missing"]
    bad = {"conv1.weight": torch.zeros(64, 3, 7, 7), "layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)}
    torch.save(bad, tmp_path / "resnet50.pth")
    with pytest.raises(CheckpointError, match="shape"):
        m.load_backbone_weights(str(tmp_path / "resnet50.pth"))


def test_uhr_saliency_equals_the_official_test_script(model: PGNet, tmp_path: Path) -> None:
    """End to end against PGNet's src/test.py: cv2 reads BGR -> RGB float, normalise, cv2.resize to 1024
    (INTER_LINEAR), net(image, shape) upsamples the 1/4 logits once, straight to the image size, sigmoid,
    x255, round. `uhr saliency` must write the same PNG (a photo that is neither square nor 1024)."""
    cv2 = pytest.importorskip("cv2")  # installed with the saliency-metrics extra (pysodmetrics)
    import rasterio
    from PIL import Image

    from uhrcli.saliency import run_saliency

    with rasterio.open(Path(__file__).resolve().parents[1] / "examples" / "data" / "austin_inria_crop.tif") as ds:
        rgb = ds.read()[:, :700, :].transpose(1, 2, 0)  # 700 x 1000
    photo = tmp_path / "photo.png"
    Image.fromarray(np.ascontiguousarray(rgb)).save(photo)
    # the official script, step by step
    image = cv2.imread(str(photo)).astype(np.float32)[:, :, ::-1].copy()
    shape = image.shape[:2]
    image = (image - np.array([[[124.55, 118.90, 102.94]]])) / np.array([[[56.77, 55.97, 57.50]]])
    image = cv2.resize(image, dsize=(1024, 1024), interpolation=cv2.INTER_LINEAR)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        p = model(x, out_size=shape)
        out = F.interpolate(p, size=shape, mode="bilinear")
    official = np.round(torch.sigmoid(out[0, 0]).numpy() * 255).astype(np.uint8)
    assert official.std() > 1, "a map with some structure, for the comparison to mean anything"
    rep = run_saliency(photo, tmp_path / "out", net=model, size=1024)
    ours = np.asarray(Image.open(tmp_path / "out" / "photo.png"))
    assert rep.ok and ours.shape == official.shape
    diff = np.abs(ours.astype(int) - official)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999
    # resizing to 1024 and then again to the image size (what uhr did before) is measurably different
    with torch.no_grad():
        twice = F.interpolate(model(x), size=shape, mode="bilinear")
    twice8 = np.round(torch.sigmoid(twice[0, 0]).numpy() * 255).astype(int)
    assert np.abs(twice8 - official).max() >= 1
