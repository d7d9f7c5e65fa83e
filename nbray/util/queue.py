"""``nbray.util.queue.Queue``: a first-in first-out queue that drivers, tasks and actors share.

The items live in an async actor, so a blocked ``get`` or ``put`` waits in the actor's event
loop without holding a worker thread, and any number of callers can wait at once. The handle
(the ``Queue`` object) pickles: pass it to tasks and actors like an actor handle.

    q = Queue(maxsize=100)
    producer.remote(q)          # calls q.put(item)
    item = q.get(timeout=5)     # queue.Empty (nbray.util.queue.Empty) if nothing came
"""
from __future__ import annotations

import asyncio
import queue as _stdlib_queue

from nbray.errors import RemoteError


class Empty(_stdlib_queue.Empty):
    """``get`` found nothing: the queue was empty (``block=False``) or stayed so (timeout)."""


class Full(_stdlib_queue.Full):
    """``put`` found no room: the queue was full (``block=False``) or stayed so (timeout)."""


class _QueueActor:
    def __init__(self, maxsize: int):
        self.queue = asyncio.Queue(maxsize)

    def qsize(self) -> int:
        return self.queue.qsize()

    def full(self) -> bool:
        return self.queue.full()

    async def put(self, item, timeout) -> None:
        if not await _within(self.queue.put(item), timeout):
            raise Full(f"the queue stayed full for {timeout}s")

    async def get(self, timeout):
        done = await _within(self.queue.get(), timeout)
        if not done:
            raise Empty(f"the queue stayed empty for {timeout}s")
        return done[0]

    def put_one(self, item) -> None:
        if self.queue.full():
            raise Full(f"the queue holds {self.queue.maxsize} item(s), its most")
        self.queue.put_nowait(item)

    def put_nowait(self, items: list) -> None:
        if self.queue.maxsize and self.queue.qsize() + len(items) > self.queue.maxsize:
            raise Full(f"the queue has room for {self.queue.maxsize - self.queue.qsize()} "
                       f"item(s), not {len(items)}")
        for item in items:
            self.queue.put_nowait(item)

    def get_nowait(self, n: int) -> list:
        if self.queue.qsize() < n:
            raise Empty(f"the queue holds {self.queue.qsize()} item(s), not {n}")
        return [self.queue.get_nowait() for _ in range(n)]

    def __nbray_state__(self) -> dict:
        return {"size": self.queue.qsize(), "maxsize": self.queue.maxsize}


async def _within(coro, timeout) -> tuple:
    """(its result,) if ``coro`` finished within ``timeout`` seconds, else () after it was
    cancelled. Unlike ``asyncio.wait_for``, an item got just as the time ran out is never
    lost: what finished is returned."""
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return ()
    return (task.result(),)


class Queue:
    """A FIFO queue of at most ``maxsize`` items (0: no bound). ``actor_options`` are the
    options of the actor that holds the items (``num_cpus``, ``name``, ...)."""

    def __init__(self, maxsize: int = 0, actor_options: dict | None = None):
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 0:
            raise ValueError(f"maxsize must be an integer >= 0 (0: no bound), got {maxsize!r}")
        from nbray.remote_function import remote
        self.maxsize = maxsize
        self.actor = remote(_QueueActor).options(**(actor_options or {})).remote(maxsize)

    def __len__(self) -> int:
        return self.qsize()

    def qsize(self) -> int:
        return _call(self.actor.qsize.remote())

    size = qsize

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        return _call(self.actor.full.remote())

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        """Add ``item``; with ``block`` wait for room (at most ``timeout`` seconds), else
        raise ``Full`` at once if there is none."""
        if not block:
            return self.put_nowait(item)
        _check_timeout(timeout)
        _call(self.actor.put.remote(item, timeout))

    def get(self, block: bool = True, timeout: float | None = None):
        """Take the oldest item; with ``block`` wait for one (at most ``timeout`` seconds),
        else raise ``Empty`` at once if there is none."""
        if not block:
            return self.get_nowait()
        _check_timeout(timeout)
        return _call(self.actor.get.remote(timeout))

    def put_nowait(self, item) -> None:
        _call(self.actor.put_one.remote(item))

    def get_nowait(self):
        return _call(self.actor.get_nowait.remote(1))[0]

    def put_nowait_batch(self, items) -> None:
        """Add all of ``items`` or, if they do not all fit, none (``Full``)."""
        _call(self.actor.put_nowait.remote(list(items)))

    def get_nowait_batch(self, num_items: int) -> list:
        """Take ``num_items`` items or, if there are fewer, none (``Empty``)."""
        if isinstance(num_items, bool) or not isinstance(num_items, int) or num_items < 0:
            raise ValueError(f"num_items must be an integer >= 0, got {num_items!r}")
        return _call(self.actor.get_nowait.remote(num_items))

    async def put_async(self, item, block: bool = True, timeout: float | None = None) -> None:
        if not block:
            return await _acall(self.actor.put_one.remote(item))
        _check_timeout(timeout)
        await _acall(self.actor.put.remote(item, timeout))

    async def get_async(self, block: bool = True, timeout: float | None = None):
        if not block:
            return (await _acall(self.actor.get_nowait.remote(1)))[0]
        _check_timeout(timeout)
        return await _acall(self.actor.get.remote(timeout))

    def shutdown(self) -> None:
        """End the actor holding the items: they are lost, and later calls raise
        ``ActorDiedError``."""
        from nbray import api
        api.kill(self.actor)

    def __reduce__(self):
        return (_rebuild, (self.maxsize, self.actor))


def _rebuild(maxsize: int, actor) -> Queue:
    q = Queue.__new__(Queue)
    q.maxsize, q.actor = maxsize, actor
    return q


def _check_timeout(timeout) -> None:
    from nbray import api
    api._check_timeout(timeout)


def _plain(e: RemoteError) -> BaseException:
    """Empty and Full as themselves, as the standard library's queue raises them."""
    return type(e.cause)(*e.cause.args) if isinstance(e.cause, (Empty, Full)) else e


def _call(ref):
    from nbray import api
    try:
        return api.get(ref)
    except RemoteError as e:
        raise _plain(e) from None


async def _acall(ref):
    try:
        return await ref
    except RemoteError as e:
        raise _plain(e) from None
