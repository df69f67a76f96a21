from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "data"  # ships with the repository
DATA = Path(__file__).resolve().parent / "data"  # real test files, ships with the repository (ATTRIBUTION.md)


@pytest.fixture(scope="session")
def austin_pair() -> tuple[Path, Path]:
    """The bundled real aerial image and its real building mask (0/255)."""
    return EXAMPLES / "austin_inria_crop.tif", EXAMPLES / "austin_inria_crop_buildings.tif"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                h.update(p.relative_to(path).as_posix().encode())
                h.update(p.read_bytes())
    else:
        h.update(path.read_bytes())
    return h.hexdigest()


def run_uhr(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (what a user types)."""
    return subprocess.run([sys.executable, "-m", "uhrcli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})


@pytest.fixture(scope="session")
def inria_rgb() -> np.ndarray:
    """A real 0.3 m aerial crop (3, 1000, 1000) uint8 (the bundled example image)."""
    import rasterio

    with rasterio.open(EXAMPLES / "austin_inria_crop.tif") as ds:
        return ds.read()


SALIENCY_STEMS = ("austin_a", "austin_b")


@pytest.fixture(scope="session")
def saliency_pairs(tmp_path_factory) -> Path:
    """Two real 854 x 480 photos (JPEG) with real 0/255 masks (PNG) named by SALIENCY_STEMS: crops of the
    bundled aerial image, its buildings as the salient objects."""
    import rasterio
    from PIL import Image

    d = tmp_path_factory.mktemp("sod")
    with rasterio.open(EXAMPLES / "austin_inria_crop.tif") as a, rasterio.open(EXAMPLES / "austin_inria_crop_buildings.tif") as b:
        rgb, mask = a.read().transpose(1, 2, 0), b.read(1)
    for stem, (r, c) in zip(SALIENCY_STEMS, ((0, 0), (520, 146))):
        Image.fromarray(np.ascontiguousarray(rgb[r:r + 480, c:c + 854])).save(d / f"{stem}.jpg", quality=92)
        Image.fromarray(np.where(mask[r:r + 480, c:c + 854] > 127, 255, 0).astype(np.uint8)).save(d / f"{stem}.png")
    return d
