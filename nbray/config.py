"""The knobs of the runtime, in one place.

Each can be set by an environment variable ``NBRAY_<NAME>`` (read when the process starts), so
that tests and the CLI can tune the children they spawn without threading arguments through.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields


@dataclass
class Config:
    #: values whose pickle is at most this many bytes travel inline in messages; larger ones
    #: go to the node's shared-memory store
    inline_threshold: int = 100 * 1024
    #: a node reports to the head this often (seconds)
    heartbeat_s: float = 0.5
    #: how long a client keeps an idle worker lease before giving it back (seconds)
    lease_idle_s: float = 0.2
    #: at most this many tasks are pushed to one leased worker ahead of its results
    max_tasks_in_flight: int = 64
    #: a caller pushes at most this many calls to one actor before their results come back
    #: (the actor's mailbox); the rest wait with the caller
    actor_inflight_max: int = 1000
    #: pipelining aims to keep about this much work (seconds) queued at each worker
    pipeline_target_s: float = 0.002
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

    @classmethod
    def from_env(cls) -> "Config":
        cfg = cls()
        for f in fields(cls):
            raw = os.environ.get(f"NBRAY_{f.name.upper()}")
            if raw is not None:
                kind = type(getattr(cfg, f.name))
                if kind is bool:            # bool("0") is True
                    value = raw.strip().lower() not in ("", "0", "false", "no", "off")
                else:
                    value = kind(raw)
                setattr(cfg, f.name, value)
        return cfg


CONFIG = Config.from_env()
