"""The study's stream-processing program on the dataflow IR, vanilla against group scheduling.
Prints ONE JSON object on stdout, progress on stderr; with ``--plot`` also writes the latency
CDF and latency against data size as bokeh HTML and PNG under ``benchmarks/results/``.

    python benchmarks/stream_ir.py --plot                       # the evaluation (a few min)
    python benchmarks/stream_ir.py --nodes 2 --data-size 100000 --use-groups 1
    python benchmarks/stream_ir.py --backend nbray ray --plot   # both engines, one run

Each iteration: a ``Broadcast`` of generated data to every CPU (a block of records, each record
a timestamp and its payload), ``--maps`` ``Map`` stages that touch every byte, a shuffle ``Map``
splitting each block in one part per reducer, and ``ReduceActors`` whose actors note, for every
record, the time from its generation to its arrival: the per-record latency. Iterations run
back to back, two in flight. The cluster is ``--nodes`` node processes on this machine (one
head; ``--workers`` each), over TCP: nbray's own, or with ``--backend ray`` a local Ray
cluster of as many nodes (Ray's multi-node test helper), driven through nbray's API; given
both, each runs in turn in the same process.

Parameters (the study's): nodes, data size (bytes per Broadcast output), maps, reducers,
iterations, use_groups.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import nbray  # noqa: E402
from nbray import dataflow as df  # noqa: E402
from nbray.config import CONFIG  # noqa: E402
from nbray.runtime import cluster  # noqa: E402

RECORD = 1000            # bytes of payload per record


def log(msg: str) -> None:
    print(f"[stream {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- the program ---------------------------------------------------------------------------------
def generate(size: int):
    """A block of records: their generation times and their payload (``RECORD`` bytes each)."""
    n = max(1, size // RECORD)
    return np.full(n, time.time()), np.ones((n, RECORD), dtype=np.uint8)


def touch(block, stage: int):
    times, payload = block
    return times, payload + np.uint8(stage % 2)       # reads and writes every byte


def shuffle(block, parts: int):
    times, payload = block
    return [(times[p::parts], payload[p::parts]) for p in range(parts)]


class Reducer:
    def __init__(self):
        self.latencies: list = []

    def reduce(self, *parts):
        now = time.time()
        for times, payload in parts:
            self.latencies.extend((now - times).tolist())
        return len(self.latencies)

    def take(self):
        out, self.latencies = self.latencies, []
        return out


def one_iteration(size: int, cpus: int, maps: int, reducers: df.InitActors) -> df.Node:
    node = df.Broadcast(generate, cpus, size)
    for stage in range(maps):
        node = df.Map(touch, node, args=[(stage,)] * cpus)
    parts = df.Map(shuffle, node, args=[(reducers.n,)] * cpus, num_returns=reducers.n)
    return df.ReduceActors("reduce", reducers, parts)


def run(size: int, maps: int, num_reducers: int, iterations: int, use_groups: bool,
        cpus: int) -> dict:
    reducers = df.InitActors(Reducer, num_reducers)
    warm = one_iteration(size, cpus, maps, reducers)
    nbray.get(warm.eval(group_scheduling=use_groups), progress=False)
    nbray.get([h.take.remote() for h in reducers.eval()])        # the warm-up is not counted
    t0 = time.perf_counter()
    inflight: list = []
    for _ in range(iterations):
        inflight.append(one_iteration(size, cpus, maps, reducers).eval(
            group_scheduling=use_groups))
        if len(inflight) > 1:
            nbray.get(inflight.pop(0), progress=False)
    for refs in inflight:
        nbray.get(refs, progress=False)
    wall = time.perf_counter() - t0
    lat = sorted(x for part in nbray.get([h.take.remote() for h in reducers.eval()])
                 for x in part)
    for h in reducers.eval():
        nbray.kill(h)
    pick = lambda q: round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 3)   # noqa: E731
    return {"data_size": size, "use_groups": use_groups, "records": len(lat),
            "latency_ms_p50": pick(0.5), "latency_ms_p90": pick(0.9),
            "latency_ms_p99": pick(0.99), "latency_ms_mean": round(
                1000 * statistics.fmean(lat), 3),
            "iterations_per_s": round(iterations / wall, 2),
            "cdf_ms": [round(1000 * lat[int(i * (len(lat) - 1) / 100)], 3)
                       for i in range(101)]}


def start_cluster(nodes: int, workers: int):
    head, head_procs = cluster.start(num_workers=workers, host="127.0.0.1", detach=True)
    head.save()
    joined = [cluster.join(head.tcp_address, bytes.fromhex(head.key), num_workers=workers)
              for _ in range(nodes - 1)]
    return head, head_procs, joined


def stop_cluster(head, head_procs, joined) -> None:
    if nbray.is_initialized():
        nbray.shutdown()
    for record, procs in reversed(joined):
        cluster.stop(record, procs)
    cluster.stop(head, head_procs)


def on_nbray(args, body) -> None:
    with tempfile.TemporaryDirectory(prefix="nbs-", dir="/tmp") as root:
        CONFIG.run_root = root
        head, head_procs, joined = start_cluster(args.nodes, args.workers)
        try:
            nbray.init(address=head.tcp_address)
            wait_for_nodes(args.nodes, lambda: len(nbray.state.nodes({"state": "alive"})))
            body()
        finally:
            stop_cluster(head, head_procs, joined)


def on_ray(args, body) -> None:
    from ray.cluster_utils import Cluster
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": args.workers,
                                                        "include_dashboard": False})
    try:
        for _ in range(args.nodes - 1):
            c.add_node(num_cpus=args.workers)
        c.wait_for_nodes()
        nbray.init(backend="ray", address=c.address, log_to_driver=False)
        wait_for_nodes(args.nodes, lambda: sum(n["Alive"] for n in nbray.nodes()))
        body()
    finally:
        if nbray.is_initialized():
            nbray.shutdown()
        c.shutdown()


def wait_for_nodes(n: int, alive) -> None:
    deadline = time.monotonic() + 30
    while alive() < n:
        if time.monotonic() > deadline:
            raise RuntimeError("the nodes did not all register")
        time.sleep(0.05)


# ---- the plots -----------------------------------------------------------------------------------
def plot(out: dict, stem: str, backend: str = "nbray") -> list[str]:
    from bokeh.io import save
    from bokeh.layouts import row
    from bokeh.plotting import figure
    from bokeh.resources import INLINE
    colours = {False: "#d62728", True: "#1f77b4"}
    labels = {False: "vanilla (per task)", True: "group scheduling"}
    cdf_size = out["cdf_data_size"]
    on = "" if backend == "nbray" else f" (on {backend})"
    cdf = figure(width=520, height=460, title=f"per-record latency CDF, {cdf_size:,} B per "
                 f"block{on}", x_axis_label="latency (ms)", y_axis_label="fraction of records",
                 x_axis_type="log", tools="", toolbar_location=None)
    vs = figure(width=520, height=460, title="latency against data size (p50 solid, p99 "
                "dashed)", x_axis_label="bytes per block", y_axis_label="latency (ms)",
                x_axis_type="log", y_axis_type="log", tools="", toolbar_location=None)
    for groups in (False, True):
        runs = [r for r in out["runs"] if r["use_groups"] == groups]
        at = next(r for r in runs if r["data_size"] == cdf_size)
        cdf.line([max(x, 1e-3) for x in at["cdf_ms"]], [i / 100 for i in range(101)],
                 color=colours[groups], line_width=2, legend_label=labels[groups])
        sizes = [r["data_size"] for r in runs]
        vs.line(sizes, [r["latency_ms_p50"] for r in runs], color=colours[groups],
                line_width=2, legend_label=f"{labels[groups]} p50")
        vs.line(sizes, [r["latency_ms_p99"] for r in runs], color=colours[groups],
                line_width=2, line_dash="dashed", legend_label=f"{labels[groups]} p99")
        vs.scatter(sizes, [r["latency_ms_p50"] for r in runs], color=colours[groups], size=6)
    for p in (cdf, vs):
        legend = p.legend[0]
        p.add_layout(legend, "below")
    html = os.path.join(REPO, "benchmarks", "results", f"{stem}.html")
    save(row(cdf, vs), filename=html, resources=INLINE, title="nbray stream IR")
    png = html[:-5] + ".png"
    _screenshot(html, png)
    return [html, png]


def _screenshot(html: str, png: str) -> None:
    """The saved page as PNG, drawn by Debian's chromium (skipped without it)."""
    import shutil
    chromium = shutil.which("chromium")
    if not chromium:
        log("no chromium: PNG skipped")
        return
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1080, "height": 500})
        page.goto(f"file://{html}")
        page.locator("canvas").first.wait_for(state="attached", timeout=30_000)
        page.wait_for_timeout(500)
        page.screenshot(path=png, full_page=True)
        browser.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2, help="workers per node")
    ap.add_argument("--data-size", type=int, nargs="+",
                    default=[10_000, 100_000, 1_000_000, 4_000_000],
                    help="bytes per Broadcast output (one block per CPU)")
    ap.add_argument("--maps", type=int, default=2)
    ap.add_argument("--reducers", type=int, default=None, help="default: one per node")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--use-groups", type=int, nargs="+", default=[0, 1], choices=[0, 1])
    ap.add_argument("--plot", action="store_true", help="write HTML and PNG figures")
    ap.add_argument("--backend", nargs="+", default=["nbray"], choices=["nbray", "ray"],
                    help="the engine(s) to run it on, in turn")
    args = ap.parse_args(argv)
    reducers = args.reducers or args.nodes
    out = {"cpus": os.cpu_count(), "nodes": args.nodes, "workers_per_node": args.workers,
           "maps": args.maps, "reducers": reducers, "iterations": args.iterations,
           "record_bytes": RECORD, "backends": args.backend, "runs": []}
    cpus = args.nodes * args.workers
    for backend in args.backend:
        def body(backend=backend):
            for size in args.data_size:
                for groups in args.use_groups:
                    log(f"{backend}: data size {size:,} B, use_groups={groups}")
                    r = run(size, args.maps, reducers, args.iterations, bool(groups), cpus)
                    log(f"  p50 {r['latency_ms_p50']} ms, p99 {r['latency_ms_p99']} ms, "
                        f"{r['iterations_per_s']} iterations/s")
                    out["runs"].append({"backend": backend, **r})
        (on_ray if backend == "ray" else on_nbray)(args, body)
    if args.plot and set(args.use_groups) == {0, 1}:
        out["cdf_data_size"] = args.data_size[len(args.data_size) // 2]
        stem = f"stream_ir_{time.strftime('%Y-%m-%d')}_{args.nodes}nodes"
        if args.backend != ["nbray"]:
            stem += "_" + "_".join(args.backend)
        out["figures"] = []
        for backend in args.backend:
            runs = [r for r in out["runs"] if r["backend"] == backend]
            out["figures"] += [os.path.relpath(p, REPO) for p in plot(
                {**out, "runs": runs}, stem + ("" if len(args.backend) == 1 else
                                               f"_{backend}"), backend)]
        with open(os.path.join(REPO, "benchmarks", "results", f"{stem}.json"), "w") as f:
            json.dump(out, f, indent=1)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
