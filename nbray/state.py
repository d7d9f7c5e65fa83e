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
