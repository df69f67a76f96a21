"""--compile: TorchInductor on what the model runs per tile gives the eager model's output (CPU here)."""
from __future__ import annotations

import numpy as np
import rasterio
from PIL import Image

from uhrcli.cli import app
from uhrcli.segment import segment

from .conftest import EXAMPLES


def test_segment_compiled_equals_eager(tmp_path):
    src = EXAMPLES / "austin_inria_crop.tif"
    kw = dict(model="fcn-tiny", weights="random", tile=1024, probs=True)  # one tile: one compilation
    eager = segment(str(src), tmp_path / "eager.tif", **kw)[0]
    comp = segment(str(src), tmp_path / "comp.tif", compile=True, **kw)[0]
    with rasterio.open(eager.output) as a, rasterio.open(comp.output) as b:
        ca, cb = a.read(1), b.read(1)
    assert (ca == cb).mean() >= 0.9999
    assert eager.stats.extra["batch_size"] == 1  # --batch-size auto on the CPU
    with rasterio.open(eager.probs_output) as a, rasterio.open(comp.probs_output) as b:
        pa, pb = a.read().astype(int), b.read().astype(int)
    assert pa.std() > 1.0  # the random model's probabilities vary over the image
    assert np.abs(pa - pb).max() <= 1


def test_saliency_cli_compile(tmp_path):
    from typer.testing import CliRunner

    photo = tmp_path / "in" / "p.png"
    photo.parent.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(photo)
    outs = {}
    for flag in ("", "--compile"):
        out = tmp_path / f"out{flag}"
        args = ["saliency", str(photo.parent), "-o", str(out), "--model", "identity", "--weights", "random",
                "--size", "128", "-q"] + ([flag] if flag else [])
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
        outs[flag] = np.asarray(Image.open(next(out.glob("*.png"))))
    assert outs[""].shape == (200, 300)
    assert np.abs(outs[""].astype(int) - outs["--compile"]).max() <= 1
