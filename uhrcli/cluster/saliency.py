"""`uhrcli.saliency.run_saliency(..., client=...)`: many photos as tasks on a Dask cluster.

Photos are independent: they go out in chunks (a few per task, so the per-task cost of the scheduler stays
small next to a photo's) to `worker.saliency_chunk`, which runs the local pipeline (two decoders, two
encoders) on its share with the model built once per worker. Results, failures and notes come back per chunk
and are reported in input order, with the messages of a local run.
"""
from __future__ import annotations

import uuid
from typing import Any, Callable

from ..scratch import weights_digest
from . import preflight, workers_of
from .worker import ModelSpec, saliency_chunk

MAX_CHUNK = 16  # photos per task at most


def chunks(n: int, workers: int) -> list[tuple[int, int]]:
    """[start, stop) of each task: about four tasks per worker (a slow photo does not hold the end of the run
    back), at most MAX_CHUNK photos each."""
    size = max(1, min(MAX_CHUNK, -(-n // max(1, 4 * workers))))
    return [(a, min(n, a + size)) for a in range(0, n, size)]


def saliency_on_cluster(client: Any, todo: list, report: Any, fail: Callable, progress: Callable | None, *,
                        model: str, weights: Any, model_kwargs: dict | None, device: str, amp: bool | None,
                        size: int, kinds: Any, threshold: float, bit_depth: int, batch_size: int,
                        stream_pixels: int, strip_rows: int | None) -> None:
    from distributed import as_completed

    if not todo:
        return
    files = [str(j.src) for j in todo[:64]] + ([str(weights)] if str(weights) != "random" else [])
    preflight(client, files, {t.parent for j in todo[:64] for t in j.targets.values()} or set())
    mspec = ModelSpec(model, str(weights), weights_digest(weights), True, device, amp, False,
                      tuple(sorted((model_kwargs or {}).items())), "saliency")
    params = dict(size=size, kinds=tuple(kinds), threshold=threshold, bit_depth=bit_depth, batch_size=batch_size,
                  stream_pixels=stream_pixels, strip_rows=strip_rows)
    run = uuid.uuid4().hex[:8]
    spans = chunks(len(todo), max(1, len(workers_of(client))))
    futs = {client.submit(saliency_chunk, mspec, todo[a:b], params, key=f"uhr-saliency-{i}-{run}", pure=False): i
            for i, (a, b) in enumerate(spans)}
    parts: dict[int, tuple] = {}
    try:
        for f in as_completed(list(futs)):
            i = futs[f]
            a, b = spans[i]
            try:
                parts[i] = f.result()
            except Exception as exc:  # noqa: BLE001 - the chunk's worker could not run it: each photo says so
                from ..saliency import _one_line

                parts[i] = ([], [(j.src, _one_line(exc)) for j in todo[a:b]], [])
            if progress:
                for _ in parts[i][0]:
                    progress("image", 1, 0)
    except BaseException:
        client.cancel(list(futs))
        raise
    for i, (a, b) in enumerate(spans):  # input order, as a local run reports them
        results, failed, notes = parts[i]
        report.results.extend(results)
        report.notes.extend(notes)
        jobs = {j.src: j for j in todo[a:b]}
        for src, msg in failed:
            fail(jobs[src], msg)  # reported (on_error, progress) as a local run does


__all__ = ["chunks", "saliency_on_cluster"]
