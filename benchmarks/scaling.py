"""Scaling out: throughput as nodes are added, what the head pays per task, and cross-node
transfer. Prints ONE JSON object on stdout, progress on stderr.

    python benchmarks/scaling.py                 # 1, 2, 4, 8 nodes; 100,000 tasks each time
    python benchmarks/scaling.py --nodes 1 2 --tasks 20000

For each count of nodes, a head and that many node processes (one worker each, ``--workers``)
form one cluster on this machine, over TCP; one driver process per node joins it through its
node and submits its share of the no-op tasks in batches of 10,000. Throughput is all tasks
over the wall time from the moment every driver is ready to the last result. The head's
messages and CPU over that time, divided by the tasks, say what the control plane pays per
task. Then a 100 MB array is put on one node and read by a task on another: its size over the
time of that first read (the reading node pulls it in chunks, then the task maps the copy and
sums it) is the transfer rate; the median of ``--transfer-runs`` arrays, a new one each time.

On a machine with fewer cores than processes, the nodes share the cores, so the curve says
how the system behaves under that contention, not how it scales with machines.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import nbray  # noqa: E402
from nbray.config import CONFIG  # noqa: E402
from nbray.runtime import cluster, protocol as P  # noqa: E402

DRIVER = textwrap.dedent("""
    import sys, time, nbray
    nbray.init(address=sys.argv[1])

    @nbray.remote
    def noop():
        return None

    n, batch = int(sys.argv[2]), 10_000
    nbray.get([noop.remote() for _ in range(min(n, 1000))], progress=False)  # leases held
    print("READY", flush=True)
    sys.stdin.readline()                                         # everyone starts at once
    t = time.perf_counter()
    left = n
    while left:
        k = min(batch, left)
        nbray.get([noop.remote() for _ in range(k)], progress=False)
        left -= k
    print("DONE", time.perf_counter() - t, flush=True)
    nbray.shutdown()
""")


def log(msg: str) -> None:
    print(f"[scaling {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def head_counters(record) -> dict:
    info = cluster.ask(record, record.head_address, P.ClusterInfoRequest())
    p = psutil.Process(info.head["pid"])
    return {"msgs": info.head["messages_received"], "cpu": sum(p.cpu_times()[:2])}


def run_nodes(count: int, tasks: int, workers: int) -> dict:
    head, head_procs = cluster.start(num_workers=workers, host="127.0.0.1", detach=True)
    head.save()
    joined = []
    drivers = []
    try:
        names = [head.name]
        for _ in range(count - 1):
            record, procs = cluster.join(head.tcp_address, bytes.fromhex(head.key),
                                         num_workers=workers)
            joined.append((record, procs))
            names.append(record.name)
        script = os.path.join(CONFIG.run_root, "driver.py")
        with open(script, "w") as f:
            f.write(DRIVER)
        share = tasks // count
        env = dict(os.environ, NBRAY_RUN_ROOT=CONFIG.run_root,
                   PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        for name in names:
            drivers.append(subprocess.Popen(
                [sys.executable, script, name, str(share)], env=env, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, text=True))
        for d in drivers:
            line = d.stdout.readline()
            if not line.startswith("READY"):
                raise RuntimeError(f"a driver did not start: {line!r}")
        before = head_counters(head)
        t0 = time.perf_counter()
        for d in drivers:
            d.stdin.write("go\n")
            d.stdin.flush()
        per_driver = []
        for d in drivers:
            line = d.stdout.readline()
            per_driver.append(float(line.split()[1]))
            d.wait(60)
        wall = time.perf_counter() - t0
        after = head_counters(head)
        done = share * count
        return {"nodes": count, "tasks": done, "wall_s": round(wall, 3),
                "tasks_per_s": round(done / wall),
                "driver_s": [round(x, 3) for x in per_driver],
                "head_messages_per_task": round((after["msgs"] - before["msgs"]) / done, 6),
                "head_cpu_us_per_task": round((after["cpu"] - before["cpu"]) / done * 1e6, 3)}
    finally:
        for d in drivers:
            if d.poll() is None:
                d.kill()
            d.wait()
            for stream in (d.stdin, d.stdout):
                stream.close()
        for record, procs in reversed(joined):
            cluster.stop(record, procs)
        cluster.stop(head, head_procs)


def transfer(mb: int, runs: int) -> dict:
    import numpy as np
    head, head_procs = cluster.start(num_workers=1, host="127.0.0.1", detach=True)
    head.save()
    record, procs = cluster.join(head.tcp_address, bytes.fromhex(head.key), num_workers=1,
                                 resources={"far": 1})
    try:
        nbray.init(address=head.tcp_address)

        @nbray.remote(resources={"far": 1})
        def total(a):
            return float(a.sum())

        nbray.get(total.remote(np.ones(10)))            # the far worker is up
        a = np.ones(mb * 1024 * 1024 // 8)
        firsts, agains = [], []
        for _ in range(runs):       # a new object each time: each first read crosses
            ref = nbray.put(a)
            t = time.perf_counter()
            assert nbray.get(total.remote(ref)) == float(a.size)
            firsts.append(time.perf_counter() - t)
            t = time.perf_counter()
            nbray.get(total.remote(ref))                # the far node has its copy now
            agains.append(time.perf_counter() - t)
            del ref
        first = statistics.median(firsts)
        return {"transfer_mb": mb, "transfer_runs": runs,
                "first_read_s": round(first, 3),
                "first_read_s_runs": [round(x, 3) for x in firsts],
                "cross_node_gb_s": round(a.nbytes / first / 1e9, 3),
                "cross_node_gb_s_best": round(a.nbytes / min(firsts) / 1e9, 3),
                "second_read_s": round(statistics.median(agains), 3)}
    finally:
        nbray.shutdown()
        cluster.stop(record, procs)
        cluster.stop(head, head_procs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=1, help="workers per node (default 1)")
    ap.add_argument("--transfer-mb", type=int, default=100)
    ap.add_argument("--transfer-runs", type=int, default=7,
                    help="arrays sent across, a new one each time (default 7)")
    args = ap.parse_args(argv)
    out = {"cpus": os.cpu_count(), "workers_per_node": args.workers, "runs": []}
    with tempfile.TemporaryDirectory(prefix="nbs-", dir="/tmp") as root:
        CONFIG.run_root = root
        for count in args.nodes:
            log(f"{count} node(s), {args.tasks:,} tasks")
            run = run_nodes(count, args.tasks, args.workers)
            log(f"  {run['tasks_per_s']:,} tasks/s, head {run['head_messages_per_task']} "
                f"messages and {run['head_cpu_us_per_task']} us of CPU per task")
            out["runs"].append(run)
        log(f"cross-node transfer of {args.transfer_mb} MB, {args.transfer_runs} times")
        out.update(transfer(args.transfer_mb, args.transfer_runs))
        log(f"  {out['cross_node_gb_s']} GB/s (median), {out['cross_node_gb_s_best']} best")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
