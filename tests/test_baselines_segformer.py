"""SegFormer-B0 (and its 1/2, 1/4 variants) and ISDNet with a SegFormer-B0 deep path.

Published figures: SegFormer paper (Xie et al. 2021, Table 1): B0 3.8M parameters (150 ADE20K classes;
encoder 3.4M, decoder 0.4M as printed); the official mmseg config segformer_mit-b0 (embed_dims 32,
layers 2/2/2/2, heads 1/2/5/8, patch sizes 7/3/3/3, sr 8/4/2/1, mlp_ratio 4, qkv_bias, head 256 ch) gives
the exact count computed below from those numbers alone (3,720,051 with 19 classes, 3,753,718 with 150).
isdnet-segformer-b0 follows cedricgsh/ISDNet configs/segformer/segformer_mit-b0_512x1024_cityscapes_160k_refine.py
(RefineSegformerHead channels 128, down_ratio 4, STDCSimRefineHead prev_channels 128, no auxiliary head).
"""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from uhrcli.errors import UsageError
from uhrcli.inference import kind_of
from uhrcli.models import build_model, create_model
from uhrcli.models.flops import count_params
from uhrcli.segment import segment

from .test_exact import mosaic, random_weights, whole_forward, zarr_out

NAMES = ["segformer-b0", "segformer-b0-down2", "segformer-b0-down4", "isdnet-segformer-b0"]


def official_segformer_params(num_classes: int, head: int = 256, dims=(32, 64, 160, 256), layers=(2, 2, 2, 2),
                              patches=(7, 3, 3, 3), srs=(8, 4, 2, 1), mlp: int = 4, with_cls: bool = True) -> int:
    """Parameter count of mmseg's MixVisionTransformer + SegformerHead from the config's numbers."""
    n, cin = 0, 3
    for d, L, k, sr in zip(dims, layers, patches, srs):
        n += cin * d * k * k + d + 2 * d  # overlapping patch embed conv + LayerNorm
        per = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d  # norm1, in_proj, out_proj, norm2
        if sr > 1:
            per += d * d * sr * sr + d + 2 * d  # spatial-reduction conv + its LayerNorm
        h = d * mlp
        per += (d * h + h) + (h * 9 + h) + (h * d + d)  # Mix-FFN: 1x1, 3x3 depthwise, 1x1
        n += L * per + 2 * d  # blocks + the stage's LayerNorm
        cin = d
    n += sum(c * head + 2 * head for c in dims)  # 1x1 ConvModules (no bias) + BN
    n += 4 * head * head + 2 * head  # fusion_conv + BN
    if with_cls:
        n += head * num_classes + num_classes  # conv_seg
    return n


def test_param_counts_match_the_official_config_and_paper():
    m19 = create_model("segformer-b0", num_classes=19)
    assert count_params(m19) == official_segformer_params(19) == 3_720_051
    m150 = create_model("segformer-b0", num_classes=150)
    assert count_params(m150) == official_segformer_params(150)
    assert round(count_params(m150) / 1e6, 1) == 3.8  # the paper's 3.8M (ADE20K)
    assert abs(count_params(m150.decode_head) / 0.4e6 - 1) < 0.1  # "decoder 0.4M"
    for n in ("segformer-b0-down2", "segformer-b0-down4"):
        assert count_params(create_model(n, num_classes=19)) == 3_720_051
    # ISD: MiT-B0 + a 128-channel SegformerHead + ISDNet's refine head unchanged (taken from isdnet-r18)
    isd = create_model("isdnet-segformer-b0", num_classes=19)
    ref = create_model("isdnet-r18", num_classes=19)
    refine = count_params(ref) - sum(count_params(getattr(ref, p)) for p in ("backbone", "decode_head",
                                                                              "auxiliary_head"))
    assert count_params(isd) == official_segformer_params(19, head=128) + refine


def test_attention_is_torch_multihead_attention():
    """Our SDPA attention computes nn.MultiheadAttention with the same (mmseg-named) parameters."""
    from uhrcli.models.segformer import MHA

    torch.manual_seed(0)
    ours, ref = MHA(160, 5), torch.nn.MultiheadAttention(160, 5, batch_first=True)
    ref.load_state_dict(ours.state_dict())
    q, kv = torch.randn(2, 37, 160), torch.randn(2, 11, 160)
    torch.testing.assert_close(ours(q, kv), ref(q, kv, kv, need_weights=False)[0], atol=1e-5, rtol=1e-5)


def mmseg_keys() -> set[str]:
    """State-dict keys of mmseg's SegFormer-B0 (MixVisionTransformer + SegformerHead), written out."""
    keys = set()
    for i, sr in enumerate((8, 4, 2, 1)):
        p = f"backbone.layers.{i}"
        keys |= {f"{p}.0.projection.weight", f"{p}.0.projection.bias", f"{p}.0.norm.weight", f"{p}.0.norm.bias",
                 f"{p}.2.weight", f"{p}.2.bias"}
        for j in range(2):
            b = f"{p}.1.{j}"
            keys |= {f"{b}.{n}.{t}" for n in ("norm1", "norm2") for t in ("weight", "bias")}
            keys |= {f"{b}.attn.attn.in_proj_weight", f"{b}.attn.attn.in_proj_bias",
                     f"{b}.attn.attn.out_proj.weight", f"{b}.attn.attn.out_proj.bias"}
            if sr > 1:
                keys |= {f"{b}.attn.{n}.{t}" for n in ("sr", "norm") for t in ("weight", "bias")}
            keys |= {f"{b}.ffn.layers.{k}.{t}" for k in (0, 1, 4) for t in ("weight", "bias")}
    bn = ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked")
    keys |= {f"decode_head.convs.{i}.{t}" for i in range(4) for t in bn}
    keys |= {f"decode_head.fusion_conv.{t}" for t in bn}
    keys |= {"decode_head.conv_seg.weight", "decode_head.conv_seg.bias"}
    return keys


