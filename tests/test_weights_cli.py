import torch

from uhrcli.models import build_model, create_model
from uhrcli.models.convert import to_official_keys

from .conftest import run_uhr


def test_uhr_weights_convert_round_trip(tmp_path):
    torch.manual_seed(0)
    m = create_model("isdnet-r18").eval()
    src = tmp_path / "official.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in to_official_keys(m.state_dict()).items()}}, src)
    dst = tmp_path / "conv.safetensors"
    res = run_uhr("weights", "convert", str(src), str(dst))
    assert res.returncode == 0, res.stderr
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(m(x), build_model(None, dst)(x))
    again = run_uhr("weights", "convert", str(src), str(dst))
    assert again.returncode == 73 and "--overwrite" in again.stderr
    bad = tmp_path / "bad.pth"
    sd = to_official_keys(m.state_dict())
    sd["refine_head.mystery.weight"] = torch.zeros(3)
    torch.save(sd, bad)
    res = run_uhr("weights", "convert", str(bad), str(tmp_path / "x.safetensors"))
    assert res.returncode != 0 and "mystery" in res.stderr and not (tmp_path / "x.safetensors").exists()


def test_uhr_weights_export_half(tmp_path):
    from uhrcli.models import save_checkpoint

    torch.manual_seed(0)
    m = create_model("isdnet-r18-slim", num_classes=2).eval()
    src = save_checkpoint(m, tmp_path / "full.safetensors")
    dst = tmp_path / "half.safetensors"
    res = run_uhr("weights", "export", str(src), str(dst))
    assert res.returncode == 0, res.stderr
    assert dst.stat().st_size < 0.55 * src.stat().st_size
    half = build_model(None, dst).eval()
    assert half.info.name == "isdnet-r18-slim" and next(half.parameters()).dtype == torch.float32
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        a, b = m(x).softmax(1), half(x).softmax(1)
    assert (a - b).abs().max() < 1e-2 and (a.argmax(1) == b.argmax(1)).float().mean() > 0.99
    again = run_uhr("weights", "export", str(src), str(dst))
    assert again.returncode == 73 and "--overwrite" in again.stderr
    plain = tmp_path / "plain.pth"
    torch.save(m.state_dict(), plain)
    res = run_uhr("weights", "export", str(plain), str(tmp_path / "y.safetensors"))
    assert res.returncode != 0 and "uhr weights convert" in res.stderr and not (tmp_path / "y.safetensors").exists()
