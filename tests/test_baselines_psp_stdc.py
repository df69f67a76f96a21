"""PSPNet (r18/r50, 1, 1/2, 1/4 scale), STDC1/2-Seg and isdnet-psp: the ISDNet paper's Table 3/4 baselines.

Parameter counts are checked against layer-by-layer sums written from the official mmseg configs (not from
our modules): configs/_base_/models/pspnet_r50-d8.py with configs/pspnet/pspnet_r18-d8_512x1024_80k_cityscapes.py
(decode 512 -> 128, aux 256 -> 64), configs/_base_/models/stdc.py (STDCNet1/STDCNet2, last_in_channels
(1024, 512), out_channels 128, FFM 384 -> 256, FCN 256 -> 256, two FCN aux 128 -> 64, STDCHead 256 -> 64 -> 2),
and ISDNet's configs/pspnet/pspnet_r18-d8_512x1024_80k_cityscapes_refine.py for isdnet-psp. The STDC backbones are
also checked against the paper's ImageNet figures: STDCNet813 and STDCNet1446 are named after their 813M and
1446M FLOPs (multiply-adds) at 224x224 with the classifier (conv_last 1x1 1024, fc 1024, linear 1000).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from uhrcli.inference import kind_of
from uhrcli.models import build_model, create_model, list_models
from uhrcli.models.flops import count_flops, count_params
from uhrcli.segment import segment

from .test_exact import mosaic, random_weights, whole_forward, zarr_out

warnings.filterwarnings("ignore", category=UserWarning)
K = 19  # Cityscapes, as the official configs


def conv(k: int, cin: int, cout: int, groups: int = 1, bias: bool = False) -> int:
    return k * k * (cin // groups) * cout + (cout if bias else 0)


def cbr(k: int, cin: int, cout: int, groups: int = 1) -> int:
    """ConvModule: bias-free conv + BN (weight, bias)."""
    return conv(k, cin, cout, groups) + 2 * cout


def resnet_v1c(depth: int) -> int:
    n = cbr(3, 3, 32) + cbr(3, 32, 32) + cbr(3, 32, 64)
    blocks, exp = ({18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}[depth], 1 if depth == 18 else 4)
    inp = 64
    for i, nb in enumerate(blocks):
        planes = 64 * 2 ** i
        for b in range(nb):
            if exp == 1:
                n += cbr(3, inp, planes) + cbr(3, planes, planes)
            else:
                n += cbr(1, inp, planes) + cbr(3, planes, planes) + cbr(1, planes, planes * 4)
            if b == 0 and inp != planes * exp or (b == 0 and i == 1):
                n += cbr(1, inp, planes * exp)
            inp = planes * exp
    return n


def pspnet_expected(depth: int) -> int:
    c3, c4, ch = (256, 512, 128) if depth == 18 else (1024, 2048, 512)
    head = 4 * cbr(1, c4, ch) + cbr(3, c4 + 4 * ch, ch) + conv(1, ch, K, bias=True)
    aux = cbr(3, c3, c3 // 4) + conv(1, c3 // 4, K, bias=True)
    return resnet_v1c(depth) + head + aux


def stdc_module(cin: int, cout: int, stride: int) -> int:
    n = cbr(1, cin, cout // 2) + cbr(3, cout // 2, cout // 4) + cbr(3, cout // 4, cout // 8) + cbr(3, cout // 8, cout // 8)
    return n + (cbr(3, cout // 2, cout // 2, groups=cout // 2) if stride == 2 else 0)


def stdc_backbone(stdc: int) -> int:
    arch = {1: ((2, 1), (2, 1), (2, 1)), 2: ((2, 1, 1, 1), (2, 1, 1, 1, 1), (2, 1, 1))}[stdc]
    ch = (32, 64, 256, 512, 1024)
    n = cbr(3, 3, 32) + cbr(3, 32, 64)
    for i, strides in enumerate(arch):
        n += sum(stdc_module(ch[i + 1] if j == 0 else ch[i + 2], ch[i + 2], s) for j, s in enumerate(strides))
    return n


def stdcseg_expected(stdc: int) -> int:
    ctx = (cbr(3, 1024, 128) + cbr(1, 128, 128) + cbr(3, 512, 128) + cbr(1, 128, 128)  # two ARMs
           + 2 * cbr(3, 128, 128) + cbr(1, 1024, 128)  # convs after upsampling, conv_avg
           + cbr(1, 384, 256) + conv(1, 256, 64) + conv(1, 64, 256))  # FFM
    heads = (cbr(3, 256, 256) + conv(1, 256, K, bias=True)  # decode FCN
             + 2 * (cbr(3, 128, 64) + conv(1, 64, K, bias=True))  # two context aux FCNs
             + cbr(3, 256, 64) + conv(1, 64, 2, bias=True) + 3)  # detail head (+ its frozen 3-value fusion kernel)
    return stdc_backbone(stdc) + ctx + heads


EXPECTED = {
    "pspnet-r18": pspnet_expected(18), "pspnet-r18-down2": pspnet_expected(18),
    "pspnet-r18-down4": pspnet_expected(18),
    "pspnet-r50": pspnet_expected(50), "pspnet-r50-down2": pspnet_expected(50),
    "pspnet-r50-down4": pspnet_expected(50),
    "stdc1-seg": stdcseg_expected(1), "stdc2-seg": stdcseg_expected(2),
}


def test_the_arithmetic_itself():
    """Guards on the layer sums: a ResNet-18 body is torchvision's 11.69 M less its 0.51 M fc (11.18 M; the V1c
    stem's three 3x3 convs add 19 k), and the PSPNet-R50 total is pinned so a slip in the sums shows."""
    assert abs(resnet_v1c(18) / 11.18e6 - 1) < 0.01
    assert pspnet_expected(50) == 48_975_494 and pspnet_expected(18) == 12_790_086


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_registered_with_the_official_parameter_count(name):
    assert name in list_models()
    m = create_model(name, num_classes=K)
    assert count_params(m) == EXPECTED[name]
    assert kind_of(m) == "deep"  # image-wide ops: run whole, tiles resampled from the logits
    assert m.info.extra["image_wide_ops"]


