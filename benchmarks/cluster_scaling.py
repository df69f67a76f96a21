"""`uhr segment` on a Dask LocalCluster of 1 and 2 worker processes (1 thread each): a folder of rasters and one
large raster split across the workers.

Run by hand (minutes to tens of minutes on 2 cores):
    python benchmarks/cluster_scaling.py --side 31623 --model fcn-tiny      # one 1 GP raster, a 1 GP folder
    python benchmarks/cluster_scaling.py --side 10000                       # demo ISDNet at 100 MP
Reports per configuration: MP/s; scheduler overhead per task in three ways (ms): noop_ms_per_task, the
cluster's own cost (wall time of 400 empty tasks / 400); gap_ms_between_tasks, a worker's idle gap between two
tasks of a phase (median); idle_ms_per_task, (wall x workers - task compute) / tasks, i.e. everything that
is not a task computing: the client's serial work (reading headers, writing the GeoTIFF), the barriers
between passes and the scheduler; bytes sent per task (pickled arguments plus
the result, client <-> workers; the pixels themselves go through shared storage, reported as storage bytes per
task: input read once plus the scratch store written); peak RSS of each worker and of the client.
Each configuration gets a fresh cluster, so a worker's peak RSS is that run's. The whole run's JSON goes to
stdout's last line.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "examples" / "isdnet-r18-slim-austin.safetensors"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


class _Meter:
    """Wraps client.submit: pickled size of every task's arguments, and its future (results sized after)."""

    def __init__(self, client):
        self.client, self.futures, self.sent = client, [], []
        self._submit = client.submit

    def __enter__(self):
        def submit(fn, *args, **kw):
            import cloudpickle

            f = self._submit(fn, *args, **kw)
            self.sent.append(len(cloudpickle.dumps((fn, args))))
            self.futures.append(f)
            return f

        self.client.submit = submit
        return self

    def __exit__(self, *exc):
        self.client.submit = self._submit

    def result_bytes(self) -> list[int]:
        out = []
        for f in self.futures:
            try:
                out.append(len(pickle.dumps(f.result(timeout=60))))
            except Exception:  # noqa: BLE001 - a failed or released task: nothing came back
                out.append(0)
        return out


def _gaps_ms(stream: list[dict]) -> tuple[float, float, int]:
    """(median idle gap between consecutive tasks of one phase on one worker, ms; sum of compute seconds;
    tasks)."""
    by_worker: dict[str, list[tuple[float, float, str]]] = {}
    compute = 0.0
    for t in stream:
        for ss in t.get("startstops", ()):
            if ss.get("action") == "compute":
                phase = str(t.get("key", "")).split("-")[1] if "-" in str(t.get("key", "")) else "?"
                by_worker.setdefault(t["worker"], []).append((ss["start"], ss["stop"], phase))
                compute += ss["stop"] - ss["start"]
    gaps = []
    for items in by_worker.values():
        items.sort()
        for (a0, a1, pa), (b0, b1, pb) in zip(items, items[1:]):
            if pa == pb and b0 >= a1:
                gaps.append((b0 - a1) * 1000)
    n = sum(len(v) for v in by_worker.values())
    return (statistics.median(gaps) if gaps else 0.0), compute, n


