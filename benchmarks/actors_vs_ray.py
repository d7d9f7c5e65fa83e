"""Actor workloads on nbray's own runtime and on Ray, in one run: prints ONE JSON object.

    python benchmarks/actors_vs_ray.py            # needs the ray extra: pip install -e ".[ray]"
    python benchmarks/actors_vs_ray.py --quick

The workloads of benchmarks/bench.py's actor section: a method round trip one call at a time
(median and p99, µs; timed in blocks of calls in a row, see _BLOCK), 20,000 calls submitted to
one actor then gathered (calls/s), and 4 callers each calling 4 actors round robin (calls/s).
Both runtimes run at once in this process, nbray's embedded cluster with 2 workers and a local
Ray instance with 2 CPUs, and the two are measured alternately (a block or a run of each in
turn, the order swapped every round), so the machine's drift, and the other runtime's idle
processes, fall on both alike. Rates are the best of the runs, and each has the median too.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

import nbray

from bench import log, percentile, run_floor
from ray_compare import _Target, _rate, alternate

# the actor classes live in ray_compare.py, beside this file: nbray's workers (started from the
# working directory) import it from here too
_HERE = os.path.dirname(os.path.abspath(__file__))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_HERE, os.environ.get("PYTHONPATH"))
                                           if p)


#: round trips are timed in blocks of this many calls in a row, a block of each side in turn:
#: one call at a time, as a loop in a notebook makes them. (Timed one call of each side in
#: turn instead, each side's processes sit idle while the other's call runs, and this machine's
#: cores wake slowly from idle: measured, nbray's median went from 236 to 470 µs, also with a
#: 0.8 ms sleep between its calls and no Ray.)
_BLOCK = 100


def _caller(get):
    class Caller:
        """Calls a set of actors, round robin, and waits for all its calls."""

        def __init__(self, targets):
            self.targets = targets

        def run(self, n):
            k = len(self.targets)
            get([self.targets[i % k].noop.remote() for i in range(n)])
            return n
    return Caller


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sample counts (a smoke run)")
    ap.add_argument("--no-floor", action="store_true", help="skip the machine floor")
    args = ap.parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):    # Ray's own warnings print to stdout
        result = _run(args.quick)
    result["floor"] = {"skipped": "--no-floor"} if args.no_floor else run_floor(600)
    print(json.dumps(result, indent=2))
    return 0


def _run(q: bool) -> dict:
    import ray
    samples, calls, runs = (300, 2000, 3) if q else (3000, 20000, 7)
    log("starting nbray's embedded cluster (2 workers) and a local Ray instance (2 CPUs)")
    nbray.init(num_workers=2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    sides = {}
    try:
        def nbray_get(refs):
            return nbray.get(refs, progress=False)      # as ray.get: no progress bar
        for name, remote, get in (("nbray", nbray.remote, nbray_get),
                                  ("ray", ray.remote, ray.get)):
            Target, Caller = remote(_Target), remote(_caller(get))
            one = Target.remote()
            targets = [Target.remote() for _ in range(4)]
            sides[name] = {"get": get, "one": one,
                           "callers": [Caller.remote(targets) for _ in range(4)]}
        for s in sides.values():        # warm: every actor up, every caller-target pair used
            s["get"]([s["one"].noop.remote() for _ in range(500)])
            s["get"]([c.run.remote(100) for c in s["callers"]])

        log(f"actor round trips, {samples} each, in alternated blocks of {_BLOCK}")

        def rtts(s):
            out = []
            for _ in range(_BLOCK):
                t = time.perf_counter()
                s["get"](s["one"].noop.remote())
                out.append((time.perf_counter() - t) * 1e6)
            return out
        lat = {k: [x for block in v for x in block]
               for k, v in alternate(samples // _BLOCK, rtts, sides, warm=False).items()}

        log(f"{calls:,} calls to one actor, {runs} runs each")

        bursts = alternate(runs, lambda s: _rate(s, calls, lambda s: s["one"].noop.remote()),
                           sides, warm=False)

        log(f"4 callers x 4 actors, {calls:,} calls, {runs} runs each")

        def many(s):
            t = time.perf_counter()
            s["get"]([c.run.remote(calls // 4) for c in s["callers"]])
            return 4 * (calls // 4) / (time.perf_counter() - t)
        fours = alternate(runs, many, sides, warm=False)
    finally:
        ray.shutdown()
        nbray.shutdown()
    result = {"ray_version": ray.__version__, "quick": q,
              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    for name in sides:
        ordered = sorted(lat[name])
        result[name] = {
            "actor_rtt_us_p50": round(statistics.median(ordered), 1),
            "actor_rtt_us_p99": round(percentile(ordered, 0.99), 1),
            "actor_calls_per_s": round(max(bursts[name])),
            "actor_calls_per_s_median": round(statistics.median(bursts[name])),
            "actors_4x4_calls_per_s": round(max(fours[name])),
            "actors_4x4_calls_per_s_median": round(statistics.median(fours[name])),
            "samples": samples, "calls": calls, "runs": runs}
    return result


if __name__ == "__main__":
    sys.exit(main())
