"""The task log: one record per finished task or actor call, made by its owner, kept by the head.

A task's owner notes when it was submitted, when its inputs were ready, when it was pushed to
a worker; the worker says when it started and how long it ran. When the task is over the owner
makes one record of all of it (``record``) and sends it with its other events, about once a
second (``events.EventBuffer``); the head keeps the newest ``task_log_max`` (``events.EventLog``).
``nbray.state.tasks()`` reads them; ``nbray/records.py`` holds what both engines share of the
format (its phases, the timeline).

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
