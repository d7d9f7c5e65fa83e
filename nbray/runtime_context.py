"""``nbray.get_runtime_context()``: where the calling code runs (Ray's ``RuntimeContext``).

In a driver, the task and actor ids are None; in a task, the task's id; in an actor's method,
the actor's id and the call's task id. The job is the driver whose work it is: a driver and
every task it started, directly or through other tasks, share its job id.
"""
from __future__ import annotations

import hashlib

from nbray.runtime import core_client, output


class RuntimeContext:
    def __init__(self, client: core_client.CoreClient):
        self._client = client

    def _current(self):
        return output.CURRENT.get() or self._client.current_task   # (origin, name, task id)

    def get_node_id(self) -> str:
        """The id of this process's node (hex, as ``nbray.nodes()`` says)."""
        return self._client.node_id.hex()

    def get_job_id(self) -> str:
        current = self._current()
        driver = current[0][0] if current else self._client.address
        return hashlib.sha1(driver.encode()).hexdigest()[:8]

    def get_task_id(self) -> str | None:
        current = self._current()
        return current[2].hex() if current else None

    def get_actor_id(self) -> str | None:
        return self._client.actor_id.hex() if self._client.actor_id else None

    def get_worker_id(self) -> str | None:
        worker = self._client.worker_id
        return worker.hex() if worker else None

    def is_canceled(self) -> bool:
        """Whether the running task was asked to stop (``nbray.cancel``); False outside one."""
        return bool(self._current()) and bool(getattr(self._client, "cancel_requested", False))

    node_id = property(get_node_id)
    job_id = property(get_job_id)
    task_id = property(get_task_id)
    actor_id = property(get_actor_id)
    worker_id = property(get_worker_id)

    def __repr__(self) -> str:
        return (f"RuntimeContext(node={self.get_node_id()[:8]}, job={self.get_job_id()}, "
                f"task={self.get_task_id()}, actor={self.get_actor_id()})")


def get_runtime_context() -> RuntimeContext:
    from nbray import api, backends
    if backends.engine is not None:
        return backends.engine.runtime_context()
    return RuntimeContext(api._client())
