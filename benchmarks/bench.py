"""nbray's benchmark: prints ONE JSON object on stdout, progress on stderr.

    python benchmarks/bench.py            # the full run (a few minutes on 2 cores)
    python benchmarks/bench.py --quick    # smaller sample counts, for a smoke run
    python benchmarks/bench.py --million  # also push 1,000,000 tasks through, watching RSS
    python benchmarks/bench.py --backend ray   # on Ray: through nbray and directly, side by side

Every figure is measured on an embedded cluster with 2 workers (``--workers`` changes it).
See benchmarks/README.md for what each figure means.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
import psutil

import nbray

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOOR = os.path.normpath(os.path.join(REPO, "..", "shared", "bench", "floor.py"))
MB = 1024 * 1024


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- the tasks -----------------------------------------------------------------------------------
@nbray.remote
def noop():
    return None


@nbray.remote
def inc(x):
    return x + 1


@nbray.remote
def fan_out(n):
    return len(nbray.get([noop.remote() for _ in range(n)], progress=False))


@nbray.remote
def array_sum(a):
    return float(a.sum())


@nbray.remote
class Target:
    def noop(self):
        return None


@nbray.remote
class Caller:
    """Calls a set of actors, round robin, and waits for all its calls."""

    def __init__(self, targets):
        self.targets = targets

    def run(self, n):
        k = len(self.targets)
        nbray.get([self.targets[i % k].noop.remote() for i in range(n)], progress=False)
        return n


# ---- helpers -------------------------------------------------------------------------------------
def percentile(sorted_values: list, q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[i]


def cluster_procs() -> list:
    """The cluster's processes: the driver's children, recursively (head, node, workers)."""
    return psutil.Process().children(recursive=True)


def rss_mb(procs) -> float:
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return round(total / MB, 1)


def settle(seconds: float = 1.0) -> None:
    """Let the cluster go idle: leases return after ``lease_idle_s``, stats catch up."""
    gc.collect()
    time.sleep(seconds)


def best_of(runs: int, fn, warmup: int = 0) -> list:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        out.append(fn())
    return out


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ---- the measurements ----------------------------------------------------------------------------
def bench_rtt(samples: int, warmup: int) -> dict:
    for _ in range(warmup):
        nbray.get(noop.remote())
    lat = []
    for _ in range(samples):
        t = time.perf_counter()
        nbray.get(noop.remote())
        lat.append((time.perf_counter() - t) * 1e6)
    lat.sort()
    return {"noop_rtt_us_p50": round(statistics.median(lat), 1),
            "noop_rtt_us_p99": round(percentile(lat, 0.99), 1),
            "noop_rtt_us_mean": round(statistics.fmean(lat), 1),
            "noop_rtt_samples": samples}


def burst_rate(n: int) -> float:
    """Submit ``n`` no-op tasks, get them all: tasks per second."""
    t = time.perf_counter()
    refs = [noop.remote() for _ in range(n)]
    nbray.get(refs, progress=False)
    dt = time.perf_counter() - t
    del refs
    return n / dt


def bench_async(n: int, runs: int) -> dict:
    def once():
        return burst_rate(n)
    nbray.get([noop.remote() for _ in range(min(n, 1000))], progress=False)  # warm leases
    before = control_plane()
    rates = best_of(runs, once)
    after = control_plane()
    tasks = n * runs
    per_task = {k: (after[k] - before[k]) / tasks for k in before}
    return {"async_tasks_per_s": round(max(rates)),
            "async_tasks_per_s_runs": [round(r) for r in rates],
            "async_tasks": n,
            # what each task costs the parts that must not grow with the task rate
            "per_task": {
                "head_messages": round(per_task["head_msgs"], 5),
                "head_cpu_us": round(per_task["head_cpu_s"] * 1e6, 2),
                "node_messages": round(per_task["node_msgs"], 5),
                "node_cpu_us": round(per_task["node_cpu_s"] * 1e6, 2),
                "driver_messages": round(per_task["driver_msgs"], 4),
                "worker_cpu_us": round(per_task["worker_cpu_s"] * 1e6, 2)}}


def bench_actors(samples: int, warmup: int, calls: int, runs: int) -> dict:
    """Actor calls: one at a time, a burst to one actor, and 4 callers x 4 actors."""
    a = Target.remote()
    for _ in range(warmup):
        nbray.get(a.noop.remote())
    lat = []
    for _ in range(samples):
        t = time.perf_counter()
        nbray.get(a.noop.remote())
        lat.append((time.perf_counter() - t) * 1e6)
    lat.sort()

    def burst():
        t = time.perf_counter()
        nbray.get([a.noop.remote() for _ in range(calls)], progress=False)
        return calls / (time.perf_counter() - t)
    rates = best_of(runs, burst, warmup=1)

    targets = [Target.remote() for _ in range(4)]
    callers = [Caller.remote(targets) for _ in range(4)]
    per_caller = calls // 4
    nbray.get([c.run.remote(100) for c in callers], progress=False)         # warm up every pair

    def many():
        t = time.perf_counter()
        nbray.get([c.run.remote(per_caller) for c in callers], progress=False)
        return 4 * per_caller / (time.perf_counter() - t)
    many_rates = best_of(runs, many)
    for h in [a, *targets, *callers]:
        nbray.kill(h)
    return {"actor_rtt_us_p50": round(statistics.median(lat), 1),
            "actor_rtt_us_p99": round(percentile(lat, 0.99), 1),
            "actor_calls_per_s": round(max(rates)),
            "actor_calls_per_s_runs": [round(r) for r in rates],
            "actor_calls": calls,
            "actors_4x4_calls_per_s": round(max(many_rates)),
            "actors_4x4_calls_per_s_runs": [round(r) for r in many_rates]}


def bench_toggle(flag: str, n: int, runs: int) -> dict:
    """``n`` async no-op tasks with the recording ``flag`` of CONFIG (``lineage``,
    ``task_events``) on and off, alternated in one cluster, the order swapped each round
    (both are recorded in the process that owns the tasks, here the driver)."""
    from nbray.config import CONFIG
    on, off = [], []
    saved = getattr(CONFIG, flag)
    try:
        for i in range(runs):      # the order alternates: neither gets the first slot
            pairs = ((True, on), (False, off))
            for value, out in (pairs if i % 2 == 0 else pairs[::-1]):
                setattr(CONFIG, flag, value)
                out.append(burst_rate(n))
    finally:
        setattr(CONFIG, flag, saved)
    best_on, best_off = max(on), max(off)
    return {f"{flag}_on_tasks_per_s": round(best_on), f"{flag}_off_tasks_per_s": round(best_off),
            f"{flag}_overhead_pct": round(100 * (best_off - best_on) / best_off, 1),
            f"{flag}_runs": {"on": [round(r) for r in on], "off": [round(r) for r in off]}}


def control_plane() -> dict:
    """Counters of the head, the node and the driver's client, and their CPU time."""
    import psutil
    from nbray import api
    from nbray.runtime import cluster, protocol as P
    record, client = api._driver.record, api._driver.client
    head = cluster.ask(record, record.head_address, P.ClusterInfoRequest())
    node = cluster.ask(record, record.node_address, P.NodeInfoRequest())
    head_pid, node_pid = head.head["pid"], node.info["pid"]
    workers = psutil.Process(node_pid).children()
    cpu = lambda p: sum(psutil.Process(p).cpu_times()[:2]) if psutil.pid_exists(p) else 0.0
    return {"head_msgs": head.head["messages_received"], "head_cpu_s": cpu(head_pid),
            "node_msgs": node.info["messages_received"], "node_cpu_s": cpu(node_pid),
            "worker_cpu_s": sum(cpu(w.pid) for w in workers),
            "driver_msgs": client.ep.sent + client.ep.received + client._pusher.sent}


