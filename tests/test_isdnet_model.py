"""ISDNet and baselines: shapes against the official configuration, the decomposed inference API,
receptive field, training on a real tile, converter and backbone loading."""
from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F

from uhrcli.errors import CheckpointError
from uhrcli.models import create_model, list_models
from uhrcli.models.convert import convert_file, convert_isdnet_mmseg, to_official_keys
from uhrcli.models.flops import count_flops, count_params

from .conftest import EXAMPLES
from uhrcli.models.resnet import load_backbone_weights



def _perturbed(name: str, num_classes: int = 3, seed: int = 0) -> torch.nn.Module:
    """Seeded eval model with non-trivial BN statistics and open fusion gates (so every path matters)."""
    torch.manual_seed(seed)
    m = create_model(name, num_classes=num_classes)
    g = torch.Generator().manual_seed(seed + 1)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.copy_(torch.empty_like(mod.running_mean).uniform_(-0.1, 0.1, generator=g))
            mod.running_var.copy_(torch.empty_like(mod.running_var).uniform_(0.7, 1.3, generator=g))
    for n, p in m.named_parameters():
        if n.endswith(("g1", "g2")):
            p.data.fill_(0.5)
    return m.eval()


def test_registered():
    for n in ("isdnet-r18", "isdnet-r50", "isdnet-r18-psp", "deeplabv3-r18", "deeplabv3-r18-down4"):
        assert n in list_models()
        m = create_model(n)
        assert m.info.name == n and m.info.num_classes == 2
        assert m.info.mean == (123.675, 116.28, 103.53) and m.info.std == (58.395, 57.12, 57.375)
    info = create_model("isdnet-r18", num_classes=7).info
    assert info.num_classes == 7 and len(info.class_names) == 7 and len(info.palette) == 7
    assert info.two_scale and info.size_multiple == 32
    assert info.extra["down_ratio"] == 4 and info.extra["deep_stride"] == 32
    assert create_model("deeplabv3-r18").info.size_multiple == 8
    assert create_model("deeplabv3-r18-down4").info.size_multiple == 32


@torch.no_grad()
def test_branch_shapes_r18():
    m = _perturbed("isdnet-r18")
    x = torch.randn(1, 3, 256, 320)
    xd = m.deep_input(x)
    assert xd.shape == (1, 3, 64, 80)
    assert torch.equal(xd, x[:, :, ::4, ::4])  # nearest with size H//4 picks pixel 4i
    c1, c2, c3, c4 = m.backbone(xd)
    assert [t.shape[1] for t in (c1, c2, c3, c4)] == [64, 128, 256, 512]
    assert c2.shape[-2:] == c4.shape[-2:] == (8, 10)  # output stride 8 of the shrunk input (dilated 3, 4)
    deep = m.deep_head(c4)
    assert deep.shape == (1, 128, 8, 10)  # 1/32 of full resolution
    feat8, feat16 = m.shallow(x)
    assert feat8.shape == (1, 256, 32, 40) and feat16.shape == (1, 512, 16, 20)
    # dilations follow mmseg's contract_dilation: first block of a dilated stage at half the rate
    assert m.backbone.layer3[0].conv1.dilation == (1, 1) and m.backbone.layer3[1].conv1.dilation == (2, 2)
    assert m.backbone.layer4[0].conv1.dilation == (2, 2) and m.backbone.layer4[1].conv1.dilation == (4, 4)
    assert m.backbone.layer4[1].conv2.dilation == (1, 1)  # mmseg BasicBlock: conv2 is never dilated
    assert [m.backbone.stem[i].out_channels for i in (0, 3, 6)] == [32, 32, 64]
    assert m(x).shape == (1, 3, 256, 320)


@torch.no_grad()
def test_branch_shapes_r50():
    m = create_model("isdnet-r50").eval()
    x = torch.randn(1, 3, 256, 256)
    c4 = m.deep_backbone(m.deep_input(x))
    assert c4.shape == (1, 2048, 8, 8)
    assert m.deep_head(c4).shape == (1, 128, 8, 8)
    assert m(x).shape == (1, 2, 256, 256)


