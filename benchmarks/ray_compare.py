"""``bench.py --backend ray``: the core workloads on Ray through nbray and on Ray directly, in
one run on one Ray instance, so the difference is what nbray's layer adds.

Each workload is the same Python function made remote twice, by ``nbray.remote`` (on the Ray
backend) and by ``ray.remote``; the two are measured alternately (a sample or a run of each in
turn, the order swapped every round), so drift of the machine falls on both alike. Latencies
(round trips, and one put + get) are medians of the interleaved samples; rates and durations
the best of the runs. Each row also
has ``nbray_adds_pct_paired``: the median, over the rounds, of what nbray added in that round
against Ray's run right next to it (a figure less moved by the machine's drift between rounds
than a comparison of two bests).
"""
from __future__ import annotations

import statistics
import time

import numpy as np

import nbray


def _noop():
    return None


def _array_sum(a):
    return float(a.sum())


class _Target:
    def noop(self):
        return None


def _inc(x):
    return x + 1


NB: dict = {}       # the workloads' remote functions and classes, through nbray
RAY: dict = {}      # the same, made by ray.remote


def _make(ray) -> None:
    for api, remote, get, put in ((NB, nbray.remote, nbray.get, nbray.put),
                                  (RAY, ray.remote, ray.get, ray.put)):
        noop = remote(_noop)

        def fan_out(n, noop=noop, get=get):     # a closure: it travels by value, with noop
            return len(get([noop.remote() for _ in range(n)]))
        api.update(noop=noop, inc=remote(_inc), array_sum=remote(_array_sum),
                   fan_out=remote(fan_out), Target=remote(_Target), get=get, put=put)


def alternate(rounds: int, fn, sides: dict, warm: bool = True) -> dict:
    """``fn(side)`` for each of two ``sides`` (name -> what ``fn`` takes), ``rounds`` times,
    the order swapped each round; with ``warm``, after one round not counted (each worker
    imports what the workload needs once). The figures of each side by its name."""
    names = list(sides)
    if warm:
        for name in names:
            fn(sides[name])
    out = {name: [] for name in names}
    for i in range(rounds):
        for name in (names if i % 2 == 0 else names[::-1]):
            out[name].append(fn(sides[name]))
    return out


def _alternate(rounds: int, fn) -> dict:
    return alternate(rounds, fn, {"nbray": NB, "ray": RAY})


def _rtt(api, call) -> float:
    t = time.perf_counter()
    api["get"](call(api))
    return (time.perf_counter() - t) * 1e6


def _rate(api, n: int, submit) -> float:
    t = time.perf_counter()
    api["get"]([submit(api) for _ in range(n)])
    return n / (time.perf_counter() - t)


def _chain(api, length: int) -> float:
    t = time.perf_counter()
    ref = api["put"](0)
    for _ in range(length):
        ref = api["inc"].remote(ref)
    assert api["get"](ref) == length
    return time.perf_counter() - t


def _entry(what: str, unit: str, figures: dict, better: str) -> dict:
    """One row: nbray's figure, Ray's, and what nbray adds in percent (positive: slower)."""
    pick = statistics.median if unit == "us" else (max if better == "higher" else min)
    nb, direct = pick(figures["nbray"]), pick(figures["ray"])
    added = (nb - direct) / direct if better == "lower" else (direct - nb) / direct
    pairs = [(n - r) / r if better == "lower" else (r - n) / r
             for n, r in zip(figures["nbray"], figures["ray"])]
    return {"workload": what, "unit": unit, "nbray_on_ray": round(nb, 3 if unit == "s" else 1),
            "ray_direct": round(direct, 3 if unit == "s" else 1),
            "nbray_adds_pct": round(100 * added, 1),
            "nbray_adds_pct_paired": round(100 * statistics.median(pairs), 1),
            "samples": len(figures["nbray"])}


def run(quick: bool, log, address: str | None = None, rounds: int | None = None) -> dict:
    import ray
    log("starting Ray through nbray.init(backend='ray')")
    t = time.perf_counter()
    ctx = nbray.init(backend="ray", address=address, num_cpus=None if address else 2,
                     include_dashboard=False, log_to_driver=False)
    startup = time.perf_counter() - t
    _make(ray)
    rows = []
    try:
        for api in (NB, RAY):       # warm both: workers, function exports, leases
            api["get"]([api["noop"].remote() for _ in range(500)])
        samples = 300 if quick else 2000
        rounds = rounds or (3 if quick else 9)
        log(f"no-op task round trips, {samples} each, interleaved")
        rows.append(_entry("task round trip", "us",
                           _alternate(samples, lambda a: _rtt(a, lambda a: a["noop"].remote())),
                           "lower"))
        n = 2000 if quick else 10000
        log(f"{n:,} async no-op tasks, {rounds} runs each")
        rows.append(_entry(f"{n:,} async tasks", "tasks/s", _alternate(
            rounds, lambda a: _rate(a, n, lambda a: a["noop"].remote())), "higher"))
        log("chain of 300 dependent tasks")
        rows.append(_entry("chain of 300 tasks", "s", _alternate(rounds,
                                                                 lambda a: _chain(a, 300)),
                           "lower"))
        log("a task that submits 100 sub-tasks")
        rows.append(_entry("nested: 1 task of 100", "s", _alternate(
            rounds, lambda a: _timed(lambda: a["get"](a["fan_out"].remote(100)))),
            "lower"))
        m = 500 if quick else 3000
        log(f"put + get of 1 KB, {m} each, interleaved")
        value = b"x" * 1024
        rows.append(_entry("put+get 1 KB", "us", _alternate(
            m, lambda a: _timed(lambda: a["get"](a["put"](value))) * 1e6), "lower"))
        targets = {id(NB): NB["Target"].remote(), id(RAY): RAY["Target"].remote()}
        for api in (NB, RAY):
            api["get"]([targets[id(api)].noop.remote() for _ in range(200)])
        log(f"actor round trips, {samples} each, interleaved")
        rows.append(_entry("actor round trip", "us", _alternate(
            samples, lambda a: _rtt(a, lambda a: targets[id(a)].noop.remote())), "lower"))
        log(f"{n:,} calls to one actor, {rounds} runs each")
        rows.append(_entry(f"{n:,} calls to one actor", "calls/s", _alternate(
            rounds, lambda a: _rate(a, n, lambda a: targets[id(a)].noop.remote())), "higher"))
        # one array, put once, for both sides (nbray.put is ray.put): where Ray's store
        # placed each of two copies moved the figure by a few percent either way
        big = RAY["put"](np.random.default_rng(0).random(100_000_000 // 8))
        log("100 MB array passed to a task")
        rows.append(_entry("100 MB array to a task", "s", _alternate(
            rounds, lambda a: _timed(lambda: a["get"](a["array_sum"].remote(big)))),
            "lower"))
    finally:
        nbray.shutdown()
    return {"backend": "ray", "ray_version": ray.__version__, "startup_s": round(startup, 2),
            "resources": {k: v for k, v in ctx.resources.items() if k in ("CPU", "GPU")},
            "workloads": rows,
            "max_nbray_adds_pct": max(r["nbray_adds_pct"] for r in rows),
            "max_nbray_adds_pct_paired": max(r["nbray_adds_pct_paired"] for r in rows)}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t
