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
import os
import pickle
import time

#: events a process keeps for its next report at most (a node's death may lose thousands of
#: objects at once)
MAX_PENDING = 20_000
TASK_FLUSH_S = 1.0
TASK_BATCH = 5000
#: functions whose totals the head keeps at most
MAX_FUNCTIONS = 10_000
_STATE_SLOT = {"finished": 0, "failed": 1, "cancelled": 2}
#: clients whose unfinished tasks the head keeps at most (the stalest go first)
MAX_OWNERS = 1000
#: a client's report of its unfinished tasks is forgotten after this long without another
#: (a live client with unfinished tasks reports about once a second)
UNFINISHED_TTL_S = 10.0

KINDS = ("task_retried", "task_failed", "object_lost", "task_reconstructed",
         "reconstruction_failed", "actor_restarted", "actor_replayed", "actor_restarted_fresh",
         "actor_died", "node_died", "node_left")


class EventBuffer:
    """A process's events not yet sent to the head (used under its client's lock). A fault
    leaves at the next turn of the I/O loop; task records (``task_log.py``) wait up to
    ``TASK_FLUSH_S`` or ``TASK_BATCH`` records and travel as one pickled batch, which the head
    keeps as it came and reads only when asked: a busy owner costs the head about one message
    a second, and next to nothing per task."""

    def __init__(self):
        self.pending: list[dict] = []
        self.records: list[tuple] = []
        self.pid = os.getpid()
        self.urgent = False
        self.first_at = 0.0
        self.summary: dict = {}         # per function, since the last report
        self.unfinished_at = 0.0        # when it last reported its unfinished tasks
        self.unfinished_sent = False    # and whether it had any then

    def emit(self, kind: str, **fields) -> None:
        if len(self.pending) < MAX_PENDING:     # more than the head keeps: it would drop them
            self.pending.append({"time": time.time(), "kind": kind, "pid": self.pid,
                                 **fields})
            self.urgent = True

    def record(self, rec: tuple) -> None:
        if not self.records:
            self.first_at = time.monotonic()
        if len(self.records) < MAX_PENDING:
            self.records.append(rec)
        # per-function totals travel with the records, so the head can sum every task ever
        # recorded without reading a record (rec: TAG, id, name, state, error, attempts,
        # submitted, ready, dispatched, started, run_s, ...)
        acc = self.summary.get(rec[2])
        if acc is None:
            acc = self.summary[rec[2]] = [0, 0, 0, 0.0, 0.0, 0]
        acc[_STATE_SLOT.get(rec[3], 0)] += 1
        if rec[9] and rec[3] != "cancelled":
            acc[3] += rec[10]
            acc[4] += max(0.0, rec[9] - rec[6])
            acc[5] += 1

    def __bool__(self) -> bool:
        return bool(self.pending or self.records)

    def due(self) -> bool:
        return self.urgent or len(self.records) >= TASK_BATCH or (
            bool(self.records) and time.monotonic() - self.first_at >= TASK_FLUSH_S)

    def unfinished_due(self, has_unfinished: bool) -> bool:
        """Whether to report the unfinished tasks now: about once a second while there are
        any, and at once when there are none left (so nobody sees them as still running)."""
        if not has_unfinished:
            return self.unfinished_sent
        return time.monotonic() - self.unfinished_at >= TASK_FLUSH_S

    def take_unfinished(self, rows: list, count: int) -> tuple[bytes, int]:
        self.unfinished_at = time.monotonic()
        self.unfinished_sent = count > 0
        return pickle.dumps(rows, protocol=5), count

    def take_summary(self) -> dict | None:
        out, self.summary = self.summary, {}
        return out or None

    def take(self) -> tuple[list, bytes, int]:
        """(events, the task records pickled as one batch, how many)."""
        events, records = self.pending, self.records
        self.pending, self.records, self.urgent = [], [], False
        blob = pickle.dumps(records, protocol=5) if records else b""
        return events, blob, len(records)


