"""The task log: one record per finished task or actor call, made by its owner, kept by the head.

A task's owner notes when it was submitted, when its inputs were ready, when it was pushed to
a worker; the worker says when it started and how long it ran. When the task is over the owner
makes one record of all of it (``record``) and sends it with its other events, about once a
second (``events.EventBuffer``); the head keeps the newest ``task_log_max`` (``events.EventLog``).
``nbray.state.tasks()`` reads them, and ``chrome_trace`` turns them into a timeline.

It travels, and the head keeps it, as a tuple (``FIELDS``); the state API shows it as a
dict: ``kind`` ("task"), ``seq``, ``task_id``, ``name``, ``state`` (``finished``,
``failed``, ``cancelled``), ``error`` (its first line, if it failed), ``attempts``,
``submitted``, ``ready``, ``dispatched``, ``started``, ``ended`` (seconds since the epoch; 0
when not known), ``inputs_s`` (of its run, the time reading its arguments), ``lease_at``
(when the worker lease it ran on was granted), ``placement`` (``""`` when the node first asked
kept the lease; else why it was spilled, ``resources: ...``, ``queue: ...`` or
``locality: ...``, and why the global scheduler chose the node that ran it), ``node_id``,
``worker_pid``, ``actor_id``, ``deps`` (the ids of the tasks whose results it took),
``arg_bytes``, ``result_bytes``, ``owner_pid``, ``scope``, ``returned`` (when the owner had
its result, on the owner's clock, as ``submitted`` is: ``started`` and ``ended`` are the
worker's).

``phases(record)`` splits its time from submission to its end into ``inputs`` (waiting for the
tasks whose results it takes), ``scheduling`` (waiting for a worker lease), ``queueing``
(behind other tasks, on the owner and on the worker, and on the wire), ``transfer`` (reading its
arguments on the worker) and ``execution``.
"""
from __future__ import annotations

import time

from nbray.runtime import protocol as P

STATES = ("finished", "failed", "cancelled")


#: a record travels and is kept as a tuple of these, in this order (cheap to pickle and to
#: keep); ``as_dict`` makes the dict the state API shows
FIELDS = ("task_id", "name", "state", "error", "attempts", "submitted", "ready", "dispatched",
          "started", "run_s", "node_id", "worker_pid", "actor_id", "deps", "arg_bytes",
          "result_bytes", "owner_pid", "scope", "inputs_s", "lease_at", "placement",
          "returned")
PHASES = ("inputs", "scheduling", "queueing", "transfer", "execution")
TAG = "task"


def record(task, values, client) -> tuple:
    spec = task.spec
    state, error, size = "finished", "", 0
    for v in values:
        n = P.value_size(v)
        if n is not None:
            size += n
        elif not error:
            state, error = _failure(v)
    if task.ran_on:
        node_id, pid, placed, lease_at = task.ran_on
    elif task.actor is not None:
        lease = task.actor.lease
        node_id, pid = b"", task.actor.worker_pid
        placed, lease_at = (lease.placed, lease.granted_at) if lease is not None else ("", 0.0)
    else:
        node_id, pid, placed, lease_at = b"", 0, "", 0.0
    blob = spec.args_blob
    return (TAG, spec.task_id, spec.name, state, error, task.attempts, task.t_submit,
            task.t_ready or task.t_submit, task.t_push, task.t_start, task.run_s, node_id, pid,
            spec.actor_id, [a[:16] for a in task.arg_ids],
            blob.payload.size if type(blob) is P.Value else len(blob), size, client.events.pid,
            spec.origin[1] if spec.origin else 0, task.inputs_s, lease_at, placed,
            time.time())


#: an unfinished task, as its owner reports it (about once a second, the newest
#: ``UNFINISHED_MAX``) and the head keeps it until the next report
UNFINISHED = ("task_id", "name", "state", "attempts", "submitted", "ready", "dispatched",
              "node_id", "worker_pid", "actor_id", "deps", "owner_pid", "scope")
UNFINISHED_MAX = 500
#: an unfinished task's ``deps`` are reported up to this many (a reduce over many inputs)
UNFINISHED_DEPS = 16


def unfinished(client, limit: int | None = None) -> list[tuple]:
    """The client's unfinished tasks, oldest first (only the newest ``limit``): ``waiting``
    for inputs, ``queued`` for a worker, ``running``. Called under the client's lock."""
    out = []
    pid = client.events.pid
    for task in reversed(client.tasks.values()):
        if limit is not None and len(out) >= limit:
            break
        spec = task.spec
        if not task.t_submit:
            continue
        state = task_state(task)
        lease = task.worker
        out.append((spec.task_id, spec.name, state, task.attempts, task.t_submit,
                    task.t_ready, task.t_push, lease.node_id if lease is not None else b"",
                    lease.pid if lease is not None else 0, spec.actor_id or b"",
                    [a[:16] for a in task.arg_ids[:UNFINISHED_DEPS]], pid,
                    spec.origin[1] if spec.origin else 0))
    out.reverse()
    return out


def task_state(task) -> str:
    """An unfinished task's state: ``running``, ``queued`` (for a worker) or ``waiting`` (for
    its inputs)."""
    if task.worker is not None or (task.actor is not None and
                                   task.spec.task_id in task.actor.inflight):
        return "running"
    return "queued" if task.t_ready else "waiting"


def unfinished_dict(rec: tuple) -> dict:
    d = dict(zip(UNFINISHED, rec))
    d.update(kind="task", task_id=d["task_id"].hex(), node_id=d["node_id"].hex(),
             actor_id=d["actor_id"].hex(), deps=[x.hex() for x in d["deps"]], error="",
             started=0.0, ended=0.0, inputs_s=0.0, lease_at=0.0, placement="",
             arg_bytes=0, result_bytes=0, returned=0.0)
    return d


def as_dict(seq: int, rec: tuple) -> dict:
    """The record as the state API shows it (ids in hex, and when it ``ended``)."""
    d = dict(zip(FIELDS, rec[1:]))
    started = d["started"]
    d.update(kind="task", seq=seq, task_id=d["task_id"].hex(), node_id=d["node_id"].hex(),
             actor_id=d["actor_id"].hex(), deps=[x.hex() for x in d["deps"]],
             ended=started + d.pop("run_s") if started else 0.0)
    return d


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


def _failure(value) -> tuple[str, str]:
    if value.kind == P.LOST:
        return "failed", f"ObjectLostError: {str(value.payload).splitlines()[0][:200]}"
    try:
        from nbray.runtime import serialization
        exc = serialization.deserialize(value)
        exc = exc[0] if isinstance(exc, tuple) else exc
    except Exception:               # an error that cannot be read here is still an error
        return "failed", "an error this process cannot unpickle"
    name = type(exc).__name__
    if name == "TaskCancelledError":
        return "cancelled", ""
    return "failed", f"{name}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


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