@pytest.mark.parametrize("stdc,macs", [("STDCNet1", 813e6), ("STDCNet2", 1446e6)])
def test_stdc_backbone_matches_the_papers_imagenet_flops(stdc, macs):
    from uhrcli.models.stdcseg import STDCNet

    class Classifier(torch.nn.Module):  # the paper's ImageNet head on our backbone: conv_last, gap, fc, linear
        def __init__(self):
            super().__init__()
            self.body = STDCNet(stdc)
            self.conv_last = torch.nn.Conv2d(1024, 1024, 1, bias=False)
            self.fc = torch.nn.Linear(1024, 1024, bias=False)
            self.linear = torch.nn.Linear(1024, 1000, bias=False)

        def forward(self, x):
            y = self.conv_last(self.body(x)[-1]).mean(dim=(2, 3))
            return self.linear(self.fc(y))

    got = count_flops(Classifier(), (1, 3, 224, 224)) / 2
    assert abs(got / macs - 1) < 0.01, got  # BN, pooling and activations are not counted: a bit under


def test_isdnet_psp_is_the_official_psp_isd_config():
    a, b = create_model("isdnet-psp", num_classes=K), create_model("isdnet-r18-psp", num_classes=K)
    assert a.info.name == "isdnet-psp" and a.info.two_scale and a.down_ratio == 4
    assert a.decode_head.pool_scales == (1, 2, 3, 6) and a.decode_head.channels == 128
    assert a.auxiliary_head.convs[0].conv.out_channels == 64
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    isd = count_params(a) - pspnet_expected(18)  # the shallow path, fusions and their heads on top
    assert 0 < isd < 4.5e6, isd


@pytest.mark.parametrize("name", ["pspnet-r18", "pspnet-r18-down2", "pspnet-r18-down4", "pspnet-r50-down4",
                                  "stdc1-seg", "stdc2-seg", "isdnet-psp"])
def test_forward_at_two_sizes(name):
    m = create_model(name, num_classes=3).eval()
    for h, w in ((128, 192), (100, 147)):  # the second is no multiple of 32
        with torch.inference_mode():
            y = m(torch.randn(1, 3, h, w))
        assert y.shape == (1, 3, h, w) and torch.isfinite(y).all()


def test_pspnet_down_ratio_is_the_shrunk_input():
    full, down = create_model("pspnet-r18", num_classes=3).eval(), create_model("pspnet-r18-down2", num_classes=3)
    down.load_state_dict(full.state_dict())
    x = torch.randn(1, 3, 128, 160)
    with torch.inference_mode():
        half = full.deep_logits(full.deep_head(full.deep_backbone(x[..., ::2, ::2])))  # nearest 1/2 = every 2nd
        ref = torch.nn.functional.interpolate(half, size=(128, 160), mode="bilinear")
        assert torch.allclose(down.eval()(x), ref, atol=1e-5)


