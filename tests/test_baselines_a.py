"""The real-time baselines of ISDNet's Table 3: bisenetv1-r18, bisenetv2, icnet (mmseg layouts).

Parameter counts are checked against the exact count derived, layer by layer, from the official
mmsegmentation configs (configs/_base_/models/bisenetv1_r18-d32.py, bisenetv2.py, icnet_r50-d8.py with
19 Cityscapes classes, training heads included): the formulas below are written from the configs, not
from our modules. The ResNet parts are also tied to torchvision's published ResNet-18 count
(11,689,512 with its 513,000-value classifier). Neither paper publishes a count for these layouts.
"""
from __future__ import annotations

from pathlib import Path


import numpy as np
import pytest
import tifffile
import torch

from uhrcli.models import build_model, create_model
from uhrcli.models.flops import count_params
from uhrcli.segment import segment

from .test_exact import mosaic, random_weights, whole_forward, zarr_out

NAMES = ["bisenetv1-r18", "bisenetv2", "icnet"]
K = 19  # Cityscapes


# -- parameter counts from the official configs ------------------------------------------------------
def conv(ci: int, co: int, k: int, groups: int = 1, bias: bool = False) -> int:
    return co * (ci // groups) * k * k + (co if bias else 0)


def cbr(ci: int, co: int, k: int, groups: int = 1) -> int:
    """mmcv ConvModule with BN: conv without bias + BN weight and bias."""
    return conv(ci, co, k, groups) + 2 * co


def fcn(ci: int, ch: int, n: int = 1, k: int = K) -> int:
    """mmseg FCNHead(concat_input=False): n 3x3 ConvModules + the 1x1 conv_seg with bias."""
    return cbr(ci, ch, 3) + (n - 1) * cbr(ch, ch, 3) + conv(ch, k, 1, bias=True)


def resnet_stages(depth: int) -> int:
    blocks = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}[depth]
    total, inp = 0, 64
    for i, n in enumerate(blocks):
        p = 64 * 2 ** i
        for b in range(n):
            if depth == 18:
                total += cbr(inp, p, 3) + cbr(p, p, 3)
                out = p
            else:
                total += cbr(inp, p, 1) + cbr(p, p, 3) + cbr(p, 4 * p, 1)
                out = 4 * p
            if b == 0 and (i > 0 or inp != out):
                total += cbr(inp, out, 1)  # downsample
            inp = out
    return total


def bisenetv1_official() -> int:
    resnet18 = cbr(3, 64, 7) + resnet_stages(18)  # mmseg 'ResNet' (7x7 stem), no fc
    assert resnet18 == 11_689_512 - 513_000  # torchvision's published ResNet-18 minus its classifier
    context = (resnet18 + cbr(256, 128, 3) + cbr(128, 128, 1) + cbr(512, 128, 3) + cbr(128, 128, 1)
               + 2 * cbr(128, 128, 3) + cbr(512, 128, 1))
    spatial = cbr(3, 64, 7) + 2 * cbr(64, 64, 3) + cbr(64, 128, 1)
    ffm = cbr(256, 256, 1) + cbr(256, 256, 1)
    return context + spatial + ffm + fcn(256, 256) + 2 * fcn(128, 64)


def ge(ci: int, co: int, stride: int) -> int:
    mid = 6 * ci
    n = cbr(ci, ci, 3) + cbr(mid, co, 1)
    if stride == 1:
        return n + cbr(ci, mid, 3, groups=ci)
    return n + cbr(ci, mid, 3, groups=ci) + cbr(mid, mid, 3, groups=mid) + cbr(ci, ci, 3, groups=ci) + cbr(ci, co, 1)


def bisenetv2_official() -> int:
    detail = cbr(3, 64, 3) + cbr(64, 64, 3) + 3 * cbr(64, 64, 3) + cbr(64, 128, 3) + 2 * cbr(128, 128, 3)
    stem = cbr(3, 16, 3) + cbr(16, 8, 1) + cbr(8, 16, 3) + cbr(32, 16, 3)
    semantic = (stem + ge(16, 32, 2) + ge(32, 32, 1) + ge(32, 64, 2) + ge(64, 64, 1) + ge(64, 128, 2)
                + 3 * ge(128, 128, 1))
    ce = 2 * 128 + cbr(128, 128, 1) + cbr(128, 128, 3)
    dws_no_pw_norm = cbr(128, 128, 3, groups=128) + conv(128, 128, 1, bias=True)
    bga = 2 * dws_no_pw_norm + 3 * cbr(128, 128, 3)
    heads = fcn(128, 1024) + fcn(16, 16, 2) + fcn(32, 64, 2) + fcn(64, 256, 2) + fcn(128, 1024, 2)
    return detail + semantic + ce + bga + heads


