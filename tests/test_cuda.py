"""The CUDA paths, run on a real GPU: skipped where there is none, never mocked.

Each case compares the GPU's result with the CPU's fp32 one on real data (the Austin aerial crop and a
photo shipped in the repository), so a device path that drops, shifts or mis-scales pixels fails here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from uhrcli.segment import segment

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
AUSTIN = EXAMPLES / "data" / "austin_inria_crop.tif"
DEMO = EXAMPLES / "isdnet-r18-slim-austin.safetensors"


def _classes(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


@pytest.mark.parametrize("model,weights,tile", [("fcn-tiny", "random", 256), (None, DEMO, None)])
def test_segment_on_cuda_agrees_with_cpu_in_fp16_and_fp32(tmp_path, model, weights, tile):
    """The default model and a local one: the GPU in fp32 and under fp16 autocast against the CPU's fp32 map."""
    kw = dict(model=model, weights=str(weights), tile=tile)
    cpu = segment(str(AUSTIN), tmp_path / "cpu.tif", device="cpu", **kw)[0]
    f32 = segment(str(AUSTIN), tmp_path / "f32.tif", device="cuda", amp=False, **kw)[0]
    f16 = segment(str(AUSTIN), tmp_path / "f16.tif", device="cuda", **kw)[0]  # AMP is the CUDA default
    ref = _classes(cpu.output)
    assert (_classes(f32.output) == ref).mean() >= 0.9999
    assert (_classes(f16.output) == ref).mean() >= 0.999
    assert f16.stats.tiles > 0
    assert f16.stats.extra["batch_size"] >= 1 and cpu.stats.extra["batch_size"] == 1  # --batch-size auto


def test_segment_with_an_explicit_batch_and_compile_on_cuda(tmp_path):
    kw = dict(model="fcn-tiny", weights="random", tile=256, probs=True)
    one = segment(str(AUSTIN), tmp_path / "one.tif", device="cuda", batch_size=1, **kw)[0]
    many = segment(str(AUSTIN), tmp_path / "many.tif", device="cuda", batch_size=4, compile=True, **kw)[0]
    assert (_classes(one.output) == _classes(many.output)).mean() >= 0.999


def test_bytes_to_the_device_are_raw_pixels(tmp_path):
    """uint8 RGB crosses as 3 bytes per pixel (plus halo), not 12 bytes of normalised float32."""
    from uhrcli.bench.runner import run_benchmark

    r = run_benchmark(models=["fcn-tiny"], sizes=[1024], pipeline=True, cache_dir=tmp_path, roof=False,
                      device="cuda")
    rec = r.records[0]
    assert rec["status"] == "ok", rec
    assert 3.0 <= rec["bytes_to_device_per_px"] < 6.0
    assert rec["gpu_peak_mem_mb"] > 0 and rec["amp"] is True


def test_saliency_on_cuda_matches_cpu(tmp_path):
    from PIL import Image

    from uhrcli.models import build_model
    from uhrcli.saliency import run_saliency

    photo = Path(__file__).resolve().parent / "data" / "chelsea.png"
    maps = {}
    for dev in ("cpu", "cuda"):
        net = build_model("fcn-tiny", "random", task="saliency", seed=3)
        rep = run_saliency(photo, tmp_path / dev, net=net, size=128, device=dev, amp=False)
        assert rep.ok
        maps[dev] = np.asarray(Image.open(tmp_path / dev / "chelsea.png")).astype(int)
    assert np.abs(maps["cuda"] - maps["cpu"]).max() <= 1


def test_a_few_training_steps_on_cuda(tmp_path, austin_pair):
    from uhrcli.train import TrainConfig, train

    root = tmp_path / "inria"
    (root / "images").mkdir(parents=True)
    (root / "gt").mkdir()
    (root / "images" / "austin1.tif").symlink_to(austin_pair[0])
    (root / "gt" / "austin1.tif").symlink_to(austin_pair[1])
    res = train(TrainConfig(data=root, model="fcn-tiny", output=tmp_path / "run", crop=128, batch_size=4, workers=0,
                            steps=6, log_every=1, optimizer="adamw", lr=0.01, photometric=False, seed=0,
                            device="cuda"))
    assert res.step == res.total_steps == 6 and res.last.exists()
    assert np.isfinite(res.final_loss)