def run_config(kind: str, src, out: Path, workers: int, model_kw: dict, tile: int | None, split_pixels: int) -> dict:
    import distributed

    from uhrcli.segment import segment

    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, env=env,
                                       dashboard_address=None, silence_logs=40)
    client = distributed.Client(cluster)
    try:
        client.register_plugin(type("UhrTaskTimes", (_TaskTimes, distributed.WorkerPlugin), {})(),
                               name="uhr-task-times")
        client.run(lambda: __import__("uhrcli.segment"))  # imports, not the run, pay for torch
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        target = out / ("big.tif" if kind == "raster" else "folder")
        scratch = out / "scratch"
        sizes: list[int] = []

        def watch(event, done, total):  # the scratch store's size just before the client writes the output
            if event == "phase:writing":
                sizes.append(_dir_bytes(scratch))

        with _Meter(client) as meter:
            t0 = time.perf_counter()
            res = segment(str(src), target, client=client, tile=tile, overwrite=True, scratch=scratch,
                          split_pixels=split_pixels, progress=watch, **model_kw)
            seconds = time.perf_counter() - t0
        results = meter.result_bytes()
        t1 = time.perf_counter()  # the cluster's own cost of a task: a round of tiny ones
        client.gather(client.map(_noop, range(NOOP_TASKS), pure=False))
        noop_ms = (time.perf_counter() - t1) * 1000 / NOOP_TASKS
        rss = client.run(_rss_mb)
        log = client.run(_task_log)
        stream_like = [t for v in log.values() for t in v]
        gap, compute, tasks = _gaps_ms(stream_like)
        pixels = sum(r.height * r.width for r in res)
        ntasks = len(meter.sent)
        in_bytes = sum(Path(r.input).stat().st_size for r in res)
        return {
            "kind": kind, "workers": workers, "rasters": len(res), "failed": len(res.failed), "mp": pixels / 1e6,
            "seconds": round(seconds, 2), "mp_per_s": round(pixels / 1e6 / seconds, 3), "tasks": ntasks,
            "compute_s": round(compute, 2), "worker_busy": round(compute / (seconds * workers), 3),
            "idle_ms_per_task": round((seconds * workers - compute) * 1000 / max(1, tasks), 1),
            "gap_ms_between_tasks": round(gap, 2), "noop_ms_per_task": round(noop_ms, 2),
            "bytes_sent_per_task": int((sum(meter.sent) + sum(results)) / max(1, ntasks)),
            "storage_bytes_per_task": int((in_bytes + (max(sizes) if sizes else 0)) / max(1, ntasks)),
            "peak_rss_mb_workers": sorted(round(v) for v in rss.values()), "peak_rss_mb_client": round(_rss_mb()),
            "tiles_recomputed": [r.stats.extra.get("tiles_recomputed") for r in res if "tiles_recomputed" in r.stats.extra],
        }
    finally:
        client.close()
        cluster.close()


NOOP_TASKS = 400


def _noop(i: int) -> int:
    return i


def _task_log(dask_worker) -> list[dict]:
    return list(getattr(dask_worker, "_uhr_task_log", []))


class _TaskTimes:
    """A worker plugin recording each task's compute start and stop (the task stream, without the dashboard)."""

    def setup(self, worker):
        self.worker = worker
        self.t: dict = {}
        worker._uhr_task_log = []

    def transition(self, key, start, finish, **kw):
        now = time.time()
        if finish == "executing":
            self.t[key] = now
        elif start == "executing" and key in self.t:
            self.worker._uhr_task_log.append({"key": key, "worker": self.worker.address,
                         "startstops": [{"action": "compute", "start": self.t.pop(key), "stop": now}]})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=31623, help="side of the single raster (31623: 1 GP)")
    ap.add_argument("--folder-side", type=int, default=None, help="side of each folder raster (default side/4)")
    ap.add_argument("--folder-n", type=int, default=16, help="rasters in the folder (default 16)")
    ap.add_argument("--model", default="demo", help="demo (examples/ ISDNet checkpoint) or a registry name "
                    "(random weights)")
    ap.add_argument("--tile", type=int, default=None)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--only", choices=("raster", "folder"), default=None)
    ap.add_argument("--cache-dir", default=None, help="folder of the synthetic rasters (default ~/.cache/uhr/bench)")
    ap.add_argument("--out", default=None, help="work folder (default: a temporary one, removed)")
    a = ap.parse_args()

    from uhrcli.bench.synth import cached_raster

    model_kw = dict(weights=str(DEMO)) if a.model == "demo" else dict(model=a.model, weights="random")
    big, _ = cached_raster(a.side, a.cache_dir)
    fside = a.folder_side or a.side // 4
    one, _ = cached_raster(fside, a.cache_dir)
    work = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="uhr-cluster-bench-"))
    folder = work / "in"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(a.folder_n):
        dst = folder / f"r{i:02d}.tif"
        if not dst.exists():
            try:
                os.link(one, dst)
            except OSError:
                shutil.copy(one, dst)
    records = []
    try:
        for kind, src in (("raster", big), ("folder", folder)):
            if a.only and kind != a.only:
                continue
            for n in (int(v) for v in a.workers.split(",")):
                rec = run_config(kind, src, work / f"{kind}-{n}", n, model_kw, a.tile, split_pixels=1 << 62)
                rec.update(model=a.model, side=a.side if kind == "raster" else fside)
                records.append(rec)
                print(json.dumps(rec), flush=True)
    finally:
        if not a.out:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(records))


if __name__ == "__main__":
    main()
