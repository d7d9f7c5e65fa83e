"""A DAG under fire: thousands of tasks and an actor finish with the exact answer while workers
and a node are SIGKILLed. Prints ONE JSON object on stdout, progress on stderr.

    python benchmarks/chaos.py                  # 10,000 maps, kills every 0.5 s, one node
    python benchmarks/chaos.py --maps 50000 --every 0.3

The workload (``run_dag``, also used by ``tests/test_chaos.py``): ``maps`` small tasks, reduced
in groups of 100 by tasks that each return an array in shared memory (lost if its node dies)
and a partial sum; an accumulator actor adds the partial sums; a final task sums the arrays.
A cluster of a head node and two joined nodes runs it twice: once undisturbed, once while a
thread SIGKILLs a random worker every ``--every`` seconds and, once, a whole node (not the
driver's). The two answers must be equal; the report says what was retried and rebuilt.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import nbray  # noqa: E402

GROUP = 100
ARRAY = 20_000          # 160 KB: in shared memory, not inline


MAP_S = 0.002          # each map takes this long: the run lasts long enough to be hit
REDUCE_S = 0.005


@nbray.remote(max_retries=20)
def mapper(i):
    time.sleep(MAP_S)
    return (i * i) % 1009


@nbray.remote(max_retries=20, num_returns=2)
def reducer(*values):
    time.sleep(REDUCE_S)
    s = int(sum(values))
    return np.full(ARRAY, s, dtype=np.int64), s


@nbray.remote(max_retries=20)
def total(*arrays):
    return int(sum(int(a[0]) for a in arrays)), int(sum(int(a.sum()) for a in arrays))


@nbray.remote(max_restarts=-1, max_task_retries=-1)
class Accumulator:
    def __init__(self):
        self.sum = 0
        self.parts = 0

    def add(self, x):
        self.sum += x
        self.parts += 1
        return self.sum

    def value(self):
        return self.sum, self.parts


def expected(maps: int) -> dict:
    values = [(i * i) % 1009 for i in range(maps)]
    partials = [sum(values[j:j + GROUP]) for j in range(0, maps, GROUP)]
    return {"total": sum(partials), "array_sum": sum(p * ARRAY for p in partials),
            "actor": [sum(partials), len(partials)]}


def run_dag(maps: int, on_started=None) -> dict:
    """Run the workload on the cluster this process is connected to; returns its answer."""
    acc = Accumulator.remote()
    refs = [mapper.remote(i) for i in range(maps)]
    arrays, partial_sums = [], []
    for j in range(0, maps, GROUP):
        a, s = reducer.remote(*refs[j:j + GROUP])
        arrays.append(a)
        partial_sums.append(s)
    del refs
    adds = [acc.add.remote(s) for s in partial_sums]
    final = total.remote(*arrays)
    if on_started is not None:
        on_started(acc, arrays, adds)
    t, array_sum = nbray.get(final, timeout=600)
    nbray.get(adds, timeout=600, progress=False)
    return {"total": t, "array_sum": array_sum,
            "actor": list(nbray.get(acc.value.remote(), timeout=600))}


def run_with_faults(maps: int, every: float, seed: int) -> tuple[dict, dict]:
    """``run_dag`` while a random worker is SIGKILLed every ``every`` seconds, the actor's
    worker once it has run a third of its calls, and the node holding most of the reduced
    arrays once half of them exist. Returns (the answer, a report of the faults)."""
    client = nbray.runtime.core_client.current()
    before = dict(client.stats)
    storm = nbray.chaos.schedule(nbray.chaos.kill_worker, every=every, for_s=3600, seed=seed)
    node_killed: dict = {}

    def started(acc, arrays, adds):
        storm.start()
        nbray.wait(adds, num_returns=len(adds) // 3, timeout=600, progress=False)
        nbray.chaos.kill_actor(acc)
        nbray.wait(arrays, num_returns=len(arrays) // 2, timeout=600, progress=False)
        node_killed.update(nbray.chaos.kill_node(_busiest_node(client, arrays)))
    t = time.perf_counter()
    try:
        answer = run_dag(maps, on_started=started)
    finally:
        storm.stop()
    after = client.stats
    report = {"maps": maps, "tasks": maps + 2 * len(range(0, maps, GROUP)),
              "with_faults_s": round(time.perf_counter() - t, 2),
              "workers_killed": len(storm.kills), "node_killed": bool(node_killed),
              "tasks_retried": after["retries"] - before.get("retries", 0),
              "objects_rebuilt": after["rebuilt"] - before.get("rebuilt", 0),
              "actor_calls_replayed": after["actor_replays"] - before.get("actor_replays", 0),
              "actor_restarts": sum(a["restarts"] for a in nbray.state.actors(detail=False)),
              "events": dict(collections.Counter(e["kind"] for e in nbray.state.events()))}
    return answer, report


def _busiest_node(client, refs) -> str:
    """The node, not the driver's, holding most of these objects' bytes now."""
    counts: dict = {}
    with client.lock:
        for ref in refs:
            obj = client.objects.get(ref.binary())
            v = obj.value if obj is not None else None
            if v is not None and v.kind == 1 and v.payload.node_id != client.node_id:
                counts[v.payload.node_id] = counts.get(v.payload.node_id, 0) + 1
    if counts:
        return max(counts, key=counts.get).hex()
    others = [n for n in nbray.state.nodes({"state": "alive"})
              if n["node_id"] != client.node_id.hex()]
    return others[0]["node_id"]


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--maps", type=int, default=10_000)
    ap.add_argument("--every", type=float, default=0.5, help="seconds between worker kills")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    from nbray.config import CONFIG
    from nbray.runtime import cluster
    os.environ.setdefault("NBRAY_NODE_TIMEOUT_S", "2")
    with tempfile.TemporaryDirectory(prefix="nbc-", dir="/tmp") as root:
        CONFIG.run_root = root
        os.environ["NBRAY_RUN_ROOT"] = root
        head, head_procs = cluster.start(num_workers=2, host="127.0.0.1", detach=True)
        head.save()
        joined = [cluster.join(head.tcp_address, bytes.fromhex(head.key), num_workers=1)
                  for _ in range(2)]
        try:
            nbray.init(address=head.tcp_address)
            want = expected(args.maps)
            t = time.perf_counter()
            calm = run_dag(args.maps)
            calm_s = time.perf_counter() - t
            log(f"undisturbed: {calm_s:.1f}s")
            chaotic, out = run_with_faults(args.maps, args.every, args.seed)
            out.update({"undisturbed_s": round(calm_s, 2),
                        "exact": calm == chaotic == want})
            log(json.dumps(out))
            print(json.dumps(out, indent=2))
            return 0 if out["exact"] else 1
        finally:
            nbray.shutdown()
            for record, procs in joined:
                cluster.stop(record, procs)
            cluster.stop(head, head_procs)


if __name__ == "__main__":
    sys.exit(main())
