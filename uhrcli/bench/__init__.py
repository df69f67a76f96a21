"""`uhr bench`: model speed and memory measured the way UHR papers report them, and the whole pipeline's.

    from uhrcli.bench import run_benchmark, write_json
    report = run_benchmark(models=["fcn-tiny"], sizes=[1024, 2448], iters=5)
    write_json(report, "bench.json")
"""
from .machine import compute_roof, machine_info, peak_rss_mb
from .report import model_table, pipeline_table, summary_lines, write_csv, write_json, write_plot
from .runner import (DEFAULT_MODELS, BenchConfig, BenchReport, parse_sizes, report_from_json, resolve_models,
                     run_benchmark, run_worker)
from .synth import cache_dir, cached_raster, make_raster

__all__ = [
    "BenchConfig", "BenchReport", "run_benchmark", "run_worker", "parse_sizes", "resolve_models",
    "report_from_json", "DEFAULT_MODELS", "compute_roof", "machine_info", "peak_rss_mb", "model_table",
    "pipeline_table", "summary_lines", "write_csv", "write_json", "write_plot", "cache_dir", "cached_raster",
    "make_raster",
]
