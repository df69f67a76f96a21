"""Running `uhr` on a Dask distributed cluster (the `cluster` extra).

`connect(scheduler=...)` joins an existing cluster, `connect(workers=N)` starts one on this machine; either
gives a `Cluster` whose `.client` the Python API takes (`uhrcli.segment(..., client=...)`). Dask is imported
here only, so `uhr --version` and local runs never load it.
"""
from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import ClusterError, MissingDependencyError, UsageError, first_line

CONNECT_TIMEOUT = 10  # seconds to reach a scheduler (UHR_DASK_CONNECT_TIMEOUT overrides)
WORKER_WAIT = 30  # seconds to wait for a first worker on a scheduler that has none yet


def _distributed():
    try:
        import distributed
    except ImportError:
        raise MissingDependencyError("--scheduler and --workers need Dask distributed: "
                                     "pip install 'uhrcli[cluster]'") from None
    return distributed


class Cluster:
    """A client on a cluster, and the local cluster it started (if any); close() stops what it started."""

    def __init__(self, client: Any, local: Any = None):
        self.client, self.local = client, local

    @property
    def dashboard_link(self) -> str | None:
        try:
            return self.client.dashboard_link
        except Exception:  # noqa: BLE001 - no dashboard (bokeh missing): not worth failing for
            return None

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            if self.local is not None:
                self.local.close()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def local_cluster(workers: int, threads: int | None = None, dashboard: str | None = ":0") -> Any:
    """N worker processes on this machine, one task at a time each, with the cores shared out as torch threads;
    one GPU per worker where there are GPUs (dask-cuda's LocalCUDACluster when installed, else
    CUDA_VISIBLE_DEVICES set per worker)."""
    distributed = _distributed()
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    cores = os.cpu_count() or 1
    per = threads or max(1, cores // workers)
    env = {"OMP_NUM_THREADS": str(per), "MKL_NUM_THREADS": str(per),
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    common = dict(threads_per_worker=1, dashboard_address=dashboard, silence_logs=logging.ERROR)
    gpus = _gpus()
    if gpus:
        try:
            from dask_cuda import LocalCUDACluster

            return LocalCUDACluster(n_workers=min(workers, gpus), env=env, **common)
        except ImportError:
            pass
        from distributed import Nanny, Scheduler, SpecCluster

        specs = {i: {"cls": Nanny, "options": {"nthreads": 1, "silence_logs": logging.ERROR,
                                               "env": {**env, "CUDA_VISIBLE_DEVICES": str(i % gpus)}}}
                 for i in range(workers)}
        return SpecCluster(workers=specs, scheduler={"cls": Scheduler, "options": {"dashboard_address": dashboard}},
                           silence_logs=logging.ERROR)
    return distributed.LocalCluster(n_workers=workers, processes=True, env=env, **common)


def connect(scheduler: str | None = None, workers: int | None = None, *, threads: int | None = None,
            timeout: float | None = None, dashboard: str | None = ":0") -> Cluster:
    """A client on the cluster at `scheduler` (tcp://HOST:8786), or on `workers` new local worker processes."""
    if scheduler and workers:
        raise UsageError("--scheduler and --workers exclude each other: join a cluster or start one")
    if not scheduler and not workers:
        raise UsageError("give --scheduler tcp://HOST:8786 or --workers N")
    distributed = _distributed()
    if timeout is None:
        timeout = float(os.environ.get("UHR_DASK_CONNECT_TIMEOUT", CONNECT_TIMEOUT))
    if workers:
        local = local_cluster(int(workers), threads, dashboard)
        try:
            client = distributed.Client(local)
        except BaseException:
            local.close()
            raise
        return Cluster(client, local)
    try:
        client = distributed.Client(scheduler, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ClusterError(f"cannot reach the Dask scheduler at {scheduler}: {first_line(exc, 160)} "
                           "(is `dask scheduler` running there, and the port open?)") from None
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT)
    except (TimeoutError, OSError):
        client.close()
        raise ClusterError(f"the Dask scheduler at {scheduler} has no workers (waited {WORKER_WAIT} s): start "
                           f"some with `dask worker {scheduler}`") from None
    return Cluster(client)


def workers_of(client: Any) -> list[str]:
    return sorted(client.scheduler_info(n_workers=-1).get("workers", {}))


def preflight(client: Any, files: Iterable[str | os.PathLike], folders: Iterable[str | os.PathLike]) -> None:
    """Every worker reads `files` and sees `folders` as the client does (a probe file written here, read there);
    else one line naming the worker and what it lacks."""
    from .worker import check_paths

    probes: list[tuple[str, str]] = []
    written: list[Path] = []
    try:
        for folder in dict.fromkeys(str(Path(f).resolve()) for f in folders):
            Path(folder).mkdir(parents=True, exist_ok=True)
            token = uuid.uuid4().hex
            probe = Path(folder) / f".uhr-probe-{token[:12]}"
            probe.write_text(token)
            written.append(probe)
            probes.append((str(probe), token))
        paths: Sequence[str] = [str(Path(f).resolve()) for f in files]
        answers = client.run(check_paths, list(paths), probes)
    finally:
        for p in written:
            p.unlink(missing_ok=True)
    for addr, problem in sorted(answers.items()):
        if problem:
            raise ClusterError(f"worker {addr} {problem}")


__all__ = ["Cluster", "connect", "local_cluster", "preflight", "workers_of"]