def test_official_checkpoint_layout_loads():
    """A state dict in mmseg's layout (keys written out above) loads strictly and drives the output."""
    m = create_model("segformer-b0", num_classes=19).eval()
    own = m.state_dict()
    assert set(own) == mmseg_keys()
    g = torch.Generator().manual_seed(1)
    state = {k: (torch.randn(v.shape, generator=g) * 0.05 if v.is_floating_point() else v) for k, v in own.items()}
    state = {k: (v.abs() + 0.5 if k.endswith("running_var") else v) for k, v in state.items()}
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        before = m(x)
        m.load_state_dict(state, strict=True)
        after = m(x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(m.state_dict()["backbone.layers.3.1.1.ffn.layers.4.weight"],
                               state["backbone.layers.3.1.1.ffn.layers.4.weight"])


@pytest.mark.parametrize("name", NAMES)
def test_forward_two_sizes_and_a_few_training_steps(name):
    torch.manual_seed(0)
    m = create_model(name, num_classes=3)
    assert kind_of(m) == ("bipath" if name.startswith("isdnet") else "deep")
    r = m.down_ratio
    m.eval()
    with torch.no_grad():  # the smallest views: stage 1 (1/4) must be >= 8 cells for its 8x8 reduction conv
        for h, w in ((32 * r, 48 * r), (29 * r + 3, 37 * r + 1)):
            assert m(torch.randn(1, 3, h, w)).shape == (1, 3, h, w)
    if name in ("segformer-b0-down2", "segformer-b0-down4"):
        return  # the same network as segformer-b0 on a shrunk input: trained below
    m.train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    x = torch.randn(2, 3, 32 * r, 32 * r)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    first = None
    for _ in range(3):
        losses = m.losses(x, y)
        assert all(torch.isfinite(v) for v in losses.values())
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        first = first if first is not None else losses["loss"].item()
    assert m.losses(x, y)["loss"].item() < first
    if name.startswith("isdnet"):
        assert "loss_fcn_aux" not in losses and {"loss_deep", "loss_fa", "loss_recon"} <= set(losses)


@pytest.fixture(scope="module")
def weights(tmp_path_factory, inria_rgb):
    d = tmp_path_factory.mktemp("sf")
    sample = mosaic(inria_rgb, 256, 256)
    return {n: random_weights(n, d / f"{n}.safetensors", sample) for n in ("segformer-b0", "isdnet-segformer-b0")}


@pytest.mark.parametrize("name", ["segformer-b0", "isdnet-segformer-b0"])
def test_segment_equals_whole_image_forward(tmp_path, inria_rgb, weights, name):
    src = tmp_path / "img.tif"
    tifffile.imwrite(src, mosaic(inria_rgb, 419, 301))
    ref_c, ref_p = whole_forward(weights[name], src)
    assert (np.bincount(ref_c.ravel(), minlength=3) / ref_c.size > 0.01).sum() >= 2
    out = segment(str(src), tmp_path / "o.zarr", weights=str(weights[name]), tile=256, probs=True)[0]
    c, p = zarr_out(out.output)
    assert (c == ref_c).mean() >= 0.9999 and (np.abs(p - ref_p).max(0) <= 1).mean() >= 0.999


def test_too_large_a_view_is_refused(tmp_path, inria_rgb, weights, monkeypatch):
    from uhrcli.inference import deep

    monkeypatch.setattr(deep, "DEEP_WHOLE_MAX", 64 * 64)
    src = tmp_path / "img.tif"
    tifffile.imwrite(src, mosaic(inria_rgb, 200, 200))
    with pytest.raises(UsageError, match="one-pass limit of 4096 view pixels"):
        segment(str(src), tmp_path / "o.zarr", weights=str(weights["segformer-b0"]), tile=128)
    assert build_model(None, weights["segformer-b0"]).info.extra["image_wide"].startswith("efficient")


def test_flops_match_the_paper():
    """SegFormer paper, Table 1/2: B0 on Cityscapes at 1024 x 2048 costs 125.5 G (multiply-adds). Ours counts
    2 FLOPs per multiply-add over convs, linears and attention matmuls (norms, GELU and resizes are not
    counted, which the paper's counter partly does): 120.4 GMACs, 4% under."""
    from uhrcli.models.flops import count_flops

    macs = count_flops(create_model("segformer-b0", num_classes=19), (1, 3, 1024, 2048)) / 2
    assert abs(macs / 125.5e9 - 1) < 0.05
    # and on ADE20K at 512 x 512 (150 classes) the paper gives 8.4 G: 8.39 here
    ade = count_flops(create_model("segformer-b0", num_classes=150), (1, 3, 512, 512)) / 2
    assert abs(ade / 8.4e9 - 1) < 0.01
