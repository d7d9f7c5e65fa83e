"""A cluster's state read by a process that is not one of its drivers (``nbray list``, the
Jupyter server extension): signed requests to its head, with the key from its record on this
machine. The answers are plain JSON-able rows; none of them holds the key.
"""
from __future__ import annotations

import glob
import os
import time

from nbray.errors import ClusterError
from nbray.runtime import cluster, object_store, protocol as P

KINDS = ("tasks", "events", "actors", "nodes", "objects", "summary")
TIMEOUT_S = 3.0


def query(record: cluster.ClusterRecord, what: str, limit: int | None = None) -> list | dict:
    """``what`` of the cluster of ``record``: rows for tasks, events, actors, nodes and
    objects (the shared-memory segments it has on this machine), a dict for the summary.
    Raises ClusterError if the head does not answer."""
    if what not in KINDS:
        raise ValueError(f"what is one of {', '.join(KINDS)}, got {what!r}")
    if what == "objects":
        rows = objects(record)
    elif what == "summary":
        return summary(record)
    else:
        make = {"tasks": lambda: P.ListEvents(1, ("task",), 0, limit),
                "events": lambda: P.ListEvents(1, (), 0, limit),
                "actors": lambda: P.ListActors(1), "nodes": lambda: P.ListNodes(1)}[what]
        value = _ask(record, make())
        rows = [_plain(what, dict(r)) for r in (value["events"] if what in ("tasks", "events")
                                                else value)]
    if limit is not None:
        rows = rows[-limit:] if limit > 0 else []
    return rows


def objects(record: cluster.ClusterRecord) -> list[dict]:
    prefix = os.path.join(object_store.store_dir(),
                          f"{object_store.PREFIX}{record.name or record.session}_")
    rows = []
    for path in sorted(glob.glob(prefix + "*")):
        try:
            size = os.path.getsize(path)
        except OSError:                 # freed meanwhile
            continue
        rows.append({"object_id": path[len(prefix):], "size": size, "segment": path})
    return rows


def summary(record: cluster.ClusterRecord) -> dict:
    """Tasks by function (totals since the cluster started), actors and nodes by state."""
    totals = _ask(record, P.TaskSummary(1))
    tasks = {name: {"finished": f, "failed": x, "cancelled": c,
                    "mean_run_s": round(run / timed, 6) if timed else None,
                    "mean_wait_s": round(wait / timed, 6) if timed else None}
             for name, (f, x, c, run, wait, timed) in totals.items()}
    actors: dict = {}
    for a in _ask(record, P.ListActors(1)):
        actors[a.get("state", "?")] = actors.get(a.get("state", "?"), 0) + 1
    nodes: dict = {}
    for n in _ask(record, P.ListNodes(1)):
        nodes[n["state"]] = nodes.get(n["state"], 0) + 1
    return {"tasks": tasks, "actors": actors, "nodes": nodes}


def info(record: cluster.ClusterRecord) -> dict:
    """What a list of clusters shows of one: id, kind, address, nodes, workers, uptime."""
    reply = cluster.ask(record, record.head_address, P.ClusterInfoRequest(), TIMEOUT_S)
    nodes = list(reply.nodes) if reply is not None else []
    alive = [n for n in nodes if n.get("alive", True)]
    return {"id": record.session, "kind": "embedded" if record.role == "embedded" else
            "started", "address": record.tcp_address or record.head_address,
            "driver_pid": record.driver_pid or None, "answering": reply is not None,
            "nodes": len(alive), "nodes_dead": len(nodes) - len(alive),
            "workers": sum(n.get("workers", 0) for n in alive),
            "resources": _total(alive), "uptime_s": round(time.time() - record.started_at, 1)}


def heads(driver_pids: set | None = None) -> list[cluster.ClusterRecord]:
    """The live clusters of this machine, one record each: those `nbray start` started, and
    those embedded by one of ``driver_pids`` (all embedded ones if None)."""
    out = {}
    for r in cluster.ClusterRecord.load_all():
        if r.role == "node" or not r.live_pids():
            continue
        if r.role == "embedded" and driver_pids is not None and r.driver_pid not in driver_pids:
            continue
        out.setdefault(r.session, r)
    return list(out.values())


def _total(nodes: list) -> dict:
    total: dict = {}
    for n in nodes:
        for k, v in (n.get("resources") or {}).items():
            total[k] = total.get(k, 0) + v
    return total


def _ask(record: cluster.ClusterRecord, request):
    reply = cluster.ask(record, record.head_address, request, TIMEOUT_S)
    if reply is None:
        raise ClusterError(f"the head of cluster {record.session} did not answer within "
                           f"{TIMEOUT_S:g}s")
    if getattr(reply, "error", ""):
        raise ClusterError(f"the head of cluster {record.session}: {reply.error}")
    return reply.value


def _plain(what: str, r: dict) -> dict:
    for k, v in list(r.items()):
        if isinstance(v, bytes):
            r[k] = v.hex()
    if what == "tasks" and r.get("ended"):
        r["run_ms"] = round(1000 * (r["ended"] - r["started"]), 3)
        r["wait_ms"] = round(1000 * max(0.0, r["started"] - r["submitted"]), 3)
    return r
