"""Tiles side by side on a CPU: two at once, each on half of torch's threads.

One op's threads wait for each other at every barrier, so a decode or a write running on the same cores
stalls both; two tiles side by side stall only themselves. On 2 cores fcn-tiny ran 6-13% faster as 2 x 1
thread than as 1 x 2 threads, with bit-identical outputs (the same kernels, one tile each). Devices other than
the CPU keep one stream of work. ISDNet's passes stay one tile at a time: its shallow pass on 2016-pixel tiles
gained nothing (12.5-12.7 s either way on 36 MP; few large tiles leave one lane idle at the end) for twice the
activations in memory, and some of its kernels round differently on one thread than on two, which features
computed again in a later pass would have to match.
"""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import torch


def model_workers(predictor: Any, most: int = 2) -> int:
    """How many tiles run side by side: on a CPU, for inferers that allow it (`reentrant`), up to `most`."""
    run = getattr(predictor, "run", None)
    if not getattr(predictor, "reentrant", False) or run is None or run.device.type != "cpu":
        return 1
    return max(1, min(most, torch.get_num_threads()))


@contextlib.contextmanager
def side_by_side(workers: int) -> Iterator[ThreadPoolExecutor | None]:
    """A pool of `workers` threads with torch's threads shared among them (given back on exit), or None for one."""
    if workers <= 1:
        yield None
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // workers))
    pool = ThreadPoolExecutor(workers, thread_name_prefix="uhr-model")
    try:
        yield pool
    finally:  # tiles already running finish; queued ones never start
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(threads)
