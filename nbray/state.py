"""The state API: what the cluster holds, for notebooks, widgets and the CLI.

Each call reads the engine in use through ``backends.state()``: nbray's own runtime
(``nbray/backends/native_state.py``) or Ray's state API (``nbray/backends/ray_state.py``),
in the same row formats. The docstrings below speak of nbray's runtime; on Ray the fields Ray
has are filled the same way, and ``unexposed()`` says what it does not tell.
"""
from __future__ import annotations

from nbray import backends


def unexposed() -> dict:
    """{view: why it lacks a datum} for what the engine in use does not expose (nothing on
    nbray's own runtime)."""
    return dict(backends.state().unexposed)


def actors(filters=None, *, detail: bool = True) -> list[dict]:
    """Every actor the cluster knows (live, and recently ended ones), one dict each: id,
    class, name, state (pending/alive/restarting/dead), node, worker pid, restarts,
    resources, and (with ``detail``) its calls queued and running and the value of its
    ``__nbray_state__()`` as ``user_state`` (``busy`` when it could not answer in 0.5 s).

    ``filters``: a dict ``{field: value}`` or a list of ``(field, "=" or "!=", value)``, e.g.
    ``actors({"state": "alive"})``. ``detail=False`` skips asking the live actors themselves.
    """
    return _filtered(backends.state().actors(detail), filters)


def nodes(filters=None) -> list[dict]:
    """Every node the cluster knows, alive or declared dead: id, host, pid, state, resources
    (total and available), workers, lease queue, seconds since its last heartbeat."""
    return _filtered(backends.state().nodes(), filters)


def events(filters=None, *, kinds=None, since_seq: int = 0, limit: int | None = None
           ) -> list[dict]:
    """The cluster's event log, oldest first: every retry, loss, reconstruction, actor restart
    and replay, node death, each with its cause (the kinds and their fields are listed in
    ``nbray.runtime.events``). The head keeps the newest ``NBRAY_EVENT_LOG_MAX`` (10,000).

    ``kinds``: only these kinds (a str or a list); ``since_seq``: only events after that
    ``seq`` (to follow the log); ``limit``: only the newest so many; ``filters`` as for
    ``actors()``, e.g. ``events({"name": "step"})``.
    """
    if isinstance(kinds, str):
        kinds = (kinds,)
    return _filtered(backends.state().events(kinds, since_seq, limit), filters)


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
    return _filtered(backends.state().tasks(limit, pending, finished), filters)


def scheduler() -> dict:
    """The hybrid scheduler's side of things: per node, the lease requests it kept and those
    it spilled to the global scheduler (``nodes``); the global scheduler's latest decisions,
    each with the node that spilled, the node chosen, why it spilled and why that node
    (``decisions``, the newest 1,000); and requests no node can serve yet (``pending``)."""
    return backends.state().scheduler()


def summary() -> dict:
    """Counts: tasks by function and state (every task any process recorded since the cluster
    started, with mean run and wait times, and the unfinished ones now), actors by state,
    nodes by state, and the objects this process holds."""
    engine = backends.state()
    held, owned = engine.object_counts()
    return {"tasks": engine.task_summary(),
            "actors": _counts(a["state"] for a in engine.actors(False)),
            "nodes": _counts(n["state"] for n in engine.nodes()),
            "objects": {"held": held, "owned": owned}}


def objects(filters=None) -> list[dict]:
    """The objects this process holds a ref to (or owns for others): id, size, where the
    value is (inline, or the node and segment of shared memory), state, refs, pending tasks
    that take it, borrowers."""
    return _filtered(backends.state().objects(), filters)


def timeline(path: str | None = None) -> dict:
    """The task log as a Chrome trace (Perfetto, chrome://tracing): a track per worker, a
    slice per task, arrows from each task to those that took its results. Written to
    ``path`` when given; the trace is returned."""
    from nbray.records import chrome_trace
    trace = chrome_trace(tasks(pending=False), nodes())
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