@torch.no_grad()
@pytest.mark.parametrize("name", ["isdnet-r18", "isdnet-r18-psp"])
def test_stage_composition_equals_the_official_module_order(name):
    """forward() is composed of the tiled inferer's stages; the training path uses the fusion modules as the
    official code writes them (weights from the means, context resized, context_head, smooth): they agree."""
    m = _perturbed(name)
    for p in (m.fuse16.g1, m.fuse16.g2, m.fuse8.g1, m.fuse8.g2):
        p.fill_(0.5)  # open the relation gates so the affinity MLPs take part
    for size in ((256, 256), (250, 333)):
        x = torch.randn(2, 3, *size)
        ref = m(x)
        deep = m.decode_head.features(m.backbone(m.deep_input(x))[3])
        feat8, feat16 = m.shallow(x)
        f16, _ = m.fuse16(feat16, deep)
        f8, _ = m.fuse8(feat8, f16)
        out = F.interpolate(m.conv_seg(f8), size=x.shape[-2:], mode="bilinear", align_corners=False)
        assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)
    c4 = m.deep_backbone(m.deep_input(x))
    pooled = m.deep_pool(c4) / (c4.shape[-2] * c4.shape[-1])
    assert torch.allclose(m.deep_head(c4, pooled_mean=pooled), m.deep_head(c4), atol=1e-5)
    # the pooled hook is live: another statistic changes the deep features
    assert not torch.allclose(m.deep_head(c4, pooled_mean=pooled * 2), m.deep_head(c4), atol=1e-4)


