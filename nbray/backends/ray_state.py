"""``nbray.state`` on the Ray backend: Ray's state API (``ray.util.state``) in nbray's rows.

Ray's state API is served by its dashboard (a Ray started with ``include_dashboard=False``
has none: then every view says so). Task records are made from Ray's task events, which its
GCS gathers about a second after the fact: the times of a task's state transitions give its
phases (waiting for its arguments, for a node, for a worker; Ray's profile events, where
there are some, the time reading its arguments and the time running). What Ray does not tell
is listed in ``RayState.unexposed``, and the views show it.
"""
from __future__ import annotations

import time

import ray

from nbray import backends
from nbray.records import summary_row

#: how long ``actors()`` waits for live actors' ``__nbray_state__()`` (seconds)
ACTOR_INFO_TIMEOUT_S = 0.5
#: Ray's state API returns at most this many rows per call
MAX_ROWS = 10_000
#: how long a state API call may take (seconds)
TIMEOUT_S = 10
#: task rows read within so long are read once (a dashboard refresh reads tasks and their
#: summary; Ray's state API takes about 0.45 ms a task row on the 2-core machine)
ROWS_TTL_S = 0.5

#: Ray's task states -> nbray's
TASK_STATES = {"FINISHED": "finished", "FAILED": "failed", "RUNNING": "running",
               "RUNNING_IN_RAY_GET": "running", "RUNNING_IN_RAY_WAIT": "running",
               "PENDING_ARGS_AVAIL": "waiting"}      # every other pending state: "queued"
ACTOR_STATES = {"DEPENDENCIES_UNREADY": "pending", "PENDING_CREATION": "pending",
                "ALIVE": "alive", "RESTARTING": "restarting", "DEAD": "dead"}
#: what nbray's Ray backend runs for itself (kept out of the views)
INTERNAL_CLASSES = ("OutputHub",)
INTERNAL_TASKS = ("_setup_now",)