@pytest.mark.parametrize("name,keys", [
    ("stdc1-seg", {"loss_seg", "loss_aux8", "loss_aux16", "loss_detail_bce", "loss_detail_dice"}),
    ("pspnet-r18-down2", {"loss_seg", "loss_fcn_aux"}),
])
def test_losses_backpropagate_to_every_head(name, keys):
    m = create_model(name, num_classes=3).train()
    target = torch.randint(0, 3, (2, 96, 128))
    target[:, :8] = 255
    out = m.losses(torch.randn(2, 3, 96, 128), target)
    assert keys | {"loss"} == set(out) and all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    heads = [m.decode_head] + list(m.auxiliary_head if isinstance(m.auxiliary_head, torch.nn.ModuleList)
                                   else [m.auxiliary_head])
    for h in heads:
        assert h.conv_seg.weight.grad is not None and h.conv_seg.weight.grad.abs().sum() > 0


def test_stdc_boundary_targets():
    from uhrcli.models.stdcseg import STDCHead

    lab = torch.zeros(1, 32, 32, dtype=torch.long)
    lab[:, 8:24, 8:24] = 1
    edges = STDCHead().boundary_targets(lab)
    assert edges[0, 16, 16] == 0 and edges[0, 0, 0] == 0  # inside and far outside
    assert edges[0, 8, 16] == 1 and edges[0, 16, 8] == 1  # on the square's edge
    assert 0 < edges.float().mean() < 0.3


@pytest.mark.parametrize("name", ["pspnet-r18-down2", "stdc1-seg"])
def test_uhr_train_steps(name, austin_pair, tmp_path: Path):
    from uhrcli.train import TrainConfig, train

    root = tmp_path / "inria"
    (root / "images").mkdir(parents=True)
    (root / "gt").mkdir()
    (root / "images" / "austin1.tif").symlink_to(austin_pair[0])
    (root / "gt" / "austin1.tif").symlink_to(austin_pair[1])
    res = train(TrainConfig(data=root, model=name, output=tmp_path / "run", crop=128, batch_size=2, steps=2,
                            workers=0, log_every=1, optimizer="sgd", lr=0.01, photometric=False, seed=0))
    assert np.isfinite(res.final_loss)
    assert build_model(None, res.last).info.name == name


@pytest.fixture(scope="module")
def weights(tmp_path_factory, inria_rgb):
    d = tmp_path_factory.mktemp("baselines")
    sample = mosaic(inria_rgb, 384, 384)
    return {n: random_weights(n, d / f"{n}.safetensors", sample) for n in ("pspnet-r18-down2", "stdc1-seg", "isdnet-psp")}


@pytest.mark.parametrize("name", ["pspnet-r18-down2", "stdc1-seg", "isdnet-psp"])
def test_segment_equals_whole_image_forward(tmp_path, inria_rgb, weights, name, monkeypatch):
    """`uhr segment` over 128-px tiles equals the whole-image forward; for PSPNet and isdnet-psp also with a
    tiled deep pass (backbone tiles with a halo, the PSP head once over the whole c4 map; isdnet-psp only
    so, through the bi-path inferer with its shallow path tiled)."""
    from uhrcli.inference import deep

    src = tmp_path / "img.tif"
    tifffile.imwrite(src, mosaic(inria_rgb, 333, 410), tile=(128, 128))
    ref_c, ref_p = whole_forward(weights[name], src)
    shares = np.bincount(ref_c.ravel(), minlength=3) / ref_c.size
    assert (shares > 0.01).sum() >= 2, shares
    for whole_max in {"stdc1-seg": (None,), "isdnet-psp": (96 * 96,)}.get(name, (None, 96 * 96)):
        if whole_max:
            monkeypatch.setattr(deep, "DEEP_WHOLE_MAX", whole_max)
            monkeypatch.setattr(deep, "DEEP_TILE", 96)
        out = segment(str(src), tmp_path / f"o{whole_max}.zarr", weights=str(weights[name]), tile=128,
                      probs=True)[0]
        c, p = zarr_out(out.output)
        assert (c == ref_c).mean() >= 0.9999, (name, whole_max, (c == ref_c).mean())
        assert (np.abs(p - ref_p).max(0) <= 1).mean() >= 0.999


