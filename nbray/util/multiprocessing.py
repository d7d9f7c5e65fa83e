"""``nbray.util.multiprocessing.Pool``: the standard library's process pool, on the cluster.

The pool's processes are actors (each runs ``initializer(*initargs)`` once); work goes to them
in chunks, as ``multiprocessing.Pool`` sends it, so code written for that pool runs on every
node of the cluster by changing its import:

    from nbray.util.multiprocessing import Pool
    with Pool() as pool:
        squares = pool.map(square, range(1000))
"""
from __future__ import annotations

import itertools
import multiprocessing
import threading
import weakref

TimeoutError = multiprocessing.TimeoutError


class _PoolProcess:
    def __init__(self, initializer, initargs):
        if initializer is not None:
            initializer(*initargs)

    def run(self, func, chunk: list, star: bool) -> list:
        return [func(*args) if star else func(args) for args in chunk]

    def apply(self, func, args: tuple, kwds: dict):
        return func(*args, **kwds)


class AsyncResult:
    """The result of ``apply_async``/``map_async``/``starmap_async``, as in the standard
    library: ``get(timeout)``, ``wait(timeout)``, ``ready()``, ``successful()``."""

    def __init__(self, refs: list, single: bool, callback=None, error_callback=None):
        self._single = single
        self._done = threading.Event()
        self._value = self._error = None
        self._left = len(refs)
        self._lock = threading.Lock()
        self._callback, self._error_callback = callback, error_callback
        self._futures = [ref.future() for ref in refs]   # their values, decoded once
        if not refs:
            self._finish()
        for fut in self._futures:
            fut.add_done_callback(self._one_done)

    def _one_done(self, _future) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self._finish()

    def _finish(self) -> None:
        try:
            chunks = [f.result() for f in self._futures]
            self._value = chunks[0] if self._single else list(itertools.chain(*chunks))
        except BaseException as e:
            self._error = e
        try:                # as in the standard library: first the callback, then ready
            if self._error is None and self._callback is not None:
                self._callback(self._value)
            elif self._error is not None and self._error_callback is not None:
                self._error_callback(self._error)
        except Exception:
            pass            # a failing callback is the caller's, not the result's
        self._done.set()

    def ready(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> None:
        self._done.wait(timeout)

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError("the result is not ready yet")
        return self._error is None

    def get(self, timeout: float | None = None):
        if not self._done.wait(timeout):
            raise TimeoutError(f"the result was not ready within {timeout}s")
        if self._error is not None:
            raise self._error
        return self._value


class Pool:
    """``processes`` actors (default: the cluster's CPUs) that run the pool's work.

    ``initializer(*initargs)`` runs once in each. ``ray_address`` joins that cluster if this
    process has none yet; ``ray_remote_args`` are the actors' options (``num_cpus``,
    ``resources``, ...). ``maxtasksperchild`` is not supported (a clear error)."""

    def __init__(self, processes: int | None = None, initializer=None, initargs=(),
                 maxtasksperchild: int | None = None, ray_address: str | None = None,
                 ray_remote_args: dict | None = None):
        from nbray import api
        from nbray.remote_function import remote
        if maxtasksperchild is not None:
            raise NotImplementedError("nbray's Pool does not support maxtasksperchild: its "
                                      "processes are actors that live as long as the pool")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be callable")
        if ray_address is not None and not api.is_initialized():
            api.init(address=ray_address)
        if processes is None:
            processes = max(1, int(api.cluster_resources().get("CPU", 1)))
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
            raise ValueError(f"processes must be a positive integer, got {processes!r}")
        actor_class = remote(_PoolProcess).options(**(ray_remote_args or {}))
        self._actors = [actor_class.remote(initializer, tuple(initargs))
                        for _ in range(processes)]
        self._next = itertools.cycle(range(processes))
        self._state = "running"
        self._outstanding: list = []        # the refs of work submitted, for join()
        self._results = weakref.WeakSet()   # the AsyncResults handed out, for join()

    # ---- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "Pool":
        self._check_running()
        return self

    def __exit__(self, *exc) -> None:
        self.terminate()

    def close(self) -> None:
        """No more work is accepted; what was submitted still runs."""
        if self._state == "running":
            self._state = "closed"

    def terminate(self) -> None:
        """End the pool's processes now; work still running is lost."""
        from nbray import api
        if self._state == "terminated":
            return
        self._state = "terminated"
        for actor in self._actors:
            api.kill(actor)
        self._outstanding.clear()

    def join(self) -> None:
        """Wait for the work submitted so far (after ``close`` or ``terminate``); then the
        pool's processes end."""
        from nbray import api
        if self._state == "running":
            raise ValueError("Pool.join() needs close() or terminate() first")
        if self._outstanding:
            api.wait(self._outstanding, num_returns=len(self._outstanding))
            self._outstanding.clear()
        for result in list(self._results):  # and their callbacks have run
            result.wait()
        if self._state == "closed":         # its processes exit, as the standard library's
            for actor in self._actors:
                api.kill(actor)
            self._state = "terminated"

    def _check_running(self) -> None:
        if self._state != "running":
            raise ValueError(f"the pool is {self._state}; it accepts no more work")

    # ---- submitting ------------------------------------------------------------------------
    def _actor(self):
        return self._actors[next(self._next)]

    def _submit(self, ref):
        from nbray import api
        self._outstanding.append(ref)
        if len(self._outstanding) % 256 == 0:      # forget what finished (and its values)
            _, self._outstanding = api.wait(self._outstanding,
                                            num_returns=len(self._outstanding), timeout=0)
        return ref

    def _chunks(self, func, iterable, chunksize: int | None, star: bool, items: list | None):
        """Refs of the chunks' results, submitted as the caller asks for them."""
        from nbray import api
        self._check_running()
        if chunksize is not None and (isinstance(chunksize, bool) or
                                      not isinstance(chunksize, int) or chunksize < 1):
            raise ValueError(f"chunksize must be a positive integer, got {chunksize!r}")
        if chunksize is None:       # the standard library's rule: about 4 chunks a process
            if items is None:
                chunksize = 1
            else:
                chunksize, extra = divmod(len(items), len(self._actors) * 4)
                chunksize += bool(extra) or not chunksize
        fn = api.put(func)          # shipped once, not once a chunk
        it = iter(items if items is not None else iterable)
        while True:
            chunk = list(itertools.islice(it, chunksize))
            if not chunk:
                return
            yield self._submit(self._actor().run.remote(fn, chunk, star))

    def apply_async(self, func, args=(), kwds=None, callback=None,
                    error_callback=None) -> AsyncResult:
        self._check_running()
        ref = self._submit(self._actor().apply.remote(func, tuple(args), dict(kwds or {})))
        return self._result([ref], True, callback, error_callback)

    def _result(self, refs, single, callback, error_callback) -> AsyncResult:
        result = AsyncResult(refs, single, callback, error_callback)
        self._results.add(result)
        return result

    def apply(self, func, args=(), kwds=None):
        return self.apply_async(func, args, kwds).get()

    def map_async(self, func, iterable, chunksize: int | None = None, callback=None,
                  error_callback=None) -> AsyncResult:
        refs = list(self._chunks(func, None, chunksize, False, list(iterable)))
        return self._result(refs, False, callback, error_callback)

    def starmap_async(self, func, iterable, chunksize: int | None = None, callback=None,
                      error_callback=None) -> AsyncResult:
        refs = list(self._chunks(func, None, chunksize, True, list(iterable)))
        return self._result(refs, False, callback, error_callback)

    def map(self, func, iterable, chunksize: int | None = None) -> list:
        return self.map_async(func, iterable, chunksize).get()

    def starmap(self, func, iterable, chunksize: int | None = None) -> list:
        return self.starmap_async(func, iterable, chunksize).get()

    def imap(self, func, iterable, chunksize: int = 1):
        """Results in the order of ``iterable``, as they are ready; the iterable is read as
        the pool has room (a few chunks a process ahead), so it may be long or endless."""
        from nbray import api
        window: list = []
        for ref in self._chunks(func, iterable, chunksize, False, None):
            window.append(ref)
            while len(window) >= 2 * len(self._actors):
                yield from api.get(window.pop(0))
        for ref in window:
            yield from api.get(ref)

    def imap_unordered(self, func, iterable, chunksize: int = 1):
        """Results as they finish, in any order."""
        from nbray import api
        running: list = []
        for ref in self._chunks(func, iterable, chunksize, False, None):
            running.append(ref)
            while len(running) >= 2 * len(self._actors):
                (done,), running = api.wait(running, num_returns=1)
                yield from api.get(done)
        while running:
            (done,), running = api.wait(running, num_returns=1)
            yield from api.get(done)

    def __repr__(self) -> str:
        return f"<nbray Pool of {len(self._actors)} processes, {self._state}>"


__all__ = ["Pool", "AsyncResult", "TimeoutError"]
