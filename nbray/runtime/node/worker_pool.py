"""Spawning, watching and stopping a node's worker processes."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field

from nbray.runtime.cluster import python_command


@dataclass(eq=False)
class WorkerInfo:
    worker_id: bytes
    proc: subprocess.Popen
    address: str = ""
    state: str = "starting"             # starting | idle | leased | dead
    lessee: tuple | None = None         # the peer holding the lease
    lessee_node: bytes = b""            # the node that peer lives on
    held: dict = field(default_factory=dict)
    blocked: bool = False
    actor: bool = False                 # leased to host an actor: never pooled again
    retired: bool = False               # killed on purpose (its actor ended)
    owner_died: bool = False            # killed because its actor's owner died

    @property
    def pid(self) -> int:
        return self.proc.pid


class WorkerPool:
    def __init__(self, *, node_address: str, session: str, key: bytes, bind_for):
        self.node_address = node_address
        self.session = session
        self.key = key
        self.bind_for = bind_for            # worker_id -> address the worker binds
        self.workers: dict[bytes, WorkerInfo] = {}

    def spawn(self) -> WorkerInfo:
        worker_id = os.urandom(8)
        env = dict(os.environ, NBRAY_KEY=self.key.hex())
        cmd = [*python_command("nbray.runtime.worker.main"), "--node", self.node_address,
               "--session", self.session, "--worker-id", worker_id.hex(),
               "--bind", self.bind_for(worker_id)]
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
        info = self.workers[worker_id] = WorkerInfo(worker_id, proc)
        return info

    def by_state(self, state: str) -> list[WorkerInfo]:
        return [w for w in self.workers.values() if w.state == state]

    def reap(self) -> list[WorkerInfo]:
        """Workers that exited since the last call (removed from the pool)."""
        dead = [w for w in self.workers.values() if w.proc.poll() is not None]
        for w in dead:
            w.state = "dead"
            del self.workers[w.worker_id]
        return dead

    def signal(self, worker_id: bytes, sig: int) -> bool:
        w = self.workers.get(worker_id)
        if w is None:
            return False
        try:
            os.kill(w.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def stop_all(self, grace_s: float) -> None:
        procs = [w.proc for w in self.workers.values()]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.workers.clear()