class EventLog:
    """The head's ring of the newest events, and its ring of task-record batches (as they
    came, pickled; about ``task_maxlen`` records), kept apart so that a flood of tasks does
    not push the faults out."""

    def __init__(self, maxlen: int, task_maxlen: int = 20_000):
        self.ring: collections.deque = collections.deque(maxlen=max(1, maxlen))
        self.task_maxlen = max(1, task_maxlen)
        self.batches: collections.deque = collections.deque()   # (first seq, count, blob)
        self.tasks_kept = 0
        self.seq = 0
        self.total = 0
        self.tasks_total = 0
        #: per function: totals of every task record ever reported (see ``add_summary``)
        self.totals: dict = {}
        #: per client address: (when, its unfinished tasks as it last reported them)
        self.unfinished: dict[str, tuple[float, list]] = {}

    def add(self, events: list) -> None:
        for event in events:
            if not isinstance(event, dict):
                continue
            kind = event.get("kind")
            if kind in KINDS:
                self.seq += 1
                event["seq"] = self.seq
                self.ring.append(event)
                self.total += 1

    def add_tasks(self, blob: bytes, count: int) -> None:
        if not blob or count <= 0:
            return
        self.batches.append((self.seq + 1, count, blob))
        self.seq += count
        self.tasks_total += count
        self.tasks_kept += count
        while self.batches and self.tasks_kept - self.batches[0][1] >= self.task_maxlen:
            self.tasks_kept -= self.batches.popleft()[1]

    def add_summary(self, summary) -> None:
        if not isinstance(summary, dict):
            return
        for name, acc in summary.items():
            if not isinstance(acc, list) or len(acc) != 6 or len(self.totals) > MAX_FUNCTIONS:
                continue
            mine = self.totals.setdefault(str(name), [0, 0, 0, 0.0, 0.0, 0])
            try:
                for i in range(6):
                    mine[i] += acc[i]
            except TypeError:           # a malformed summary from a peer
                continue

    def set_unfinished(self, owner: str, blob: bytes, count: int) -> None:
        self.unfinished.pop(owner, None)
        if count <= 0 or not blob:
            return
        try:
            rows = pickle.loads(blob)
        except Exception:               # a malformed report from a peer: ignore it
            return
        if not isinstance(rows, list):
            return
        if len(self.unfinished) >= MAX_OWNERS:      # the stalest report goes
            del self.unfinished[min(self.unfinished, key=lambda o: self.unfinished[o][0])]
        self.unfinished[owner] = (time.monotonic(), rows)

    def owner_gone(self, owner: str) -> None:
        self.unfinished.pop(owner, None)

    def query(self, kinds=None, since_seq: int = 0, limit: int | None = None,
              unfinished_except: str | None = None) -> dict:
        if kinds and "task" in kinds:
            out = self._query_tasks(since_seq, limit)
            if unfinished_except is not None:
                out["unfinished"] = self._unfinished(unfinished_except, limit)
            return out
        rows = [e for e in self.ring if e["seq"] > since_seq and (not kinds or e["kind"] in kinds)]
        if limit is not None:
            rows = rows[-limit:] if limit > 0 else []
        return {"events": rows, "total": self.total, "kept": len(self.ring),
                "dropped": self.total - len(self.ring)}

    def _unfinished(self, skip: str, limit: int | None) -> list:
        """The newest ``limit`` unfinished tasks of the clients other than ``skip``, oldest
        first (reports older than ``UNFINISHED_TTL_S`` are dropped: their client is gone,
        or its node died)."""
        import heapq
        from nbray.runtime.task_log import unfinished_dict
        now = time.monotonic()
        for owner in [o for o, (at, _) in self.unfinished.items()
                      if now - at > UNFINISHED_TTL_S]:
            del self.unfinished[owner]
        if limit is not None and limit <= 0:
            return []
        rows = (r for owner, (_, recs) in self.unfinished.items() if owner != skip
                for r in recs)
        chosen = heapq.nlargest(limit, rows, key=_submitted) if limit is not None else \
            sorted(rows, key=_submitted, reverse=True)
        out = []
        for r in reversed(chosen):
            try:
                out.append(unfinished_dict(r))
            except Exception:           # a malformed row from a peer: skip it
                continue
        return out

    def _query_tasks(self, since_seq: int, limit: int | None) -> dict:
        from nbray.runtime.task_log import as_dict
        want = self.task_maxlen if limit is None else min(limit, self.task_maxlen)
        rows: list = []
        for first, count, blob in reversed(self.batches):   # the newest first, as needed
            if len(rows) >= want or first + count - 1 <= since_seq:
                break
            try:
                records = pickle.loads(blob)
            except Exception:           # a malformed batch from a peer: skip it
                continue
            batch = []
            for i, rec in enumerate(records):
                if first + i > since_seq:
                    try:
                        batch.append(as_dict(first + i, rec))
                    except Exception:
                        continue
            rows[:0] = batch
        rows = rows[-want:] if want > 0 else []
        kept = min(self.tasks_kept, self.task_maxlen)
        return {"events": rows, "total": self.tasks_total, "kept": kept,
                "dropped": self.tasks_total - kept}


def _submitted(row) -> float:
    try:
        return float(row[4])
    except Exception:
        return 0.0
