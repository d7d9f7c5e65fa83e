"""A worker that hosts an actor: its instance, and how calls to it run.

By default calls run one at a time on the worker's main thread, exactly as tasks do, in the
order they arrived. An actor with ``async def`` methods runs its calls as coroutines on an event
loop of its own, up to ``max_concurrency`` at once (default 1000); one with
``max_concurrency > 1`` and plain methods runs them on that many threads. Either way the
worker's client then turns threaded: an I/O thread owns the sockets, so calls that wait in
``get`` do not hold up the others.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import pickle
import threading

from nbray.runtime import output

DEFAULT_ASYNC_CONCURRENCY = 1000


class ActorHost:
    def __init__(self, instance, max_concurrency: int | None, error=None):
        self.instance = instance
        self.error = error                  # the Value every call fails with (__init__ raised)
        cls = type(instance)
        self.is_async = error is None and any(
            inspect.iscoroutinefunction(getattr(cls, n, None)) or
            inspect.isasyncgenfunction(getattr(cls, n, None)) for n in dir(cls))
        self.max_concurrency = max_concurrency or (
            DEFAULT_ASYNC_CONCURRENCY if self.is_async else 1)
        self.concurrent = error is None and (self.is_async or self.max_concurrency > 1)
        self.calls_done = 0
        self.calls_failed = 0
        self.calls_since_checkpoint = 0
        self.last_by_caller: dict = {}      # caller address -> task id of its last call run
        self.active = 0                     # calls running now (concurrent actors)
        self._lock = threading.Lock()
        self.loop = None
        self.pool = None
        self._sem = None

    # ---- concurrent calls -------------------------------------------------------------------
    def start(self, prepare, complete, send_item) -> None:
        """``prepare(spec) -> (fn, args, kwargs)`` and ``complete(owner, spec, result, exc)``
        are the executor's halves of running a call; ``send_item(owner, spec, index, item)``
        sends an item of a method that yields."""
        self.prepare, self.complete, self.send_item = prepare, complete, send_item
        if self.is_async:
            self.loop = asyncio.new_event_loop()
            threading.Thread(target=self.loop.run_forever, name="nbray-actor-loop",
                             daemon=True).start()
            self._sem = asyncio.run_coroutine_threadsafe(_semaphore(self.max_concurrency),
                                                         self.loop).result()
        else:
            self.pool = concurrent.futures.ThreadPoolExecutor(
                self.max_concurrency, thread_name_prefix="nbray-actor")

    def submit(self, owner, spec) -> None:
        if self.is_async:
            asyncio.run_coroutine_threadsafe(self._run_async(owner, spec), self.loop)
        else:
            self.pool.submit(self._run_threaded, owner, spec)

    def _run_threaded(self, owner, spec) -> None:
        self._begin()
        token = output.CURRENT.set((spec.origin, spec.name, spec.task_id))
        try:
            try:
                fn, args, kwargs = self.prepare(spec)
                result = fn(*args, **kwargs)
                if spec.generator:
                    result = stream_items(owner, spec, result, self.send_item)
            except BaseException as exc:        # noqa: B902 - it goes back to the caller
                self.complete(owner, spec, None, exc)
                return
            self.complete(owner, spec, result, None)
        finally:
            output.CURRENT.reset(token)
            self._end()

    async def _run_async(self, owner, spec) -> None:
        async with self._sem:
            self._begin()
            output.CURRENT.set((spec.origin, spec.name, spec.task_id))    # this call's own
            try:
                try:
                    fn, args, kwargs = self.prepare(spec)
                    result = fn(*args, **kwargs)
                    if spec.generator and inspect.isasyncgen(result):
                        n = 0
                        async for item in result:
                            n += 1
                            if spec.num_returns:    # (not a replayed call's)
                                self.send_item(owner, spec, n, item)
                        result = n
                    elif spec.generator:
                        result = stream_items(owner, spec, result, self.send_item)
                    elif inspect.isawaitable(result):
                        result = await result
                except BaseException as exc:    # noqa: B902 - it goes back to the caller
                    self.complete(owner, spec, None, exc)
                    return
                self.complete(owner, spec, result, None)
            finally:
                self._end()

    def _begin(self) -> None:
        with self._lock:
            self.active += 1

    def _end(self) -> None:
        with self._lock:
            self.active -= 1

    def stop(self) -> None:
        """Wait for the calls that are running, then stop the threads."""
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        if self.loop is not None:
            asyncio.run_coroutine_threadsafe(self._drain(), self.loop).result()
            self.loop.call_soon_threadsafe(self.loop.stop)

    async def _drain(self) -> None:
        while self.active:
            await asyncio.sleep(0.01)

    # ---- introspection ----------------------------------------------------------------------
    def info(self, queued: int, running: bool) -> dict:
        out = {"queued": queued, "running": self.active if self.concurrent else int(running),
               "calls_done": self.calls_done, "calls_failed": self.calls_failed,
               "max_concurrency": self.max_concurrency, "is_async": self.is_async}
        hook = getattr(self.instance, "__nbray_state__", None)
        if hook is not None:
            try:
                state = hook()
                pickle.dumps(state, protocol=5)
                out["state"] = state
            except Exception as e:      # the user's hook must not break the state API
                out["state_error"] = f"{type(e).__name__}: {e}"
        return out


def stream_items(owner, spec, items, send_item) -> int:
    """Send each item of a call (or task) that yields as it comes; returns how many there
    were (its own result)."""
    n = 0
    for n, item in enumerate(iterate_items(spec, items), 1):
        if spec.num_returns:        # (a replayed call's items were sent the first time)
            send_item(owner, spec, n, item)
    return n


def iterate_items(spec, items):
    """The items of a call (or task) that yields: ``num_returns='streaming'``/``'dynamic'``.
    An async generator outside an async actor runs on an event loop of its own."""
    if inspect.isasyncgen(items):
        return _drive(items)
    try:
        return iter(items)
    except TypeError:
        raise TypeError(f"{spec.name} has num_returns='streaming' or 'dynamic', so it must "
                        f"yield (or return an iterable), but it returned "
                        f"{type(items).__name__}") from None


def _drive(agen):
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(agen.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(agen.aclose())
        loop.close()


async def _semaphore(n: int) -> asyncio.Semaphore:
    return asyncio.Semaphore(n)