class RayState(backends.State):
    name = "ray"
    unexposed = {
        "tasks": "Ray's task events reach its GCS about a second after the fact; Ray keeps "
                 "100,000 by default, and its state API gives at most 10,000 of them (by "
                 "task id, not the newest)",
        "task_graph": "edges only into tasks this driver submitted with refs as arguments "
                      "(Ray's task events do not list a task's arguments); argument and "
                      "result sizes are not told",
        "latency": "a task whose start Ray's task events do not (yet) give, often an "
                   "actor call, is left out of the phases and the histogram",
        "scheduler": "Ray does not expose its schedulers' decisions (whether a raylet kept "
                     "a task or spilled it to another node, and why): only where each task "
                     "ran",
        "actors": "Ray does not tell an actor's queued and running calls; __nbray_state__() "
                  "is asked of the actors this driver created or can find by name",
        "nodes": "Ray does not tell idle from busy workers (workers: those alive)",
        "events": "Ray's cluster events (nodes, jobs, autoscaler); a task's retries show "
                  "as its attempts, reconstructions are not told apart",
        "objects": "Ray's reference table of this process: sizes and owners not read",
    }

    def __init__(self, backend):
        self.backend = backend          # its handles and its record of tasks' arguments
        self.asking: dict = {}          # actor id -> its __nbray_state__() not answered yet
        self._rows: tuple = (0.0, [])   # (when read, the task records)

    # ---- tasks -----------------------------------------------------------------------------
    def tasks(self, limit, pending, finished):
        rows = self._task_rows()
        ended = sorted((r for r in rows if r["state"] in ("finished", "failed", "cancelled")),
                       key=lambda r: r["ended"])
        unfinished = sorted((r for r in rows if r["state"] not in ("finished", "failed",
                                                                   "cancelled")),
                            key=lambda r: r["submitted"])
        if limit is not None:
            ended = ended[-limit:] if limit > 0 else []
            unfinished = unfinished[-limit:] if limit > 0 else []
        out = (ended if finished else []) + (unfinished if pending else [])
        for seq, r in enumerate(out):
            r["seq"] = seq
        return out

    def _task_rows(self) -> list[dict]:
        """A record per task (its newest attempt) of the at most ``MAX_ROWS`` rows Ray's state
        API returns (it picks them by task id, not by time: the most it gives are asked
        for, and the caller keeps the newest)."""
        read_at, rows = self._rows
        if time.monotonic() - read_at < ROWS_TTL_S:
            return [dict(r) for r in rows]
        from ray.util.state import list_tasks
        raw = _call(list_tasks, detail=True, limit=MAX_ROWS)
        newest: dict = {}
        for t in raw:                   # a row per attempt: the newest attempt of each
            if not _shown(t):
                continue
            old = newest.get(t.task_id)
            if old is None or t.attempt_number > old.attempt_number:
                newest[t.task_id] = t
        pids = self._actor_pids() if any(t.actor_id for t in newest.values()) else {}
        deps = self.backend.task_deps
        rows = [_record(t, deps.get(t.task_id, ()), pids) for t in newest.values()]
        self._rows = (time.monotonic(), rows)
        return [dict(r) for r in rows]

    def _actor_pids(self) -> dict:
        from ray.util.state import list_actors
        return {a.actor_id: a.pid for a in _call(list_actors, limit=MAX_ROWS)}

    def task_summary(self):
        funcs: dict = {}
        timed: dict = {}
        for r in self._task_rows():     # the same records as tasks(): an attempt counts once
            summary_row(funcs, r["name"])[r["state"]] += 1
            if r["started"] and r["ended"]:
                acc = timed.setdefault(r["name"], [0.0, 0.0, 0])
                acc[0] += r["ended"] - r["started"]
                acc[1] += r["started"] - r["submitted"]
                acc[2] += 1
        for name, (run, wait, n) in timed.items():
            funcs[name].update(mean_run_s=round(run / n, 6), mean_wait_s=round(wait / n, 6))
        return funcs

    # ---- actors ----------------------------------------------------------------------------
    def actors(self, detail):
        from ray.util.state import list_actors
        out = []
        for a in _call(list_actors, detail=True, limit=MAX_ROWS):
            if a.class_name in INTERNAL_CLASSES:
                continue
            out.append({"actor_id": a.actor_id, "class_name": a.class_name,
                        "name": a.name or None, "namespace": a.ray_namespace or None,
                        "state": ACTOR_STATES.get(a.state, a.state.lower()),
                        "node_id": a.node_id or "", "worker_pid": a.pid or None,
                        "restarts": a.num_restarts or 0, "max_restarts": None,
                        "resources": dict(a.required_resources or {}), "owner": None,
                        "created_at": None, "history": [],
                        "death_cause": _death(a.death_cause)})
        if detail:
            self._ask_state([r for r in out if r["state"] == "alive"])
        return out

    def _ask_state(self, rows: list[dict]) -> None:
        """Each live actor's ``__nbray_state__()`` (those it can reach a handle of), waited
        for together for at most ``ACTOR_INFO_TIMEOUT_S``."""
        asked = []
        for row in rows:
            handle = self.backend.handles.get(row["actor_id"])
            if handle is None and row["name"]:
                try:
                    handle = ray.get_actor(row["name"], namespace=row["namespace"])
                except ValueError:
                    continue
            method = getattr(handle, "__nbray_state__", None) if handle is not None else None
            if method is None:
                row["busy"] = False
                continue
            ref = self.asking.get(row["actor_id"])     # one call at a time: a busy actor's
            if ref is None:                            # queue does not grow with refreshes
                ref = self.asking[row["actor_id"]] = method.remote()
            asked.append((row, ref))
        live = {row["actor_id"] for row in rows}
        for gone in [a for a in self.asking if a not in live]:
            del self.asking[gone]
        if not asked:
            return
        refs = [ref for _, ref in asked]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=ACTOR_INFO_TIMEOUT_S,
                            fetch_local=True)
        ready = set(ready)
        for row, ref in asked:
            row["busy"] = ref not in ready
            if ref in ready:
                del self.asking[row["actor_id"]]
                try:
                    row["user_state"] = ray.get(ref, timeout=0)
                except Exception as e:      # noqa: BLE001 - the actor's own error, shown
                    row["user_state"] = {"error": f"{type(e).__name__}: {e}"[:200]}

    # ---- nodes, events, scheduler, objects -------------------------------------------------
    def nodes(self):
        from ray.util.state import list_nodes, list_workers
        free = {}
        try:
            free = ray._private.state.state.available_resources_per_node()
        except Exception:           # noqa: BLE001 - Ray's internal: then not shown
            pass
        workers: dict = {}
        for w in _call(list_workers, filters=[("worker_type", "=", "WORKER"),
                                              ("is_alive", "=", True)], limit=MAX_ROWS):
            workers[w.node_id] = workers.get(w.node_id, 0) + 1
        out = []
        for n in _call(list_nodes, limit=MAX_ROWS):
            total = {k: v for k, v in (n.resources_total or {}).items()
                     if not k.startswith("node:")}
            out.append({"node_id": n.node_id, "host": n.node_name or n.node_ip,
                        "address": n.node_ip, "pid": None,
                        "state": "alive" if n.state == "ALIVE" else "dead",
                        "head": bool(n.is_head_node), "resources": total,
                        "resources_total": total,
                        "resources_available": {k: v for k, v in
                                                free.get(n.node_id, {}).items()
                                                if k in total},
                        "workers": workers.get(n.node_id, 0), "lease_queue": None,
                        "registered_at": (n.start_time_ms or 0) / 1000 or None})
        return out

    def events(self, kinds, since_seq, limit):
        from ray.util.state import list_cluster_events
        if kinds and not any(k.startswith("ray_") for k in kinds):
            return []               # nbray's own kinds: Ray has none of them
        out = []
        for seq, e in enumerate(sorted(_call(list_cluster_events, limit=MAX_ROWS),
                                       key=lambda e: e.time), start=1):
            kind = f"ray_{str(e.source_type).lower()}"
            if (kinds and kind not in kinds) or seq <= since_seq:
                continue
            out.append({"kind": kind, "seq": seq, "time": _epoch(e.time),
                        "severity": e.severity,
                        "message": e.message, "source": e.source_type})
        if limit is not None:
            out = out[-limit:] if limit > 0 else []
        return out

    def unfinished_of_job(self, job_id: str) -> int:
        """How many tasks of the job (a driver's) have not ended."""
        from ray.util.state import list_tasks
        rows = _call(list_tasks, limit=MAX_ROWS, filters=[
            ("job_id", "=", job_id), ("state", "!=", "FINISHED"), ("state", "!=", "FAILED")])
        return len({t.task_id for t in rows if _shown(t)})

    def scheduler(self):
        return {"nodes": [{"node_id": n["node_id"], "host": n["host"], "state": n["state"],
                           "kept_local": None, "spilled": None, "lease_queue": None}
                          for n in self.nodes()],
                "decisions": [], "pending": []}

    def objects(self):
        return self.backend.notebook.held_objects()

    def object_counts(self):
        objs = self.objects()
        return len(objs), None


