"""Checkpoint round trip and refusal of malformed files (one clear CheckpointError each)."""
from __future__ import annotations

import pickle

import pytest
import torch

from uhrcli.errors import CheckpointError
from uhrcli.models import build_model, create_model, save_checkpoint


class _Payload:
    """A custom class: weights_only unpickling must refuse it."""

    def __init__(self) -> None:
        self.x = 1


@pytest.fixture(scope="module")
def isd_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    m = create_model("isdnet-r18", num_classes=3).eval()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
    p = tmp_path_factory.mktemp("ck") / "isd.safetensors"
    save_checkpoint(m, p, model_kwargs={"num_classes": 3})
    return m, p


def test_round_trip(isd_ckpt):
    m, p = isd_ckpt
    m2 = build_model(None, p)
    assert m2.info.name == "isdnet-r18" and m2.info.num_classes == 3 and m2.info.two_scale
    x = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))
    sd, sd2 = m.state_dict(), m2.state_dict()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)


def test_round_trip_baseline(tmp_path):
    m = create_model("deeplabv3-r18-down4").eval()
    save_checkpoint(m, tmp_path / "d.safetensors")
    m2 = build_model("deeplabv3-r18-down4", tmp_path / "d.safetensors")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))


def test_wrong_model_name(isd_ckpt):
    with pytest.raises(CheckpointError, match="holds model 'isdnet-r18', not 'isdnet-r50'"):
        build_model("isdnet-r50", isd_ckpt[1])


def test_wrong_class_count(isd_ckpt, tmp_path):
    with pytest.raises(CheckpointError, match="trained for 3 classes, not 5"):
        build_model(None, isd_ckpt[1], num_classes=5)
    # a bare state dict (no metadata) of a 3-class model into a 2-class one: shape mismatch named
    torch.save(create_model("isdnet-r18", num_classes=3).state_dict(), tmp_path / "bare.pth")
    with pytest.raises(CheckpointError, match=r"shape mismatch.*conv_seg"):
        build_model("isdnet-r18", tmp_path / "bare.pth", num_classes=2)


def test_wrong_architecture_bare(tmp_path):
    torch.save(create_model("deeplabv3-r18").state_dict(), tmp_path / "dl.pth")
    with pytest.raises(CheckpointError, match="missing key"):
        build_model("isdnet-r18", tmp_path / "dl.pth")


def test_truncated_files(isd_ckpt, tmp_path):
    data = isd_ckpt[1].read_bytes()
    t = tmp_path / "trunc.safetensors"
    t.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable"):
        build_model(None, t)
    torch.save(create_model("fcn-tiny").state_dict(), tmp_path / "tiny.pth")
    raw = (tmp_path / "tiny.pth").read_bytes()
    (tmp_path / "tiny_trunc.pth").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        build_model("fcn-tiny", tmp_path / "tiny_trunc.pth")


def test_text_file(tmp_path):
    p = tmp_path / "weights.txt"
    p.write_text("these are not the weights you are looking for\n" * 4)
    with pytest.raises(CheckpointError, match="not a readable"):
        build_model("isdnet-r18", p)
    (tmp_path / "tiny.txt").write_text("hi")
    with pytest.raises(CheckpointError, match="too small"):
        build_model("isdnet-r18", tmp_path / "tiny.txt")


@pytest.mark.parametrize("payload", ["class", "function"])
def test_pickle_with_non_tensor_is_refused(tmp_path, payload):
    obj = _Payload() if payload == "class" else pickle.dumps  # a custom instance, or a global function
    p = tmp_path / f"evil_{payload}.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": obj}, p)
    with pytest.raises(CheckpointError, match="refused"):
        build_model("isdnet-r18", p)
    # legacy (non-zip) pickle format too
    p2 = tmp_path / f"evil_{payload}_legacy.pth"
    torch.save({"w": torch.zeros(1), "extra": obj}, p2, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="refused"):
        build_model("isdnet-r18", p2)


def test_state_dict_without_tensors(tmp_path):
    p = tmp_path / "numbers.pth"
    torch.save({"a": 1, "b": [1, 2]}, p)
    with pytest.raises(CheckpointError, match="state_dict of tensors"):
        build_model("isdnet-r18", p)


def test_sniff_safetensors_whose_header_length_starts_with_pickle_marker(tmp_path):
    from uhrcli.models.checkpoint import sniff_format

    # a real case: a 45184-byte header is b"\x80\xb0\x00..." - the first byte looks like a pickle
    assert sniff_format(b"\x80\xb0\x00\x00\x00\x00\x00\x00{\"__meta", 10**7) == "safetensors"
    assert sniff_format(b"\x80\x02}q\x00(X\x06\x00\x00\x00weight", 10**7) == "torch"
    assert sniff_format(b"PK\x03\x04" + b"\x00" * 12, 10**7) == "torch"
