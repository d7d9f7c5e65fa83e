"""The event log: what happened to tasks, objects, actors and nodes, and why.

An event is recorded where its cause is known: the owner of a task sees its retries and
rebuilds, the owner of an actor its restarts, each caller its replays, the head the death of a
node. A process keeps what it recorded and sends it to the head in one ``ReportEvents`` per
turn of its I/O loop, never a message per event. The head keeps the newest events in a ring of
``event_log_max`` (older ones are counted, then forgotten); ``nbray.state.events()`` reads it.

Every event is a dict with ``seq`` (its place in the head's log), ``time`` (seconds since the
epoch), ``kind``, ``pid`` (the process that recorded it), and the fields of its kind:

==========================  ====================================================================
``task_retried``            ``task_id``, ``name``, ``attempt``, ``cause``
``task_failed``             ``task_id``, ``name``, ``attempt``, ``cause`` (retries used up)
``object_lost``             ``object_id``, ``cause``
``task_reconstructed``      ``task_id``, ``name``, ``object_id``, ``cause``: run again to make
                            a lost object
``reconstruction_failed``   ``object_id``, ``cause``, ``why`` (the step that was impossible)
``actor_restarted``         ``actor_id``, ``class_name``, ``restart``, ``cause``
``actor_replayed``          ``actor_id``, ``class_name``, ``calls``, ``from_checkpoint``: one
                            caller's calls run again on a new incarnation
``actor_restarted_fresh``   ``actor_id``, ``class_name``, ``cause``: its log was too long to replay
``actor_died``              ``actor_id``, ``class_name``, ``cause``
``node_died``               ``node_id``, ``host``, ``cause``
``node_left``               ``node_id``, ``host``, ``cause``: it stopped and said so
==========================  ====================================================================
"""
from __future__ import annotations

import collections
import itertools
import os
import time

#: events a process keeps for its next report at most (a node's death may lose thousands of
#: objects at once)
MAX_PENDING = 20_000
TASK_FLUSH_S = 1.0
TASK_BATCH = 5000

KINDS = ("task_retried", "task_failed", "object_lost", "task_reconstructed",
         "reconstruction_failed", "actor_restarted", "actor_replayed", "actor_restarted_fresh",
         "actor_died", "node_died", "node_left")


class EventBuffer:
    """A process's events not yet sent to the head (used under its client's lock). A fault
    leaves at the next turn of the I/O loop; task records (``task_log.py``) wait up to
    ``TASK_FLUSH_S`` or ``TASK_BATCH`` records, so that the head sees about one message a
    second from a busy owner, not one per task."""

    def __init__(self):
        self.pending: list[dict] = []
        self.pid = os.getpid()
        self.urgent = False
        self.first_at = 0.0

    def emit(self, kind: str, **fields) -> None:
        if len(self.pending) < MAX_PENDING:     # more than the head keeps: it would drop them
            self.pending.append({"time": time.time(), "kind": kind, "pid": self.pid,
                                 **fields})
            self.urgent = True

    def record(self, rec: dict) -> None:
        if not self.pending:
            self.first_at = time.monotonic()
        if len(self.pending) < MAX_PENDING:
            self.pending.append(rec)

    def due(self) -> bool:
        return bool(self.pending) and (self.urgent or len(self.pending) >= TASK_BATCH or
                                       time.monotonic() - self.first_at >= TASK_FLUSH_S)

    def take(self) -> list[dict]:
        out, self.pending, self.urgent = self.pending, [], False
        return out


class EventLog:
    """The head's rings of the newest events, and of the newest task records (``task``,
    see ``task_log.py``), kept apart so that a flood of tasks does not push the faults out."""

    def __init__(self, maxlen: int, task_maxlen: int = 20_000):
        self.ring: collections.deque = collections.deque(maxlen=max(1, maxlen))
        self.task_ring: collections.deque = collections.deque(maxlen=max(1, task_maxlen))
        self._seq = itertools.count(1)
        self.total = 0
        self.tasks_total = 0

    def add(self, events: list) -> None:
        for event in events:
            if type(event) is tuple:            # a task record (task_log.py)
                if event and event[0] == "task":
                    self.task_ring.append((next(self._seq), event))
                    self.tasks_total += 1
                continue
            if not isinstance(event, dict):
                continue
            kind = event.get("kind")
            if kind in KINDS:
                event["seq"] = next(self._seq)
                self.ring.append(event)
                self.total += 1

    def query(self, kinds=None, since_seq: int = 0, limit: int | None = None) -> dict:
        if kinds and "task" in kinds:
            from nbray.runtime.task_log import as_dict
            kept = [(seq, rec) for seq, rec in self.task_ring if seq > since_seq]
            if limit is not None:
                kept = kept[-limit:] if limit > 0 else []
            rows = []
            for seq, rec in kept:
                try:
                    rows.append(as_dict(seq, rec))
                except Exception:       # a malformed record from a peer: skip it
                    continue
            return {"events": rows, "total": self.tasks_total, "kept": len(self.task_ring),
                    "dropped": self.tasks_total - len(self.task_ring)}
        rows = [e for e in self.ring if e["seq"] > since_seq and (not kinds or e["kind"] in kinds)]
        if limit is not None:
            rows = rows[-limit:] if limit > 0 else []
        return {"events": rows, "total": self.total, "kept": len(self.ring),
                "dropped": self.total - len(self.ring)}
