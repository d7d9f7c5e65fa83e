"""``ref.future()`` and ``await ref``: one thread per process (started on first use) waits
for every ref that has a future, with ``nbray.wait``, and completes each future as its object
becomes ready: no thread per ref, however many are awaited at once.

    value = await ref                       # in a driver's asyncio code or an async actor
    values = await asyncio.gather(*refs)
    fut = ref.future()                      # a concurrent.futures.Future
"""
from __future__ import annotations

import concurrent.futures
import threading

_POLL_S = 0.05          # how long one wait lasts before refs added meanwhile join it


class _Resolver:
    def __init__(self):
        self.lock = threading.Condition()
        self.pending: dict = {}             # ObjectRef -> [Future]
        self.thread: threading.Thread | None = None

    def future(self, ref) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self.lock:
            self.pending.setdefault(ref, []).append(fut)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="nbray-futures",
                                               daemon=True)
                self.thread.start()
            self.lock.notify()
        return fut

    def _run(self) -> None:
        from nbray.errors import ClusterError
        from nbray.runtime import core_client
        while True:
            with self.lock:
                while not self.pending:
                    self.lock.wait()
                refs = list(self.pending)
            # this process's client, never a new one: after shutdown the futures fail
            client = core_client.current()
            error = None
            try:
                if client is None:
                    raise ClusterError("nbray was shut down before the object was ready")
                ready, _ = client.wait(refs, len(refs), _POLL_S)
            except Exception as e:          # the cluster went: every future says why
                ready, error = refs, e
            for ref in ready:
                with self.lock:
                    futures = self.pending.pop(ref, [])
                futures = [f for f in futures if f.set_running_or_notify_cancel()]
                if not futures:
                    continue
                try:
                    if error is not None:
                        raise error
                    value = client.get_values([ref], None)[0]
                except BaseException as e:
                    for f in futures:
                        f.set_exception(e)
                else:
                    for f in futures:
                        f.set_result(value)


_RESOLVER = _Resolver()


def future(ref) -> concurrent.futures.Future:
    return _RESOLVER.future(ref)
