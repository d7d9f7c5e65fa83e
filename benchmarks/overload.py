"""Overload: offer 10x what the cluster can do, with admission control and without. Prints ONE
JSON object on stdout, progress on stderr.

    python benchmarks/overload.py                       # 30 s each way
    python benchmarks/overload.py --seconds 10 --task-ms 5

First the capacity: tasks of ``--task-ms`` (a sleep) run flat out for 5 s on ``--workers``
workers. Then a driver offers ``--factor`` (10) times that rate for ``--seconds``, in batches
every 10 ms, twice: once with ``max_pending`` (``--max-pending``, default: what the workers
finish in 0.5 s) and ``on_overload="raise"``, counting what is refused; once without a limit.
For each: tasks admitted, refused and finished, throughput, p50/p99 latency of the admitted
tasks (submission to result), the cluster's peak RSS (driver and all its child processes,
sampled every 0.5 s) and how the unfinished count grew.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import nbray  # noqa: E402


def log(msg: str) -> None:
    print(f"[overload {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@nbray.remote
def work(seconds):
    time.sleep(seconds)
    return time.time()


def rss_mb() -> float:
    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def capacity(task_s: float, seconds: float = 5.0) -> float:
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        done += len(nbray.get([work.remote(task_s) for _ in range(200)], progress=False))
    return done / (time.perf_counter() - t0)


def offer(rate: float, seconds: float, task_s: float, limit: int | None) -> dict:
    fn = work.options(max_pending=limit, on_overload="raise") if limit else \
        work.options(max_pending=-1)
    admitted, refused = [], 0
    peak, samples, stop = [rss_mb()], [], threading.Event()

    def sampler():
        client = nbray.runtime.core_client.current()
        while not stop.wait(0.5):
            peak.append(rss_mb())
            samples.append(len(client.tasks))
    threading.Thread(target=sampler, daemon=True).start()
    batch = max(1, int(rate * 0.01))
    t0 = time.perf_counter()
    next_at = t0
    while time.perf_counter() - t0 < seconds:
        for _ in range(batch):
            try:
                admitted.append((time.time(), fn.remote(task_s)))
            except nbray.OverloadedError:
                refused += 1
        next_at += 0.01
        pause = next_at - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
    offered_s = time.perf_counter() - t0
    ends = nbray.get([ref for _, ref in admitted], progress=False)
    wall = time.perf_counter() - t0
    stop.set()
    lat = sorted(1000 * (end - sent) for (sent, _), end in zip(admitted, ends))
    pick = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 1) if lat else None  # noqa
    return {"max_pending": limit, "offered": len(admitted) + refused, "offered_s":
            round(offered_s, 2), "admitted": len(admitted), "refused": refused,
            "finished": len(ends), "drain_s": round(wall - offered_s, 2),
            "throughput_per_s": round(len(ends) / wall, 1),
            "latency_ms_p50": pick(0.5), "latency_ms_p99": pick(0.99),
            "latency_ms_max": round(lat[-1], 1) if lat else None,
            "peak_rss_mb": round(max(peak)), "start_rss_mb": round(peak[0]),
            "unfinished_every_5s": samples[::10]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--task-ms", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--factor", type=float, default=10.0)
    ap.add_argument("--max-pending", type=int, default=None)
    args = ap.parse_args(argv)
    task_s = args.task_ms / 1000
    nbray.init(num_workers=args.workers)
    try:
        cap = capacity(task_s)
        log(f"capacity {cap:,.0f} tasks/s of {args.task_ms:g} ms")
        limit = args.max_pending or max(args.workers, int(cap * 0.5))
        out = {"workers": args.workers, "task_ms": args.task_ms, "capacity_per_s": round(cap),
               "offered_per_s": round(cap * args.factor), "runs": []}
        for lim in (limit, None):
            log(f"offering {cap * args.factor:,.0f}/s for {args.seconds:g} s, "
                f"max_pending={lim}")
            run = offer(cap * args.factor, args.seconds, task_s, lim)
            log(f"  {run}")
            out["runs"].append(run)
    finally:
        nbray.shutdown()
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
