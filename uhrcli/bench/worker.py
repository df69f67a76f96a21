"""`python -m uhrcli.bench.worker`: measure one benchmark case in this fresh process.

Reads a JSON spec on stdin, prints one line `UHR_BENCH_RESULT {json}` on
stdout. A fresh process per case keeps cases from polluting each other's peak
RSS (allocator caches, freed-but-kept arenas) and lets an out-of-memory kill
take down only that row.
"""
from __future__ import annotations

import json
import sys
from typing import Any

from .machine import MARKER


def run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Dispatch on spec['mode']: 'baseline' (idle process with torch imported), 'model' or 'pipeline'."""
    mode = spec.get("mode", "model")
    threads = spec.get("threads")
    if mode == "baseline":
        import torch  # noqa: F401  - exactly what a case imports before building its model

        from .. import models  # noqa: F401
        from . import model as _m  # noqa: F401
        from .machine import peak_rss_mb

        return {"mode": "baseline", "status": "ok", "peak_rss_mb": round(peak_rss_mb(), 1)}
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    if mode == "model":
        from .model import measure_model

        return measure_model(spec)
    if mode == "pipeline":
        from .pipeline import measure_pipeline

        return measure_pipeline(spec)
    raise ValueError(f"unknown worker mode {mode!r}")


def main() -> None:
    spec = json.loads(sys.stdin.read())
    rec = run_spec(spec)
    sys.stdout.write(MARKER + json.dumps(rec) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
