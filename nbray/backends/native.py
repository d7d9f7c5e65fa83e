"""nbray's own runtime behind the notebook hooks (``backends.Notebook``): the driver's client
(``nbray/runtime/core_client.py``) tags what it submits with the cell's scope, its printer
(``nbray/runtime/output.py``) shows what the scope's tasks print, and an interrupt cancels the
scope's tasks and actor calls through it."""
from __future__ import annotations

import time

from nbray import backends
from nbray.runtime import core_client, output
from nbray.runtime import protocol as P


class NativeNotebook(backends.Notebook):
    name = "nbray"

    @property
    def interrupt_pending(self) -> bool:
        client = core_client.current()
        return client is not None and client.interrupt_pending

    @interrupt_pending.setter
    def interrupt_pending(self, value: bool) -> None:
        client = core_client.current()
        if client is not None:
            client.interrupt_pending = value

    def begin_cell(self, scope: int) -> None:
        core_client.CoreClient.scope = scope        # the driver's client, now or later
        client = core_client.current()
        if client is not None:
            client.scope = scope
            client.interrupt_pending = False        # one from an earlier cell is stale

    def end_cell(self, scope: int, interrupted: bool) -> int:
        client = core_client.current()
        if client is None:
            return 0
        n = client.cancel_scope(scope) if interrupted else 0
        with client.lock:
            busy = {t.spec.origin[1] for t in client.tasks.values()
                    if t.spec.origin and t.spec.origin[0] == client.address}
        with client.printer.lock:
            scopes = list(client.printer.scopes)
        for done in [s for s in scopes if s not in busy]:
            client.printer.finish(done)     # its unfinished lines, and what it dropped
        return n

    def stop(self) -> None:
        core_client.CoreClient.scope = 0

    def busy_in_runtime(self) -> bool:
        client = core_client.current()
        return client is not None and client.busy_in_runtime()

    def route_output(self, write) -> None:
        if write is not None or output.route is not None:
            output.route = write

    def worker_driver(self) -> str:
        current = output.CURRENT.get()
        return current[0][0] if current and current[0] else ""

    def run_everywhere(self, fn, args: tuple, key: str, timeout: float) -> tuple[list, int]:
        import cloudpickle
        import nbray
        from nbray import api
        client = api._client()
        expected = sum(n.get("workers", 0) for n in nbray.state.nodes({"state": "alive"}))
        setup_id = client.setup_workers(cloudpickle.dumps((fn, args), protocol=5), key)
        results = client.setup_results[setup_id]
        try:
            client.wait_for(lambda: True if len(results) >= expected else None,
                            time.monotonic() + timeout)
        finally:
            client.setup_results.pop(setup_id, None)      # later replies are not wanted
        return [(r.source, r.error or "", r.value) for r in results], expected

    def summary(self) -> dict:
        from nbray import api
        client = api._client()
        with client.lock:
            tasks = list(client.tasks.values())
            objects = list(client.objects.values())
        owned = [o for o in objects if o.owned]
        size = sum(P.value_size(o.value) or 0 for o in owned)
        return {"tasks_unfinished": sum(1 for t in tasks if t.spec.kind != P.ACTOR_CREATE),
                "objects": len(objects), "owned": len(owned), "owned_bytes": size}

    def dashboard_url(self) -> str | None:
        """The dashboard page of this kernel's cluster on its Jupyter server, if it runs
        under one (nbray's server extension serves it)."""
        from nbray import api
        from nbray.jupyter.link import dashboard_url
        record = api._driver.record
        return dashboard_url(record.session) if record is not None else None

    def held_objects(self) -> list[dict]:
        import nbray
        return nbray.state.objects()


NOTEBOOK = NativeNotebook()
