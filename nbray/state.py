"""The state API: what the cluster holds, for notebooks, widgets and the CLI.

``actors()`` combines the head's actor table (class, name, owner, state, restarts and the history
of its state changes) with what each live actor's worker says of itself right now (calls queued
and running, and the value of the actor's optional ``__nbray_state__()``). A worker busy in a
long call of a one-at-a-time actor cannot answer at once: its row then says ``"busy": True``.
"""
from __future__ import annotations

from nbray.runtime import protocol as P

#: how long ``actors()`` waits for live actors to describe themselves (seconds)
ACTOR_INFO_TIMEOUT_S = 0.5


def actors(filters=None, *, detail: bool = True) -> list[dict]:
    """Every actor the cluster knows (live, and recently ended ones), one dict each.

    ``filters``: a dict ``{field: value}`` or a list of ``(field, "=" or "!=", value)``, e.g.
    ``actors({"state": "alive"})``. ``detail=False`` skips asking the live actors themselves.
    """
    from nbray import api
    client = api._client()
    rows = client.request(client.head_address, lambda r: P.ListActors(r))
    out = [_row(r) for r in rows]
    if detail:
        live = [(row, r) for row, r in zip(out, rows)
                if r.get("state") in (P.ALIVE, P.PENDING) and r.get("address")]
        replies = client.request_many(
            [(r["address"], lambda rid, aid=r["actor_id"]: P.ActorInfoRequest(rid, aid))
             for _, r in live], ACTOR_INFO_TIMEOUT_S)
        for (row, _), reply in zip(live, replies):
            if reply is None:
                row["busy"] = True
            else:
                info = dict(reply.value)
                if "state" in info:
                    info["user_state"] = info.pop("state")
                row.update(info)
                row["busy"] = False
    return _filtered(out, filters)


def nodes(filters=None) -> list[dict]:
    """Every node the head knows, alive or declared dead: id, host, pid, state, resources
    (total and available), workers, lease queue, seconds since its last heartbeat."""
    from nbray import api
    client = api._client()
    rows = client.request(client.head_address, lambda r: P.ListNodes(r))
    return _filtered(rows, filters)


def events(filters=None, *, kinds=None, since_seq: int = 0, limit: int | None = None
           ) -> list[dict]:
    """The cluster's event log, oldest first: every retry, loss, reconstruction, actor restart
    and replay, node death, each with its cause (the kinds and their fields are listed in
    ``nbray.runtime.events``). The head keeps the newest ``NBRAY_EVENT_LOG_MAX`` (10,000).

    ``kinds``: only these kinds (a str or a list); ``since_seq``: only events after that
    ``seq`` (to follow the log); ``limit``: only the newest so many; ``filters`` as for
    ``actors()``, e.g. ``events({"name": "step"})``.
    """
    from nbray import api
    client = api._client()
    with client.lock:               # what this process recorded goes first, to be included
        client._flush_events()
    if isinstance(kinds, str):
        kinds = (kinds,)
    reply = client.request(client.head_address, lambda r: P.ListEvents(
        r, tuple(kinds or ()), since_seq, limit))
    return _filtered(reply["events"], filters)


def tasks(filters=None, *, limit: int | None = None, pending: bool = True,
          finished: bool = True) -> list[dict]:
    """Tasks and actor calls: with ``finished``, the head's records of those that ended (the
    newest ``NBRAY_TASK_LOG_MAX``, 20,000; fields in ``nbray.runtime.task_log``), oldest
    first; then, with ``pending``, the unfinished ones, oldest first (``state``: ``waiting``
    for inputs, ``queued`` for a worker, ``running``): this process's own as they are now,
    and those of every other driver and worker as they last reported them (about once a
    second; the newest 500 of each). ``filters`` as for ``actors()``, e.g.
    ``tasks({"state": "failed"})``; ``limit``: only the newest so many of the ended ones and
    the newest so many of the unfinished ones."""
    from nbray import api
    client = api._client()
    with client.lock:
        client._flush_events()
    reply = client.request(client.head_address, lambda r: P.ListEvents(
        r, ("task",), 0, limit if finished else 0, client.address if pending else None))
    rows = reply["events"] if finished else []
    if pending:
        done = {r["task_id"] for r in rows}
        unfinished = [r for r in reply.get("unfinished", []) + _unfinished(client, limit)
                      if r["task_id"] not in done]
        unfinished.sort(key=lambda r: r["submitted"])
        if limit is not None:
            unfinished = unfinished[-limit:] if limit > 0 else []
        rows = rows + unfinished
    return _filtered(rows, filters)


def _unfinished(client, limit: int | None = None) -> list[dict]:
    """This process's unfinished tasks, oldest first (only the newest ``limit``)."""
    from nbray.runtime import task_log
    with client.lock:
        rows = task_log.unfinished(client, limit)
    return [task_log.unfinished_dict(r) for r in rows]


