"""`uhr --version` and every --help start without torch, rasterio or zarr (they cost seconds to import)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "rasterio", "zarr", "numpy", "tifffile", "PIL", "safetensors", "dask", "distributed")
PROBE = """
import json, sys
sys.argv = ["uhr", *sys.argv[1:]]
from uhrcli.cli import main
try:
    main()
except SystemExit:
    pass
sys.stderr.write("MODULES " + json.dumps(sorted({m.split(".")[0] for m in sys.modules})) + "\\n")
"""


def _modules(*args: str) -> tuple[set[str], str]:
    res = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    line = [ln for ln in res.stderr.splitlines() if ln.startswith("MODULES ")][-1]
    return set(json.loads(line[len("MODULES "):])), res.stdout


@pytest.mark.parametrize("args", [("--version",), ("--help",), ("segment", "--help"), ("info", "--help"),
                                  ("saliency", "--help"), ("bench", "--help"), ("train", "--help"),
                                  ("eval", "--help"), ("eval", "segment", "--help"), ("weights", "convert", "--help")])
def test_version_and_help_import_nothing_heavy(args):
    mods, out = _modules(*args)
    assert not mods & set(HEAVY), f"uhr {' '.join(args)} imported {sorted(mods & set(HEAVY))}"
    assert ("uhr " in out) if args == ("--version",) else ("Usage" in out)


def test_a_command_still_imports_what_it_needs(tmp_path):
    """The probe can see imports: `uhr info` on a file does load rasterio."""
    mods, _ = _modules("info", str(tmp_path / "missing.tif"))
    assert "rasterio" in mods or "tifffile" in mods
