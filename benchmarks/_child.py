"""One measurement per fresh process: its peak RSS is its own, and nothing it imports lingers."""
from __future__ import annotations

import json
import subprocess
import sys


def child(code: str) -> dict:
    """Run `code` in a new interpreter; its last stdout line is the JSON record it measured."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])