def scheduler() -> dict:
    """The hybrid scheduler's side of things: per node, the lease requests it kept and those
    it spilled to the global scheduler (``nodes``); the global scheduler's latest decisions,
    each with the node that spilled, the node chosen, why it spilled and why that node
    (``decisions``, the newest 1,000); and requests no node can serve yet (``pending``)."""
    from nbray import api
    client = api._client()
    reply = client.request(client.head_address, lambda r: P.ListDecisions(r))
    per_node = [{"node_id": n["node_id"], "host": n.get("host", ""), "state": n.get("state"),
                 "kept_local": n.get("leases_kept_local", 0),
                 "spilled": n.get("leases_spilled", 0),
                 "lease_queue": n.get("lease_queue", 0)} for n in nodes()]
    return {"nodes": per_node, "decisions": reply["decisions"], "pending": reply["pending"]}


def summary() -> dict:
    """Counts: tasks by function and state (every task any process recorded since the cluster
    started, with mean run and wait times, and the unfinished ones now), actors by state,
    nodes by state, and the objects this process holds."""
    from nbray import api
    client = api._client()
    with client.lock:
        client._flush_events()
    totals = client.request(client.head_address, lambda r: P.TaskSummary(r))
    funcs: dict = {}

    def row(name):
        return funcs.setdefault(name, {"finished": 0, "failed": 0, "cancelled": 0,
                                       "running": 0, "queued": 0, "waiting": 0,
                                       "mean_run_s": None, "mean_wait_s": None})
    for name, (finished, failed, cancelled, run_s, wait_s, timed) in totals.items():
        f = row(name)
        f.update(finished=finished, failed=failed, cancelled=cancelled)
        if timed:
            f["mean_run_s"] = round(run_s / timed, 6)
            f["mean_wait_s"] = round(wait_s / timed, 6)
    reply = client.request(client.head_address, lambda r: P.ListEvents(
        r, ("task",), 0, 0, client.address))
    for r in reply.get("unfinished", []):       # other processes' (their newest 500 each)
        f = row(r["name"])
        f[r["state"]] += 1
    from nbray.runtime.task_log import task_state
    with client.lock:                           # ours, all of them, without a dict each
        for task in client.tasks.values():
            if task.t_submit:
                row(task.spec.name)[task_state(task)] += 1
    with client.lock:
        objs = list(client.objects.values())
    return {"tasks": funcs,
            "actors": _counts(a["state"] for a in actors(detail=False)),
            "nodes": _counts(n["state"] for n in nodes()),
            "objects": {"held": len(objs), "owned": sum(1 for o in objs if o.owned)}}


def objects(filters=None) -> list[dict]:
    """The objects this process holds a ref to (or owns for others): id, size, where the
    value is (inline, or the node and segment of shared memory), state, refs, pending tasks
    that take it, borrowers."""
    from nbray import api
    client = api._client()
    out = []
    with client.lock:
        pending: dict = {}
        for task in client.tasks.values():
            for oid in task.pinned:
                pending.setdefault(oid, set()).add(task.spec.name)
        for oid, obj in client.objects.items():
            v = obj.value
            kind = None if v is None else v.kind
            out.append({"object_id": oid.hex(), "owned": obj.owned,
                        "state": "pending" if v is None else
                        {P.INLINE: "ready", P.SHM: "ready", P.ERROR: "error",
                         P.LOST: "lost"}.get(kind, "?"),
                        "size": P.value_size(v),
                        "where": "inline" if kind == P.INLINE else
                        f"node {v.payload.node_id.hex()}" if kind == P.SHM else "",
                        "refs": obj.refs, "pinned_by_tasks": obj.pins,
                        "pending_tasks": sorted(pending.get(oid, ())),
                        "borrowers": len(obj.borrowers), "made_by_put": obj.by_put})
    return _filtered(out, filters)


def timeline(path: str | None = None) -> dict:
    """The task log as a Chrome trace (Perfetto, chrome://tracing): a track per worker, a
    slice per task, arrows from each task to those that took its results. Written to
    ``path`` when given; the trace is returned."""
    from nbray.runtime import task_log
    records = tasks(pending=False)
    trace = task_log.chrome_trace(records, nodes())
    if path:
        import json
        with open(path, "w") as f:
            json.dump(trace, f)
    return trace


def _counts(values) -> dict:
    out: dict = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def _row(r: dict) -> dict:
    return {
        "actor_id": r["actor_id"].hex(),
        "class_name": r.get("class_name"),
        "name": r.get("name") or None,
        "namespace": r.get("namespace") or None,
        "state": r.get("state"),
        "node_id": r.get("node_id"),
        "worker_pid": r.get("worker_pid"),
        "restarts": r.get("restarts", 0),
        "max_restarts": r.get("max_restarts", 0),
        "resources": r.get("resources", {}),
        "owner": r.get("owner"),
        "created_at": r.get("created_at"),
        "history": r.get("history", []),
    }


def _filtered(rows: list[dict], filters) -> list[dict]:
    if not filters:
        return rows
    if isinstance(filters, dict):
        filters = [(k, "=", v) for k, v in filters.items()]
    out = []
    for row in rows:
        keep = True
        for key, op, value in filters:
            if op not in ("=", "!="):
                raise ValueError(f"filter operator must be '=' or '!=', got {op!r}")
            if (row.get(key) == value) != (op == "="):
                keep = False
        if keep:
            out.append(row)
    return out