def icnet_official() -> int:
    resnet50_v1c = cbr(3, 32, 3) + cbr(32, 32, 3) + cbr(32, 64, 3) + resnet_stages(50)
    psp = 4 * cbr(2048, 512, 1) + cbr(2048 + 4 * 512, 512, 3)
    subs = cbr(3, 32, 3) + cbr(32, 32, 3) + cbr(32, 64, 3) + cbr(512, 256, 1) + cbr(512, 256, 1)
    neck = cbr(256, 128, 3) + cbr(256, 128, 1) + cbr(128, 128, 3) + cbr(64, 128, 1)
    return resnet50_v1c + psp + subs + neck + fcn(128, 128) + 2 * fcn(128, 128)


@pytest.mark.parametrize("name,official", [("bisenetv1-r18", bisenetv1_official), ("bisenetv2", bisenetv2_official),
                                           ("icnet", icnet_official)])
def test_params_equal_the_official_config(name, official):
    m = create_model(name, num_classes=K)
    assert count_params(m) == official()
    assert m.info.extra["image_wide_ops"] and m.info.name == name


# -- official key layout: an mmseg checkpoint loads as it is ----------------------------------------
MMSEG_KEYS = {  # key -> shape, read off mmseg's modules (19 classes)
    "bisenetv1-r18": {
        "backbone.context_path.backbone.conv1.weight": (64, 3, 7, 7),
        "backbone.context_path.backbone.layer4.1.conv2.weight": (512, 512, 3, 3),
        "backbone.context_path.arm32.atten_conv_layer.1.bn.running_var": (128,),
        "backbone.context_path.gap_conv.1.conv.weight": (128, 512, 1, 1),
        "backbone.spatial_path.layer1.conv.weight": (64, 3, 7, 7),
        "backbone.ffm.conv_atten.0.conv.weight": (256, 256, 1, 1),
        "decode_head.convs.0.conv.weight": (256, 256, 3, 3),
        "decode_head.conv_seg.bias": (K,),
        "auxiliary_head.1.convs.0.conv.weight": (64, 128, 3, 3),
    },
    "bisenetv2": {
        "backbone.detail.detail_branch.2.2.bn.weight": (128,),
        "backbone.semantic.stage1.convs.1.conv.weight": (16, 8, 3, 3),
        "backbone.semantic.stage2.0.shortcut.0.pointwise_conv.bn.bias": (32,),
        "backbone.semantic.stage4.3.dwconv.0.conv.weight": (768, 1, 3, 3),
        "backbone.semantic.stage4_CEBlock.gap.1.running_mean": (128,),
        "backbone.bga.detail_dwconv.0.pointwise_conv.conv.bias": (128,),
        "backbone.bga.detail_down.0.conv.weight": (128, 128, 3, 3),
        "decode_head.convs.0.conv.weight": (1024, 128, 3, 3),
        "auxiliary_head.3.convs.1.conv.weight": (1024, 1024, 3, 3),
    },
    "icnet": {
        "backbone.backbone.stem.0.weight": (32, 3, 3, 3),
        "backbone.backbone.layer4.2.conv3.weight": (2048, 512, 1, 1),
        "backbone.psp_modules.3.1.conv.weight": (512, 2048, 1, 1),
        "backbone.psp_bottleneck.conv.weight": (512, 4096, 3, 3),
        "backbone.conv_sub1.2.conv.weight": (64, 32, 3, 3),
        "neck.cff_24.conv_low.conv.weight": (128, 256, 3, 3),
        "neck.cff_12.conv_high.bn.weight": (128,),
        "decode_head.conv_seg.weight": (K, 128, 1, 1),
        "auxiliary_head.0.convs.0.conv.weight": (128, 128, 3, 3),
    },
}


@pytest.mark.parametrize("name", NAMES)
def test_mmseg_checkpoint_loads(name, tmp_path):
    """A state dict in mmseg's layout ({'meta', 'state_dict'}, as mmseg saves it) loads strictly and
    reproduces the network it came from."""
    torch.manual_seed(1)
    src = create_model(name, num_classes=K).eval()
    state = src.state_dict()
    for k, shape in MMSEG_KEYS[name].items():
        assert tuple(state[k].shape) == shape, k
    ckpt = tmp_path / "official.pth"
    torch.save({"meta": {"mmseg_version": "1.2.2"}, "state_dict": state}, ckpt)
    loaded = build_model(name, ckpt, num_classes=K)
    x = torch.randn(1, 3, 96, 80)
    with torch.no_grad():
        assert torch.equal(loaded(x), src(x))
    # `uhr weights convert`: the class count read from decode_head.conv_seg, every key mapped
    from uhrcli.models.convert import convert_file

    report = convert_file(ckpt, tmp_path / "uhr.safetensors", model_name=name)
    assert report["mapped"] == len(state) and not report["unmapped"] and not report["missing"]
    with torch.no_grad():
        assert torch.equal(build_model(None, tmp_path / "uhr.safetensors")(x), src(x))


