"""The knobs of the runtime, in one place.

Each can be set by an environment variable ``NBRAY_<NAME>`` (read when the process starts), so
that tests and the CLI can tune the children they spawn without threading arguments through.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields


#: knobs that would stop everything at 0 (a queue that holds nothing)
_LEAST = {"max_pending": 1, "node_queue_max": 1, "max_tasks_in_flight": 1,
          "actor_inflight_max": 1}


def env_name(name: str) -> str:
    return f"NBRAY_{name.upper()}"


@dataclass
class Config:
    #: values whose pickle is at most this many bytes travel inline in messages; larger ones
    #: go to the node's shared-memory store
    inline_threshold: int = 100 * 1024
    #: a node reports to the head this often (seconds)
    heartbeat_s: float = 0.5
    #: how long a client keeps an idle worker lease before giving it back (seconds)
    lease_idle_s: float = 0.2
    #: a process (driver or task) has at most this many tasks and actor calls unfinished at
    #: once (those without a ``max_pending`` of their own); past it ``.remote()`` waits for
    #: room. The bound of the submitter's queue (-1: none)
    max_pending: int = 100_000
    #: at most this many lease requests wait at a node; past it the node answers "busy" and
    #: the client asks again later, its tasks waiting with it. The bound of the node queue
    node_queue_max: int = 10_000
    #: at most this many tasks are pushed to one leased worker ahead of its results (the
    #: bound of a worker's inbox)
    max_tasks_in_flight: int = 64
    #: a caller pushes at most this many calls to one actor before their results come back
    #: (its share of the actor's mailbox); the rest wait with the caller, within its
    #: ``max_pending``
    actor_inflight_max: int = 1000
    #: pipelining aims to keep about this much work (seconds) queued at each worker
    pipeline_target_s: float = 0.002
    #: tasks queued behind a worker's running task are taken back (and run elsewhere) once
    #: it has run this long and 20 times its kind's average
    take_back_after_s: float = 0.2
    #: the node starts at most this many workers per CPU, and at least ``min_worker_cap``
    #: (workers beyond the CPUs stand in for workers blocked in get: deep recursion needs them)
    max_workers_per_cpu: int = 4
    min_worker_cap: int = 32
    #: a driver thread that polled the sockets in get keeps them this long after, so a loop of
    #: submit and get does not wake the I/O thread each time (seconds)
    baton_idle_s: float = 0.005
    #: how long shutdown waits for a process to exit before killing it (seconds)
    shutdown_grace_s: float = 3.0
    #: retries for a task whose worker died, unless the task says otherwise
    default_max_retries: int = 3
    #: where clusters of this user keep their sockets, records and logs (default
    #: ``/tmp/nbray-<uid>``); each cluster or joined node has a 0700 directory in it
    run_root: str = ""
    #: how long a node waits for the head to accept it when it starts (seconds)
    register_timeout_s: float = 10.0
    #: a node whose head has not acknowledged a heartbeat for this long stops (seconds)
    head_timeout_s: float = 30.0
    #: the head declares a node dead when it has not heard from it for this long (seconds)
    node_timeout_s: float = 5.0
    #: how long a reader waits for its node to pull an object from another node (seconds)
    fetch_timeout_s: float = 600.0
    #: a transfer from another node that makes no progress for this long fails (seconds)
    transfer_stall_s: float = 10.0
    #: a node looks this often for segments it served that their owners freed without a word
    #: to it (seconds); owners on the node tell it at once, and it tells the nodes that copied
    store_check_s: float = 0.5
    #: a task whose inputs on another node total this many bytes is placed there (locality)
    locality_min_bytes: int = 1024 * 1024
    #: keep how each task result was made, to rebuild it if its only copy is lost
    lineage: bool = True
    #: a caller of an actor that may restart keeps at most this many calls (since its last
    #: checkpoint) to replay; beyond it the actor restarts fresh, and says so
    actor_log_max: int = 10_000
    #: an actor with __nbray_checkpoint__ checkpoints after this many calls
    actor_checkpoint_every: int = 100
    #: a client keeps the lineage of at most this many task results; the oldest are evicted
    #: first (an object whose lineage was evicted cannot be rebuilt, and says so)
    lineage_max: int = 100_000
    #: the head keeps this many of the newest events (retries, rebuilds, restarts, ...)
    event_log_max: int = 10_000
    #: record every task's life (submitted, inputs ready, dispatched, started, ended, where)
    #: for the state API, the timeline and the widgets
    task_events: bool = True
    #: the head keeps the records of this many of the newest finished tasks
    task_log_max: int = 20_000
    #: a driver's get of at least this many refs not all ready after ``progress_after_s``
    #: shows a progress bar
    progress_min_refs: int = 100
    #: bytes of shared memory a cluster's objects may take on a node (0: no limit but the
    #: machine's); a put or a result beyond it fails with ObjectStoreFullError
    object_store_memory: int = 0
    progress_after_s: float = 1.0
    #: drivers and workers on one machine send each other messages on Unix sockets of their
    #: own (links.py), not through ZeroMQ: a message then wakes one thread, not four
    local_links: bool = True

    @classmethod
    def from_env(cls) -> "Config":
        cfg = cls()
        for f in fields(cls):
            raw = os.environ.get(env_name(f.name))
            if raw is not None:
                kind = type(getattr(cfg, f.name))
                if kind is bool:            # bool("0") is True
                    value = raw.strip().lower() not in ("", "0", "false", "no", "off")
                else:
                    value = kind(raw)
                setattr(cfg, f.name, value)
        return cfg


CONFIG = Config.from_env()

#: the bounds of the queues (and of the object store) that a cluster's nodes tell the drivers
#: joining it, unless the driver's own environment sets them
LIMITS = ("max_pending", "node_queue_max", "max_tasks_in_flight", "actor_inflight_max",
          "object_store_memory")
#: of those, the ones that only a cluster's nodes read: set where the cluster starts
CLUSTER_WIDE = ("node_queue_max", "object_store_memory")


def check_overrides(overrides) -> dict:
    """``overrides`` (``nbray.init(_system_config=...)``, ``nbray start --system-config``)
    checked: known names, values of the knob's type; a clear error otherwise."""
    if not isinstance(overrides, dict):
        raise TypeError(f"the system config is a dict of name -> value, got {overrides!r}")
    known = {f.name: type(getattr(CONFIG, f.name)) for f in fields(Config)}
    out = {}
    for name, value in overrides.items():
        kind = known.get(name)
        if kind is None:
            raise ValueError(f"unknown system config {name!r}; the names are: "
                             f"{', '.join(sorted(known))}")
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise ValueError(f"system config {name} takes a {kind.__name__}, got {value!r}")
        least = _LEAST.get(name, 0)
        if kind in (int, float) and value < least and not (name == "max_pending" and
                                                           value == -1):
            raise ValueError(f"system config {name} must be >= {least}"
                             f"{' (or -1: no bound)' if name == 'max_pending' else ''}, "
                             f"got {value!r}")
        out[name] = value
    return out


def apply(overrides: dict, here: bool = True) -> dict:
    """Set ``overrides`` in the environment this process's children inherit and (``here``)
    in this process; returns what to pass to ``restore`` to undo it."""
    before = {name: (os.environ.get(env_name(name)), getattr(CONFIG, name))
              for name in overrides}
    for name, value in overrides.items():
        if here:
            setattr(CONFIG, name, value)
        os.environ[env_name(name)] = str(int(value) if type(value) is bool else value)
    return before


def restore(before: dict) -> None:
    for name, (env, value) in before.items():
        setattr(CONFIG, name, value)
        if env is None:
            os.environ.pop(env_name(name), None)
        else:
            os.environ[env_name(name)] = env


def limits() -> dict:
    """This process's bounds, as a node tells them to the clients that join it."""
    return {name: getattr(CONFIG, name) for name in LIMITS}


def adopt(cluster_limits: dict) -> None:
    """A client takes its cluster's bounds, but those its own environment sets."""
    for name, value in cluster_limits.items():
        if name in LIMITS and env_name(name) not in os.environ:
            setattr(CONFIG, name, value)
