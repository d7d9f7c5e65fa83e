"""The task record: what both engines' state API says of a task or actor call, and what the
widgets, the dashboard and ``nbray.timeline`` draw from.

A record is a dict: ``task_id``, ``name``, ``state`` (``finished``, ``failed``,
``cancelled``; unfinished: ``waiting`` for inputs, ``queued`` for a worker, ``running``),
``error`` (its first line), ``attempts``, ``submitted``, ``ready`` (its inputs were there),
``dispatched`` (sent to a worker), ``started``, ``ended`` (seconds since the epoch; 0 when not
known), ``lease_at`` (when the worker it ran on was granted to it), ``inputs_s`` (of its run,
the time reading its arguments), ``placement`` (why it ran on its node: ``""`` kept by the
node first asked, else why it was spilled; None when the engine does not say), ``node_id``,
``worker_pid``, ``actor_id``, ``deps`` (the ids of the tasks whose results it took),
``arg_bytes``, ``result_bytes``, ``returned`` (when its owner had the result). nbray's own
runtime makes them in ``nbray/runtime/task_log.py``; the Ray backend from Ray's task events
(``nbray/backends/ray_state.py``).

``phases(record)`` splits its time from submission to its end into ``inputs`` (waiting for the
tasks whose results it takes), ``scheduling`` (waiting for a worker), ``queueing`` (behind
other tasks, and on the wire), ``transfer`` (reading its arguments on the worker) and
``execution``; ``chrome_trace(records)`` makes a timeline of them.
"""
from __future__ import annotations

PHASES = ("inputs", "scheduling", "queueing", "transfer", "execution")


def summary_row(funcs: dict, name: str) -> dict:
    """The row of function ``name`` in ``nbray.state.summary()["tasks"]`` (made empty)."""
    return funcs.setdefault(name, {"finished": 0, "failed": 0, "cancelled": 0, "running": 0,
                                   "queued": 0, "waiting": 0, "mean_run_s": None,
                                   "mean_wait_s": None})


def phases(r: dict) -> dict | None:
    """Seconds in each of ``PHASES`` for a record that ran (None if it did not)."""
    started, ended = r.get("started"), r.get("ended")
    if not started or not ended:
        return None
    submitted = r["submitted"]
    ready = max(submitted, r.get("ready") or submitted)
    pushed = max(ready, r.get("dispatched") or ready)
    lease_at = r.get("lease_at") or 0.0
    scheduling = max(0.0, min(pushed, lease_at) - ready)
    run = max(0.0, ended - started)
    transfer = min(run, max(0.0, r.get("inputs_s") or 0.0))
    return {"inputs": ready - submitted, "scheduling": scheduling,
            "queueing": max(0.0, pushed - ready - scheduling) + max(0.0, started - pushed),
            "transfer": transfer, "execution": run - transfer}


# ---- the timeline --------------------------------------------------------------------------
def chrome_trace(records: list, nodes: list | None = None) -> dict:
    """The Chrome trace event format (``{"traceEvents": [...]}``, which Perfetto and
    chrome://tracing open): a process per node, a track per worker, a slice per task (from
    its start to its end on the worker; its time waiting before that in its args), and a flow
    arrow from each task to the tasks that took its results."""
    hosts = {n["node_id"]: n.get("host", "") for n in nodes or ()}
    pids: dict[str, int] = {}
    events, threads = [], set()
    ran = [r for r in records if r.get("started") and r.get("ended")]
    where = {}
    for r in ran:
        node = (r["node_id"] or "actor") if r["actor_id"] else (r["node_id"] or "?")
        pid = pids.setdefault(node, len(pids) + 1)
        tid = r["worker_pid"] or 0
        threads.add((pid, tid))
        where[r["task_id"]] = (pid, tid, r["ended"])
        events.append({
            "name": r["name"], "cat": r["state"], "ph": "X", "pid": pid, "tid": tid,
            "ts": _us(r["started"]), "dur": max(1.0, _us(r["ended"]) - _us(r["started"])),
            "args": {"task_id": r["task_id"], "state": r["state"], "error": r["error"],
                     "queued_ms": _ms(r["dispatched"] - r["ready"]),
                     "waited_for_inputs_ms": _ms(r["ready"] - r["submitted"]),
                     "arg_bytes": r["arg_bytes"], "result_bytes": r["result_bytes"],
                     "attempts": r["attempts"]}})
    flow = 0
    for r in ran:
        for dep in r["deps"]:
            source = where.get(dep)
            if source is None:
                continue
            flow += 1
            spid, stid, ended = source
            events.append({"name": "result", "cat": "dependency", "ph": "s", "id": flow,
                           "pid": spid, "tid": stid, "ts": _us(ended) - 1})
            events.append({"name": "result", "cat": "dependency", "ph": "f", "bp": "e",
                           "id": flow, "pid": where[r["task_id"]][0],
                           "tid": where[r["task_id"]][1], "ts": _us(r["started"])})
    for node, pid in pids.items():
        label = f"node {node[:8]}" + (f" ({hosts[node]})" if hosts.get(node) else "") \
            if node not in ("?", "actor") else {"?": "unknown node", "actor": "actors"}[node]
        events.append({"name": "process_name", "ph": "M", "pid": pid, "args": {"name": label}})
    for pid, tid in sorted(threads):
        events.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
                       "args": {"name": f"worker pid {tid}" if tid else "worker"}})
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def _us(t: float) -> float:
    return t * 1e6


def _ms(dt: float) -> float:
    return round(max(0.0, dt) * 1000, 3)