# -- forward at two sizes, training heads --------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_forward_two_sizes_and_losses(name):
    m = create_model(name, num_classes=4).eval()
    with torch.no_grad():
        for h, w in ((96, 96), (100, 75)):  # the second is no multiple of 32
            x = torch.randn(1, 3, h, w)
            low = m.logits_low(x)
            assert low.shape == (1, 4, -(-h // 8), -(-w // 8))
            out = m(x)
            assert out.shape == (1, 4, h, w) and torch.isfinite(out).all()
    m.train()
    y = torch.randint(0, 4, (1, 64, 64))
    losses = m.losses(torch.randn(1, 3, 64, 64), y)  # batch 1: pooled BNs fall back to running stats
    losses["loss"].backward()
    terms = {k: v.item() for k, v in losses.items() if k != "loss"}
    assert len(terms) == {"bisenetv1-r18": 3, "bisenetv2": 5, "icnet": 3}[name]
    assert abs(sum(terms.values()) - losses["loss"].item()) < 1e-4
    if name == "icnet":  # cascade label guidance at 0.4 of a CE on the same 4 classes
        assert terms["loss_aux24"] < 0.4 * np.log(4) * 3
    assert all(p.grad is not None for n, p in m.named_parameters() if n.startswith("auxiliary_head"))


@pytest.mark.parametrize("name", NAMES)
def test_uhr_train_steps(name, tmp_path, austin_pair):
    from uhrcli.train import TrainConfig, train

    root = tmp_path / "inria"
    (root / "images").mkdir(parents=True)
    (root / "gt").mkdir()
    (root / "images" / "austin1.tif").symlink_to(austin_pair[0])
    (root / "gt" / "austin1.tif").symlink_to(austin_pair[1])
    res = train(TrainConfig(data=root, model=name, output=tmp_path / "run", crop=64, batch_size=2, workers=0,
                            steps=2, log_every=1, optimizer="sgd", lr=0.01, photometric=False, seed=0))
    assert np.isfinite(res.final_loss)
    assert build_model(None, res.last).info.name == name


# -- uhr segment equals the whole-image forward --------------------------------------------------------
@pytest.fixture(scope="module")
def weights(tmp_path_factory, inria_rgb):
    d = tmp_path_factory.mktemp("baselines_a")
    sample = mosaic(inria_rgb, 256, 256)
    return {n: random_weights(n, d / f"{n}.safetensors", sample) for n in NAMES}


def _raster(tmp_path, inria_rgb) -> Path:
    src = tmp_path / "img.tif"
    tifffile.imwrite(src, mosaic(inria_rgb, 250, 180))  # no multiple of 32
    return src


@pytest.mark.parametrize("name", NAMES)
def test_segment_equals_whole_image_forward(name, tmp_path, inria_rgb, weights):
    src = _raster(tmp_path, inria_rgb)
    ref_c, ref_p = whole_forward(weights[name], src)
    shares = np.bincount(ref_c.ravel(), minlength=3) / ref_c.size
    assert (shares > 0.01).sum() >= 2, shares
    out = segment(str(src), tmp_path / "a.zarr", weights=str(weights[name]), tile=128, probs=True)[0]
    c, p = zarr_out(out.output)
    assert (c == ref_c).mean() >= 0.9999 and (np.abs(p - ref_p).max(0) <= 1).mean() >= 0.999


def test_segment_past_the_one_pass_budget(tmp_path, inria_rgb, weights, monkeypatch):
    """Past the one-pass budget every view tile reads the whole raster: still the whole-image forward."""
    from uhrcli.inference import deep

    src = _raster(tmp_path, inria_rgb)
    ref_c, _ = whole_forward(weights["bisenetv2"], src)
    monkeypatch.setattr(deep, "DEEP_WHOLE_MAX", 64 * 64)
    monkeypatch.setattr(deep, "DEEP_TILE", 96)
    out = segment(str(src), tmp_path / "b.zarr", weights=str(weights["bisenetv2"]), tile=128, probs=True)[0]
    c, _ = zarr_out(out.output)
    assert (c == ref_c).mean() >= 0.9999


def test_kind_is_deep():
    from uhrcli.inference import kind_of

    assert all(kind_of(create_model(n)) == "deep" for n in ("bisenetv1-r18", "bisenetv2"))
