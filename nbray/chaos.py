"""Fault injection, for tests, notebooks and teaching: kill workers, nodes and actors for real
(SIGKILL, as a crash would), one at a time or on a schedule.

    nbray.chaos.kill_worker()                       # a random worker (seed= to repeat a run)
    nbray.chaos.kill_worker(running=ref)            # the worker running that task
    nbray.chaos.kill_node(seed=1, spare_driver=True)
    nbray.chaos.kill_actor(handle)                  # its worker dies; it restarts if it may
    with nbray.chaos.schedule(nbray.chaos.kill_worker, every=0.5, for_s=10, seed=3) as s:
        ...                                         # s.kills lists what was killed

Kills go to the node concerned as signed messages: they work across machines, and only a
process holding the cluster key can send them. On another engine (``nbray/backends/``) they go
through its backend, as far as the engine allows (on Ray: workers on this machine, by pid or at
random; actors).
"""
from __future__ import annotations

import random
import threading
import time


def _client():
    from nbray import api
    return api._client()


def _nodes(alive_only: bool = True) -> list[dict]:
    from nbray import state
    return state.nodes({"state": "alive"} if alive_only else None)


def _rng(seed):
    return seed if isinstance(seed, random.Random) else random.Random(seed)


def kill_worker(pid: int | None = None, *, running=None, node: str | None = None,
                seed=None, include_actors: bool = True) -> dict:
    """SIGKILL one worker: the one with ``pid``, the one running the task of ``running`` (an
    ObjectRef), or one picked at random (on ``node``, a node id, if given). Returns what was
    killed, ``{"worker_id", "pid", "node_id"}``; ``LookupError`` if there is none to kill."""
    from nbray import backends
    if backends.engine is not None:
        return backends.engine.kill_worker(pid, running, node, _rng(seed), include_actors)
    client = _client()
    if running is not None:
        with client.lock:
            task = client.tasks.get(running.binary()[:16])
            lease = task.worker if task is not None else None
        if lease is None:
            raise LookupError("that task is not running on a worker now")
        client.kill_worker(lease.node, lease.worker_id)
        return {"worker_id": lease.worker_id.hex(), "pid": None, "node": lease.node}
    candidates = []
    for n in _nodes():
        if node is not None and n["node_id"] != node:
            continue
        for w in n.get("worker_list", []):
            if w["state"] in ("idle", "leased") and (include_actors or not w["actor"]) and \
                    (pid is None or w["pid"] == pid):
                candidates.append((n, w))
    if not candidates:
        raise LookupError("no worker to kill" + (f" with pid {pid}" if pid else ""))
    n, w = _rng(seed).choice(sorted(candidates, key=lambda c: c[1]["pid"]))
    client.kill_worker(n["address"], bytes.fromhex(w["worker_id"]))
    return {"worker_id": w["worker_id"], "pid": w["pid"], "node_id": n["node_id"]}


def kill_node(node_id: str | None = None, *, seed=None, spare_driver: bool = True) -> dict:
    """SIGKILL a node and its workers: the one with ``node_id``, or one at random (by default
    not the node this process is a client of, which would take the driver's node with it)."""
    from nbray import backends
    if backends.engine is not None:
        return backends.engine.kill_node(node_id, _rng(seed), spare_driver)
    client = _client()
    nodes = _nodes()
    if node_id is not None:
        nodes = [n for n in nodes if n["node_id"] == node_id]
    elif spare_driver:
        nodes = [n for n in nodes if n["node_id"] != client.node_id.hex()]
    if not nodes:
        raise LookupError("no node to kill")
    n = _rng(seed).choice(sorted(nodes, key=lambda n: n["node_id"]))
    client.kill_worker(n["address"], b"")
    return {"node_id": n["node_id"], "pid": n["pid"]}


def kill_actor(handle) -> None:
    """The actor's worker dies as in a crash: it restarts (and replays) if it may."""
    from nbray import api
    api.kill(handle, no_restart=False)


class Schedule:
    """Runs ``action(seed=rng)`` every ``every`` seconds for ``for_s`` seconds in a thread;
    ``kills`` lists what each call returned (calls that found nothing to kill are skipped)."""

    def __init__(self, action, every: float, for_s: float, seed=None, **kwargs):
        self.action, self.every, self.for_s = action, every, for_s
        self.kwargs = kwargs
        self.rng = _rng(seed)
        self.kills: list = []
        self.errors: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nbray-chaos", daemon=True)

    def start(self) -> "Schedule":
        self._thread.start()
        return self

    def _run(self) -> None:
        end = time.monotonic() + self.for_s
        while not self._stop.wait(self.every) and time.monotonic() < end:
            try:
                self.kills.append(self.action(seed=self.rng, **self.kwargs))
            except LookupError:
                continue
            except Exception as e:          # keep going: chaos must not stop at its own error
                self.errors.append(repr(e))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> "Schedule":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def schedule(action, *, every: float, for_s: float, seed=None, **kwargs) -> Schedule:
    """A chaos schedule, e.g. ``schedule(kill_worker, every=0.5, for_s=10, seed=1)``; use it
    as a context manager, or call ``.start()`` and ``.stop()``."""
    return Schedule(action, every, for_s, seed, **kwargs)