def bench_chain(length: int, runs: int) -> dict:
    def once():
        t = time.perf_counter()
        r = inc.remote(0)
        for _ in range(length - 1):
            r = inc.remote(r)
        value = nbray.get(r)
        dt = time.perf_counter() - t
        assert value == length, value
        return dt
    times = best_of(runs, once)
    return {f"chain_{length}_s": round(min(times), 4),
            f"chain_{length}_s_runs": [round(x, 4) for x in times]}


def bench_nested(n: int, runs: int) -> dict:
    def once():
        t = time.perf_counter()
        got = nbray.get(fan_out.remote(n))
        dt = time.perf_counter() - t
        assert got == n, got
        return dt
    times = best_of(runs, once, warmup=1)
    return {f"nested_{n}_s": round(min(times), 4),
            f"nested_{n}_s_runs": [round(x, 4) for x in times]}


def bench_put_get(n: int) -> dict:
    value = os.urandom(1024)
    for _ in range(min(100, n)):
        nbray.get(nbray.put(value))
    t = time.perf_counter()
    for _ in range(n):
        assert len(nbray.get(nbray.put(value))) == 1024
    dt = time.perf_counter() - t
    return {"put_get_1kb_per_s": round(n / dt), "put_get_1kb_ops": n}


def bench_array(runs: int) -> dict:
    nbytes = 100 * 1000 * 1000                        # 100 MB (decimal), 12.5M float64
    a = np.random.default_rng(0).random(nbytes // 8)
    expected = float(a.sum())
    t = time.perf_counter()
    ref = nbray.put(a)
    put_s = time.perf_counter() - t

    def once():
        t = time.perf_counter()
        s = nbray.get(array_sum.remote(ref))
        dt = time.perf_counter() - t
        assert abs(s - expected) <= 1e-6 * abs(expected), (s, expected)
        return dt
    times = best_of(runs, once, warmup=1)
    del ref, a
    gc.collect()
    best = min(times)
    return {"array_100mb_gb_s": round(nbytes / 1e9 / best, 2),
            "array_100mb_task_s": round(best, 4),
            "array_100mb_task_s_runs": [round(x, 4) for x in times],
            "put_100mb_s": round(put_s, 4),
            "put_100mb_gb_s": round(nbytes / 1e9 / put_s, 2)}


def bench_idle_rss() -> dict:
    settle(1.5)
    procs = cluster_procs()
    return {"idle_rss_mb": rss_mb(procs),
            "idle_processes": len(procs),
            "driver_rss_mb": rss_mb([psutil.Process()])}


def bench_many(total: int, batch: int) -> dict:
    """Push ``total`` no-op tasks through in batches; does memory stay flat?"""
    def all_rss():
        gc.collect()
        return rss_mb([psutil.Process(), *cluster_procs()])
    settle(1.0)
    before = all_rss()
    peak = before
    t = time.perf_counter()
    done = 0
    next_report = time.monotonic() + 10
    while done < total:
        k = min(batch, total - done)
        refs = [noop.remote() for _ in range(k)]
        nbray.get(refs, progress=False)
        del refs
        done += k
        if time.monotonic() > next_report:
            next_report = time.monotonic() + 10
            peak = max(peak, all_rss())
            log(f"  {done:,}/{total:,} tasks, {done / (time.perf_counter() - t):,.0f} tasks/s, "
                f"RSS {peak:.0f} MB")
    dt = time.perf_counter() - t
    settle(1.5)
    after = all_rss()
    return {"tasks": total, "batch": batch, "seconds": round(dt, 2),
            "tasks_per_s": round(total / dt),
            "rss_before_mb": before, "rss_after_mb": after,
            "rss_peak_sampled_mb": max(peak, after),
            "rss_growth_mb": round(after - before, 1)}


def run_floor(timeout: float) -> dict:
    if not os.path.exists(FLOOR):
        return {"skipped": f"{FLOOR} not found"}
    try:
        out = subprocess.run([sys.executable, FLOOR], capture_output=True, text=True,
                             timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"skipped": f"floor.py did not finish within {timeout:.0f}s"}
    if out.returncode != 0:
        return {"skipped": f"floor.py exited with code {out.returncode}",
                "stderr": out.stderr[-2000:]}
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"skipped": "floor.py did not print JSON", "stdout": out.stdout[-2000:]}


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, text=True, capture_output=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