def _call(fn, **kwargs):
    """A call of Ray's state API, with a clear error where Ray runs without its dashboard."""
    from ray.util.state.exception import ServerUnavailable
    url = ray._private.worker.get_dashboard_url()   # this cluster's (not another's here)
    why = ""
    if url:
        try:
            return fn(address=url if url.startswith("http") else f"http://{url}",
                      timeout=TIMEOUT_S, raise_on_missing_output=False, **kwargs)
        except ServerUnavailable as e:
            why = f" ({str(e).splitlines()[0][:120]})"
    raise RuntimeError("nbray.state on Ray reads Ray's state API, which Ray's dashboard "
                       "serves, and this Ray cluster runs none (started with "
                       f"include_dashboard=False, or without ray[default]?){why}")


def _epoch(when) -> float:
    """Seconds since the epoch of a Ray cluster event's time ("YYYY-MM-DD HH:MM:SS")."""
    if isinstance(when, (int, float)):
        return float(when)
    import datetime
    try:
        return datetime.datetime.strptime(str(when), "%Y-%m-%d %H:%M:%S").timestamp()
    except ValueError:
        return 0.0


def _shown(t) -> bool:
    """Whether a Ray task is one of the user's (not an actor's creation, nor what nbray's
    backend runs for itself, nor the views' own ``__nbray_state__()`` calls)."""
    name = t.name
    return not (name in INTERNAL_TASKS or name.split(".", 1)[0] in INTERNAL_CLASSES or
                t.type == "ACTOR_CREATION_TASK" or name.endswith(".__nbray_state__"))


