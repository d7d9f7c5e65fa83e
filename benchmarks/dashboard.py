"""What the live dashboard costs during a long run: prints ONE JSON object on stdout.

    python benchmarks/dashboard.py                  # 100,000 no-op tasks, refreshes every 1 s
    python benchmarks/dashboard.py --interval 0.2   # refreshed as often as it allows

The same workload (``--tasks`` no-op tasks submitted in waves of 1,000, 2 workers) runs twice:
once alone, once with every panel and plot of ``%nbray dashboard`` refreshed from a thread
every ``--interval`` seconds (1, its default; 0.2 is its fastest), as in a notebook. Reported:
the throughput of each run, how long a refresh takes (p50, p99, max: the time the refreshing
thread holds the interpreter), how many tasks a refresh draws, and the size of what one
refresh of the task graph would send to the browser (numeric columns as binary, the others
as JSON).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time

import nbray


@nbray.remote
def noop():
    return None


def run(tasks: int) -> float:
    t0 = time.perf_counter()
    for start in range(0, tasks, 1000):
        nbray.get([noop.remote() for _ in range(min(1000, tasks - start))], progress=False)
    return tasks / (time.perf_counter() - t0)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--interval", type=float, default=1.0,
                    help="seconds between refreshes (1: %%nbray dashboard's default; 0.2: "
                         "its fastest)")
    args = ap.parse_args(argv)

    from nbray.extension.widgets import Dashboard, MAX_HZ
    nbray.init(num_workers=args.workers)
    run(2000)                                           # warm up
    alone = run(args.tasks)
    print(f"alone: {alone:,.0f} tasks/s", file=sys.stderr)

    board = Dashboard()
    times, stop = [], threading.Event()

    def refresher():
        while not stop.is_set():
            t0 = time.perf_counter()
            board.refresh()
            times.append(time.perf_counter() - t0)
            stop.wait(max(0.0, max(args.interval, 1 / MAX_HZ) - times[-1]))
    thread = threading.Thread(target=refresher, daemon=True)
    thread.start()
    watched = run(args.tasks)
    stop.set()
    thread.join()
    graph = next(p for p in board.panels if type(p).__name__ == "TaskGraph").plot
    payload = 0                     # numpy columns go as binary buffers, lists as JSON
    for column in [*graph.nodes.data.values(), *graph.edges.data.values()]:
        payload += column.nbytes if hasattr(column, "nbytes") else len(json.dumps(column))
    payload += len(json.dumps({str(k): v for k, v in
                               graph.layout_provider.graph_layout.items()}))
    errors = sorted({p.error for p in board.panels if p.error})
    times.sort()
    out = {
        "tasks": args.tasks, "workers": args.workers, "interval_s": args.interval,
        "tasks_per_s_alone": round(alone), "tasks_per_s_with_dashboard": round(watched),
        "slowdown_pct": round(100 * (1 - watched / alone), 1),
        "refreshes": len(times),
        "refresh_ms_p50": round(1000 * statistics.median(times), 1),
        "refresh_ms_p99": round(1000 * times[int(0.99 * (len(times) - 1))], 1),
        "refresh_ms_max": round(1000 * times[-1], 1),
        "tasks_drawn": len(graph.nodes.data["task_id"]),
        "task_graph_json_bytes": payload,
        "errors": errors,
    }
    nbray.shutdown()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
