"""``nbray.state`` on nbray's own runtime: what the head and this process hold.

``actors()`` combines the head's actor table (class, name, owner, state, restarts and the history
of its state changes) with what each live actor's worker says of itself right now (calls queued
and running, and the value of the actor's optional ``__nbray_state__()``). A worker busy in a
long call of a one-at-a-time actor cannot answer at once: its row then says ``"busy": True``.
Tasks are the head's task log (``nbray/runtime/task_log.py``) and the unfinished tasks every
owner reports.
"""
from __future__ import annotations

import functools

from nbray.backends import State
from nbray.records import summary_row
from nbray.runtime import protocol as P

#: how long ``actors()`` waits for live actors to describe themselves (seconds)
ACTOR_INFO_TIMEOUT_S = 0.5


def _client():
    from nbray import api
    return api._client()


class NativeState(State):
    name = "nbray"

    def actors(self, detail: bool) -> list[dict]:
        client = _client()
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
        return out

    def nodes(self) -> list[dict]:
        client = _client()
        return client.request(client.head_address, lambda r: P.ListNodes(r))

    def events(self, kinds, since_seq: int, limit: int | None) -> list[dict]:
        client = _client()
        with client.lock:           # what this process recorded goes first, to be included
            client._flush_events()
        reply = client.request(client.head_address, lambda r: P.ListEvents(
            r, tuple(kinds or ()), since_seq, limit))
        return reply["events"]

    def tasks(self, limit: int | None, pending: bool, finished: bool) -> list[dict]:
        client = _client()
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
        return rows

    def scheduler(self) -> dict:
        client = _client()
        reply = client.request(client.head_address, lambda r: P.ListDecisions(r))
        per_node = [{"node_id": n["node_id"], "host": n.get("host", ""),
                     "state": n.get("state"), "kept_local": n.get("leases_kept_local", 0),
                     "spilled": n.get("leases_spilled", 0),
                     "lease_queue": n.get("lease_queue", 0)} for n in self.nodes()]
        return {"nodes": per_node, "decisions": reply["decisions"], "pending": reply["pending"]}

    def task_summary(self) -> dict:
        client = _client()
        with client.lock:
            client._flush_events()
        totals = client.request(client.head_address, lambda r: P.TaskSummary(r))
        funcs: dict = {}
        row = functools.partial(summary_row, funcs)
        for name, (finished, failed, cancelled, run_s, wait_s, timed) in totals.items():
            f = row(name)
            f.update(finished=finished, failed=failed, cancelled=cancelled)
            if timed:
                f["mean_run_s"] = round(run_s / timed, 6)
                f["mean_wait_s"] = round(wait_s / timed, 6)
        reply = client.request(client.head_address, lambda r: P.ListEvents(
            r, ("task",), 0, 0, client.address))
        for r in reply.get("unfinished", []):       # other processes' (their newest 500 each)
            row(r["name"])[r["state"]] += 1
        from nbray.runtime.task_log import task_state
        with client.lock:                           # ours, all of them, without a dict each
            for task in client.tasks.values():
                if task.t_submit:
                    row(task.spec.name)[task_state(task)] += 1
        return funcs

    def objects(self) -> list[dict]:
        client = _client()
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
        return out

    def object_counts(self) -> tuple[int, int]:
        client = _client()
        with client.lock:
            objs = list(client.objects.values())
        return len(objs), sum(1 for o in objs if o.owned)


STATE = NativeState()


def _unfinished(client, limit: int | None = None) -> list[dict]:
    """This process's unfinished tasks, oldest first (only the newest ``limit``)."""
    from nbray.runtime import task_log
    with client.lock:
        rows = task_log.unfinished(client, limit)
    return [task_log.unfinished_dict(r) for r in rows]


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