def _death(cause) -> str:
    """The first line of the error message in Ray's death cause of an actor."""
    if not isinstance(cause, dict):
        return ""
    for key, v in cause.items():
        if key in ("error_message", "errorMessage") and v:
            return str(v).strip().splitlines()[0][:200]
        found = _death(v)
        if found:
            return found
    return ""


def _record(t, deps, actor_pids: dict) -> dict:
    """A task record (``nbray/records.py``) from one of Ray's task states."""
    when = {}
    for e in t.events or ():             # each transition, the first time it happened
        when.setdefault(e["state"], e["created_ms"] / 1000)
    prof = {}
    for e in (t.profiling_data or {}).get("events", ()):
        prof.setdefault(e["event_name"], (e["start_time"] / 1000, e["end_time"] / 1000))
    submitted = when.get("PENDING_ARGS_AVAIL") or (t.creation_time_ms or 0) / 1000 or \
        min(list(when.values()) + [p[0] for p in prof.values()], default=0.0)
    ready = when.get("PENDING_NODE_ASSIGNMENT", submitted)
    dispatched = when.get("SUBMITTED_TO_WORKER", 0.0)
    reading = prof.get("task:deserialize_arguments")
    started = (reading[0] if reading else when.get("RUNNING") or
               (t.start_time_ms or 0) / 1000) if "RUNNING" in when or reading else 0.0
    state = TASK_STATES.get(t.state, "queued")
    error = ""
    if state == "failed":
        if t.error_type == "TASK_CANCELLED":
            state = "cancelled"
        else:
            lines = (t.error_message or "").strip().splitlines()
            last = lines[-1].strip() if lines else ""       # the exception, after its traceback
            error = (last if t.error_type == "TASK_EXECUTION_EXCEPTION" and last else
                     f"{t.error_type or 'error'}: {last}")[:200]
    ended = (when.get("FINISHED") or when.get("FAILED") or (t.end_time_ms or 0) / 1000) \
        if state in ("finished", "failed", "cancelled") else 0.0
    # Ray notes transitions to the millisecond and profile events to the microsecond: in
    # order, each no earlier than the one before it
    ready = max(ready, submitted)
    dispatched = max(dispatched, ready) if dispatched else 0.0
    if started:
        started = max(started, dispatched or ready)
        ends = [e for _, e in prof.values()]
        ended = max([ended, started] + ends) if ended else 0.0
    return {"kind": "task", "task_id": t.task_id, "name": t.name, "state": state,
            "error": error, "attempts": t.attempt_number + 1, "submitted": submitted,
            "ready": ready, "dispatched": dispatched, "started": started, "ended": ended,
            "inputs_s": reading[1] - reading[0] if reading else 0.0,
            "lease_at": dispatched, "placement": None, "node_id": t.node_id or "",
            "worker_pid": t.worker_pid or actor_pids.get(t.actor_id) or 0,
            "actor_id": t.actor_id or "", "deps": list(deps), "arg_bytes": 0,
            "result_bytes": 0, "owner_pid": None, "scope": 0, "returned": ended}