def test_stdc_chained_tiles_equal_the_whole_image_forward(tmp_path, inria_rgb, weights, monkeypatch):
    """Beyond the whole-image budget STDC-Seg runs in passes over tiles, each pass supplying the next with
    image-wide means (x32, both ARM convs, then the FFM map). A long raster, so that tiles (256 + 512 px halo)
    see only part of it: the halo covers the reach and the chained means are the whole image's."""
    from uhrcli.inference import deep

    calls = []
    chained = deep.DeepBranch._chained
    monkeypatch.setattr(deep.DeepBranch, "_chained", lambda self, *a: calls.append(1) or chained(self, *a))
    monkeypatch.setattr(deep, "DEEP_WHOLE_MAX", 64 * 64)
    monkeypatch.setattr(deep, "DEEP_TILE", 256)
    src = tmp_path / "long.tif"
    tifffile.imwrite(src, mosaic(inria_rgb, 96, 1500))
    ref_c, ref_p = whole_forward(weights["stdc1-seg"], src)
    assert (np.bincount(ref_c.ravel(), minlength=3) / ref_c.size > 0.01).sum() >= 2
    out = segment(str(src), tmp_path / "o.zarr", weights=str(weights["stdc1-seg"]), tile=256, probs=True)[0]
    c, p = zarr_out(out.output)
    assert calls, "the chained tiled pass ran"
    assert (c == ref_c).mean() >= 0.9999 and (np.abs(p - ref_p).max(0) <= 1).mean() >= 0.999


MMSEG_KEYS = {  # key names as mmseg's modules spell them (mmseg/models/backbones/{resnet,stdc}.py, heads)
    "pspnet-r18": ["backbone.stem.0.weight", "backbone.stem.1.running_var", "backbone.layer3.0.downsample.0.weight",
                   "backbone.layer4.1.conv2.weight", "decode_head.psp_modules.3.1.conv.weight",
                   "decode_head.psp_modules.0.1.bn.running_mean", "decode_head.bottleneck.conv.weight",
                   "decode_head.conv_seg.bias", "auxiliary_head.convs.0.conv.weight", "auxiliary_head.conv_seg.weight"],
    "stdc1-seg": ["backbone.backbone.stages.0.conv.weight", "backbone.backbone.stages.2.0.layers.0.conv.weight",
                  "backbone.backbone.stages.2.0.avg_pool.conv.weight", "backbone.backbone.stages.4.1.layers.3.bn.weight",
                  "backbone.arms.0.conv.conv.weight", "backbone.arms.1.conv_attn.bn.bias",
                  "backbone.convs.1.conv.weight", "backbone.conv_avg.conv.weight", "backbone.ffm.conv0.bn.weight",
                  "backbone.ffm.conv1.conv.weight", "backbone.ffm.conv2.conv.weight",
                  "decode_head.convs.0.conv.weight", "decode_head.conv_seg.weight",
                  "auxiliary_head.0.convs.0.conv.weight", "auxiliary_head.1.conv_seg.weight",
                  "auxiliary_head.2.conv_seg.weight", "auxiliary_head.2.laplacian_kernel",
                  "auxiliary_head.2.fusion_kernel"],
}


@pytest.mark.parametrize("name", sorted(MMSEG_KEYS))
def test_mmseg_checkpoint_loads_as_it_is(name, tmp_path):
    """An mmseg .pth ({'meta', 'state_dict'}) in the official key layout loads strictly with `--model NAME`."""
    ref = create_model(name, num_classes=K)
    state = ref.state_dict()
    assert set(MMSEG_KEYS[name]) <= set(state)
    torch.manual_seed(5)
    official = {k: (torch.randn_like(v) if v.is_floating_point() else v) for k, v in state.items()}
    torch.save({"meta": {"CLASSES": [f"c{i}" for i in range(K)]}, "state_dict": official}, tmp_path / "m.pth")
    m = build_model(name, tmp_path / "m.pth", num_classes=K)
    for k in MMSEG_KEYS[name]:
        assert torch.equal(m.state_dict()[k], official[k]), k
    bad = dict(official)
    bad.pop(MMSEG_KEYS[name][-1])
    torch.save({"state_dict": bad}, tmp_path / "bad.pth")
    with pytest.raises(Exception, match="missing"):
        build_model(name, tmp_path / "bad.pth", num_classes=K)