@torch.no_grad()
def test_any_input_size_and_channels_last():
    m = _perturbed("isdnet-r18")
    for h, w in ((250, 333), (97, 131)):
        assert m(torch.randn(1, 3, h, w)).shape == (1, 3, h, w)
    x = torch.randn(1, 3, 192, 192)
    ref = m(x)
    m2 = m.to(memory_format=torch.channels_last)
    got = m2(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(got, ref, atol=1e-4)


def test_shallow_receptive_field_matches_autograd():
    """Worst-phase reach of the shallow path (deep features and GAPs fixed) equals info.receptive_field."""
    m = _perturbed("isdnet-r18")
    size, centre = 576, 288
    x = torch.randn(1, 3, size, size, requires_grad=True)
    with torch.no_grad():
        deep = m.deep_head(m.deep_backbone(m.deep_input(x)))

    def gaps(s: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return s.mean((2, 3)).detach(), c.mean((2, 3)).detach()

    f8, f16 = m.shallow(x)
    s8, s16, c16 = m.spatial8(f8), m.spatial16(f16), m.deep_context(deep)
    s_w16, c_w16 = m.fusion_weights(16, *gaps(s16, c16))
    c8 = m.fuse16_context(s16, F.interpolate(c16 * c_w16, size=s16.shape[-2:], mode="bilinear"), s_w16)
    s_w8, c_w8 = m.fusion_weights(8, *gaps(s8, c8))
    logits = m.fuse8_logits(s8, F.interpolate(c8 * c_w8, size=s8.shape[-2:], mode="bilinear"), s_w8)
    y = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
    reach = 0
    for phase in (0, 3):  # output phases mod 8: 3 is the worst (bilinear vs conv grid offsets), 0 a typical one
        p = centre + phase
        (gx,) = torch.autograd.grad(y[0, 1, p, p], x, retain_graph=True)
        rows = (gx[0].abs().sum(dim=(0, 2)) > 0).nonzero()[:, 0]
        reach = max(reach, p - int(rows.min()), int(rows.max()) - p)
    rf = m.info.receptive_field
    assert rf == 270
    assert rf - 4 <= reach <= rf, (reach, rf)


def _real_batch() -> tuple[torch.Tensor, torch.Tensor]:
    import tifffile

    img = tifffile.imread(EXAMPLES / "austin_inria_crop.tif")
    lab = tifffile.imread(EXAMPLES / "austin_inria_crop_buildings.tif")
    crops = [(500, 250), (700, 500)]  # 128x128 crops, 28 % buildings: small enough for a 2-core CPU
    mean = np.array([123.675, 116.28, 103.53], np.float32)
    std = np.array([58.395, 57.12, 57.375], np.float32)
    xs, ys = [], []
    for r, c in crops:
        xs.append(((img[r:r + 128, c:c + 128].astype(np.float32) - mean) / std).transpose(2, 0, 1))
        ys.append((lab[r:r + 128, c:c + 128] > 127).astype(np.int64))
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def test_training_reduces_every_loss():
    """Overfitting two fixed real crops (batch 2) with the official optimiser makes every term drop.

    Seeded and deterministic on CPU; measured ratios (mean of the last 3 steps over the first 3) after 15
    steps lie between about 0.1 (reconstruction) and 0.85 (FCN aux). The affinity term rises for the
    first steps (the SR features start from noise) before falling and oscillates, hence its own check.
    """
    x, y = _real_batch()
    torch.manual_seed(0)
    m = create_model("isdnet-r18").train()
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    hist: dict[str, list[float]] = {}
    for _ in range(15):
        losses = m.losses(x, y)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        for k, v in losses.items():
            hist.setdefault(k, []).append(float(v.detach()))
    assert set(hist) == {"loss", "loss_aspp", "loss_seg", "loss_aux16", "loss_aux8", "loss_recon", "loss_fa",
                         "loss_fcn_aux"}
    for k, v in hist.items():
        assert all(np.isfinite(v)), k
        first, last = np.mean(v[:3]), np.mean(v[-3:])
        if k == "loss_fa":  # the affinity term oscillates as the SR features move: it must fall, not settle
            assert min(v[len(v) // 2:]) < 0.85 * first, f"{k}: first3 {first:.4f} later {v[len(v) // 2:]}"
            continue
        assert last < 0.92 * first, f"{k}: first3 {first:.4f} last3 {last:.4f}"


def test_loss_weights_and_batch_one():
    """Batch 1 trains (BN on pooled 1x1 maps uses running stats); CE terms start near log(K) x weight."""
    torch.manual_seed(0)
    m = create_model("isdnet-r18").train()
    x = torch.randn(1, 3, 128, 128)
    y = torch.randint(0, 2, (1, 128, 128))
    y[0, :8] = 255  # ignored rows: mmseg 0.16 averages over all pixels, ignored ones count as 0
    losses = m.losses(x, y)
    losses["loss"].backward()
    assert abs(losses["loss_fcn_aux"].item() / losses["loss_seg"].item() - 0.4) < 0.05
    assert losses["loss_seg"].item() < np.log(2) * (1 - 8 / 128) + 0.05
    total = sum(v.item() for k, v in losses.items() if k != "loss")
    assert abs(total - losses["loss"].item()) < 1e-4
    assert m.fuse16.spatial_att.conv_1x1.bn.weight.grad is not None


def test_baselines_shapes():
    x = torch.randn(1, 3, 256, 256)
    full = create_model("deeplabv3-r18", num_classes=4).eval()
    down = create_model("deeplabv3-r18-down4", num_classes=4).eval()
    isd = create_model("isdnet-r18", num_classes=4).eval()
    down.backbone.load_state_dict(isd.backbone.state_dict())
    down.decode_head.load_state_dict(isd.decode_head.state_dict())
    with torch.no_grad():
        assert full(x).shape == down(x).shape == (1, 4, 256, 256)
        assert full.decode_head.features(full.backbone(x)[-1]).shape == (1, 128, 32, 32)
        # the down4 baseline is ISDNet's deep path alone
        ref = F.interpolate(isd.decode_head.cls_seg(isd.deep_head(isd.deep_backbone(isd.deep_input(x)))),
                            size=(256, 256), mode="bilinear", align_corners=False)
        assert torch.allclose(down(x), ref, atol=1e-5)
    m = create_model("deeplabv3-r18").train()
    m.losses(torch.randn(2, 3, 64, 64), torch.randint(0, 2, (2, 64, 64)))["loss"].backward()


def test_params_and_flops():
    isd = create_model("isdnet-r18")
    full = create_model("deeplabv3-r18")
    down = create_model("deeplabv3-r18-down4")
    # the deep path is the baseline's network; ISDNet adds the shallow path, fusions and training heads
    assert count_params(down) == count_params(full)
    deep_part = sum(count_params(getattr(isd, n)) for n in ("backbone", "decode_head", "auxiliary_head"))
    assert deep_part == count_params(full)
    assert count_params(isd.stdc_net) > 0 and count_params(isd) > count_params(full)
    shape = (1, 3, 512, 512)
    f_isd, f_full, f_down = (count_flops(m, shape) for m in (isd, full, down))
    # the deep path costs 1/16 of the full-res baseline (4x shrink); the shallow path is cheap by design
    assert abs(f_down * 16 - f_full) / f_full < 0.02
    assert f_down < f_isd < f_full / 3
    # meta-device counting equals counting on real tensors
    assert count_flops(down, (1, 3, 128, 128), device="cpu") == count_flops(down, (1, 3, 128, 128))


def official_state_dict(m: torch.nn.Module) -> dict:
    """An ISDNet state dict laid out as the official mmseg 0.16 code builds it, by its own module structure:
    EncoderDecoderRefine(backbone, decode_head, auxiliary_head, refine_head=ISDHead), the ISDHead's
    ShallowNet holding `x2 = nn.Sequential(self.features[:1])` ... `x16 = nn.Sequential(self.features[4:6])`.
    The alias keys come from nn.Sequential's slicing rule, not from the converter's inverse."""
    nn = torch.nn

    class ShallowNetLayout(nn.Module):
        def __init__(self, features: nn.Sequential):
            super().__init__()
            self.features = features
            self.x2 = nn.Sequential(self.features[:1])
            self.x4 = nn.Sequential(self.features[1:2])
            self.x8 = nn.Sequential(self.features[2:4])
            self.x16 = nn.Sequential(self.features[4:6])

    class ISDHeadLayout(nn.Module):
        def __init__(self):
            super().__init__()
            self.fuse8, self.fuse16, self.sr_decoder = m.fuse8, m.fuse16, m.sr_decoder
            self.stdc_net = ShallowNetLayout(m.stdc_net.features)
            self.conv_seg_aux_16, self.conv_seg_aux_8, self.conv_seg = m.conv_seg_aux_16, m.conv_seg_aux_8, m.conv_seg

    class SegmentorLayout(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone, self.decode_head, self.auxiliary_head = m.backbone, m.decode_head, m.auxiliary_head
            self.refine_head = ISDHeadLayout()

    return SegmentorLayout().state_dict()


def mmcv_checkpoint(state: dict, path) -> None:
    """Saved as mmcv's save_checkpoint does: meta (numpy scalars included), state_dict, optimizer."""
    import collections

    import numpy as np

    params = [v for k, v in state.items() if v.is_floating_point()][:3]
    opt = torch.optim.SGD([torch.nn.Parameter(p.clone()) for p in params], lr=0.01, momentum=0.9)
    for p in opt.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    opt.step()
    meta = {"mmcv_version": "1.3.13", "time": "Tue Mar  1 10:00:00 2022", "env_info": "sys.platform: linux",
            "seed": np.int64(1234), "exp_name": "isdnet_r18-d8_1224x1224_80k_DeepGlobe.py",
            "CLASSES": ("unknown", "urban", "agriculture", "rangeland", "forest", "water", "barren"),
            "PALETTE": [[0, 0, 0], [0, 255, 255]], "epoch": 1, "iter": 80000,
            "hook_msgs": {"last_ckpt": "work_dirs/iter_80000.pth", "best_score": np.float64(0.733),
                          "best_ckpt": "work_dirs/best_mIoU_iter_72000.pth"}}
    torch.save({"meta": meta, "state_dict": collections.OrderedDict(state), "optimizer": opt.state_dict()}, path)


def test_converter_loads_the_official_layout_strictly(tmp_path):
    m = _perturbed("isdnet-r18", num_classes=7)
    ours = m.state_dict()
    official = official_state_dict(m)
    assert len(ours) == 440 and len(official) == 560  # 120 STDC alias keys
    assert "refine_head.stdc_net.x8.0.3.conv_list.0.conv.weight" in official
    assert "refine_head.stdc_net.x16.0.5.conv_list.3.bn.running_var" in official
    assert set(to_official_keys(ours)) == set(official)  # the exporter writes the same layout
    new, report = convert_isdnet_mmseg({"state_dict": {"module." + k: v for k, v in official.items()}}, ours)
    assert set(new) == set(ours) and all(torch.equal(new[k], ours[k]) for k in ours)
    assert len(report["aliases"]) == 120 and not report["unmapped"] and not report["missing"]
    assert not report["shape_mismatch"] and not report["alias_mismatch"]
    # a file as mmcv writes it (numpy scalars in meta, optimizer state) converts strictly and loads
    src = tmp_path / "deepglobe_iter_80000.pth"
    mmcv_checkpoint(official, src)
    rep = convert_file(src, tmp_path / "ours.safetensors", "isdnet-r18")
    assert rep["mapped"] == 440 and len(rep["aliases"]) == 120
    from uhrcli.models import build_model

    m2 = build_model(None, tmp_path / "ours.safetensors")
    assert m2.info.num_classes == 7
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.allclose(m2(x), m(x), atol=1e-6)
    # an alias that disagrees with its target is reported, never dropped silently
    bad = dict(official)
    bad["refine_head.stdc_net.x8.0.3.conv_list.0.conv.weight"] = torch.zeros_like(
        bad["refine_head.stdc_net.x8.0.3.conv_list.0.conv.weight"])
    _, rep2 = convert_isdnet_mmseg(bad, ours)
    assert rep2["alias_mismatch"] == ["refine_head.stdc_net.x8.0.3.conv_list.0.conv.weight"]
    torch.save({"state_dict": bad}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="unmapped"):
        convert_file(tmp_path / "bad.pth", tmp_path / "x.safetensors", "isdnet-r18")


def test_converter_reports_the_released_aspp_layout():
    m = _perturbed("isdnet-r18", num_classes=7)
    ours = m.state_dict()
    official = official_state_dict(m)
    official["refine_head.something_new.weight"] = torch.zeros(3)
    _, report = convert_isdnet_mmseg(official, reference=ours)
    assert report["unmapped"] == ["refine_head.something_new.weight"]
    # the released deepglobe.pth pattern: an ASPP ConvModule saved as conv+bias without BN
    bad = dict(official)
    for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        del bad[f"decode_head.aspp_modules.1.bn.{s}"]
    bad["decode_head.aspp_modules.1.conv.bias"] = torch.randn(128)
    _, rep = convert_isdnet_mmseg(bad, reference=ours)
    assert rep["conv_bias_without_bn"] == ["decode_head.aspp_modules.1.conv.bias"]
    assert "decode_head.aspp_modules.1.conv.bias" in rep["unmapped"]
    assert "decode_head.aspp_modules.1.bn.weight" in rep["missing"]
    new2, rep2 = convert_isdnet_mmseg(bad, reference=ours, fold_conv_bias=True)
    assert rep2["folded"] and not rep2["missing"]
    # folding is exact: conv(x) + b == bn(conv(x)) with the identity BN
    bn = torch.nn.BatchNorm2d(128).eval()
    bn.load_state_dict({k.split(".bn.")[1]: v for k, v in new2.items() if k.startswith("decode_head.aspp_modules.1.bn.")})
    z = torch.randn(1, 128, 4, 4)
    assert torch.allclose(bn(z), z + bad["decode_head.aspp_modules.1.conv.bias"][:, None, None], atol=1e-6)


def test_backbone_weights_torchvision_layout(tmp_path):
    m = create_model("isdnet-r18")
    # a torchvision ResNet-18 state dict: 7x7 conv1, bn1, layerN, fc
    torch.manual_seed(3)
    tv = {"conv1.weight": torch.randn(64, 3, 7, 7), "fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)}
    for s in ("weight", "bias", "running_mean", "running_var"):
        tv[f"bn1.{s}"] = torch.rand(64)
    for k, v in m.backbone.state_dict().items():
        if k.startswith("layer"):
            tv[k] = torch.randn_like(v.float()).to(v.dtype) if v.is_floating_point() else v.clone()
    p = tmp_path / "resnet18.pth"
    torch.save(tv, p)
    stem_before = m.backbone.stem[0].weight.clone()
    report = load_backbone_weights(m, p)
    assert not report["stem_loaded"] and "stem" in report["notes"][0]
    assert torch.equal(m.backbone.layer3[1].conv1.weight, tv["layer3.1.conv1.weight"])
    assert torch.equal(m.backbone.stem[0].weight, stem_before)
    assert {"conv1.weight", "fc.weight"} <= set(report["skipped"])
    r50 = create_model("isdnet-r50")
    with pytest.raises(CheckpointError, match="shape"):
        load_backbone_weights(r50, p)


def test_slim_variant_is_the_same_graph_and_ships_small(tmp_path):
    """isdnet-r18-slim: same decomposition, narrower widths, fp16 checkpoint under 10 MB."""
    from uhrcli.models import build_model, create_model, save_checkpoint

    torch.manual_seed(0)
    m = create_model("isdnet-r18-slim").eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        y = m(x)
    assert y.shape == (1, 2, 128, 128)
    p = tmp_path / "slim.safetensors"
    save_checkpoint(m, p, half=True)
    assert p.stat().st_size < 10_000_000
    with torch.no_grad():
        assert torch.allclose(build_model(None, p)(x), y, atol=5e-2)  # fp16 storage