# ---- main ----------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sample counts (a smoke run)")
    ap.add_argument("--million", action="store_true",
                    help="run 1,000,000 tasks (instead of 100,000) for the memory check")
    ap.add_argument("--workers", type=int, default=2, help="workers of the cluster (default 2)")
    ap.add_argument("--no-floor", action="store_true", help="skip the machine floor")
    ap.add_argument("--rounds", type=int, default=None,
                    help="--backend ray: runs of each rate workload per side (default 9)")
    ap.add_argument("--backend", choices=("nbray", "ray"), default="nbray",
                    help="ray: the core workloads on Ray through nbray and on Ray directly, "
                         "side by side (benchmarks/ray_compare.py)")
    ap.add_argument("--address", default=None,
                    help="--backend ray: a running Ray cluster's address (default: start one)")
    args = ap.parse_args(argv)
    q = args.quick
    result: dict = {
        "nbray_version": nbray.__version__, "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "workers": args.workers, "quick": q,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    t_all = time.perf_counter()
    if args.backend == "ray":
        import contextlib
        import ray_compare
        with contextlib.redirect_stdout(sys.stderr):    # Ray's own warnings print to stdout
            result.update(ray_compare.run(q, log, args.address, args.rounds))
        result["floor"] = {"skipped": "--no-floor"} if args.no_floor else run_floor(600)
        result["bench_total_s"] = round(time.perf_counter() - t_all, 1)
        print(json.dumps(result, indent=2))
        return 0
    log(f"starting an embedded cluster with {args.workers} workers")
    t = time.perf_counter()
    nbray.init(num_workers=args.workers)
    try:
        nbray.get(noop.remote())
        result["startup_s"] = round(time.perf_counter() - t, 3)
        log(f"startup_s = {result['startup_s']}")

        log("no-op round trips")
        result.update(bench_rtt(samples=300 if q else 3000, warmup=100 if q else 500))
        log(f"  p50 {result['noop_rtt_us_p50']} us, p99 {result['noop_rtt_us_p99']} us")

        log("idle memory")
        result.update(bench_idle_rss())
        log(f"  cluster {result['idle_rss_mb']} MB in {result['idle_processes']} processes, "
            f"driver {result['driver_rss_mb']} MB")

        n = 2000 if q else 20000
        log(f"{n:,} async no-op tasks x 3")
        result.update(bench_async(n, runs=3))
        log(f"  {result['async_tasks_per_s_runs']} tasks/s")

        for flag in ("lineage", "task_events"):
            log(f"{flag} recording on and off, {n:,} async tasks x 3 each")
            result.update(bench_toggle(flag, n, runs=3))
            log(f"  on {result[f'{flag}_runs']['on']}, off {result[f'{flag}_runs']['off']}: "
                f"overhead {result[f'{flag}_overhead_pct']}% (best of each)")

        log("chain of 1,000 dependent tasks")
        result.update(bench_chain(1000, runs=1 if q else 3))
        log(f"  {result['chain_1000_s']} s")

        log("a task that submits 100 sub-tasks")
        result.update(bench_nested(100, runs=2 if q else 5))
        log(f"  {result['nested_100_s']} s")

        log("put + get of 1 KB")
        result.update(bench_put_get(500 if q else 5000))
        log(f"  {result['put_get_1kb_per_s']} ops/s")

        log("actors: round trips, a burst to one actor, 4 callers x 4 actors")
        result.update(bench_actors(samples=300 if q else 3000, warmup=100 if q else 500,
                                   calls=2000 if q else 20000, runs=2 if q else 3))
        log(f"  p50 {result['actor_rtt_us_p50']} us, p99 {result['actor_rtt_us_p99']} us, "
            f"{result['actor_calls_per_s_runs']} calls/s to one actor, "
            f"{result['actors_4x4_calls_per_s_runs']} calls/s 4x4")

        log("100 MB array: put once, pass to a task")
        result.update(bench_array(runs=2 if q else 5))
        log(f"  put {result['put_100mb_s']} s, task {result['array_100mb_gb_s']} GB/s")

        if args.million:
            log("1,000,000 tasks in batches of 10,000")
            result["million_tasks"] = bench_many(1_000_000, 10_000)
            log(f"  {result['million_tasks']}")
        else:
            total = 20_000 if q else 100_000
            log(f"{total:,} tasks in batches of 10,000")
            result["rss_flat_100k"] = bench_many(total, 10_000)
            log(f"  {result['rss_flat_100k']}")
    finally:
        log("shutting the cluster down")
        nbray.shutdown()

    deadline = time.monotonic() + 10
    while cluster_procs() and time.monotonic() < deadline:
        time.sleep(0.1)
    left = cluster_procs()
    result["leftover_processes"] = len(left)
    if left:
        log(f"WARNING: processes left behind: {[p.pid for p in left]}")

    if args.no_floor:
        result["floor"] = {"skipped": "--no-floor"}
    else:
        log(f"machine floor: {FLOOR}")
        result["floor"] = run_floor(timeout=600)
    result["bench_total_s"] = round(time.perf_counter() - t_all, 1)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
