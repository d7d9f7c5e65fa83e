"""``ActorPool``: spread work over a fixed set of actors, one call per idle actor at a time.

``fn(actor, value)`` makes the call (``lambda a, v: a.step.remote(v)``); the pool hands each
value to an idle actor and queues the rest until one is free. Results come back in submission
order (``map``, ``get_next``) or as they finish (``map_unordered``, ``get_next_unordered``).
"""
from __future__ import annotations

import collections

from nbray.errors import GetTimeoutError


class ActorPool:
    def __init__(self, actors: list):
        actors = list(actors)
        if not actors:
            raise ValueError("ActorPool needs at least one actor")
        self._idle = collections.deque(actors)
        self._queued: collections.deque = collections.deque()      # (fn, value) waiting
        self._running: dict = {}        # ref -> (index, actor)
        self._done: dict = {}           # index -> ref, finished but not handed out
        self._next_submit = 0           # index of the next submission
        self._next_return = 0           # index get_next hands out next
        self._returned: set = set()     # indices beyond it already handed out, unordered

    # ---- submitting ------------------------------------------------------------------------
    def submit(self, fn, value) -> None:
        """Run ``fn(actor, value)`` on an idle actor now, or on the next one that is free."""
        if self._idle:
            self._start(fn, value, self._idle.popleft())
        else:
            self._queued.append((fn, value))

    def _start(self, fn, value, actor) -> None:
        ref = fn(actor, value)
        self._running[ref] = (self._next_submit, actor)
        self._next_submit += 1

    def map(self, fn, values):
        """Results of ``fn(actor, v)`` for every ``v``, in the order of ``values``."""
        self._drained("map")
        for v in values:
            self.submit(fn, v)
        while self.has_next():
            yield self.get_next()

    def map_unordered(self, fn, values):
        """Results of ``fn(actor, v)`` for every ``v``, as they finish."""
        self._drained("map_unordered")
        for v in values:
            self.submit(fn, v)
        while self.has_next():
            yield self.get_next_unordered()

    def _drained(self, what: str) -> None:
        if self.has_next():
            raise RuntimeError(f"ActorPool.{what}() while results of earlier submissions are "
                               f"not all fetched; get them with get_next() first")

    # ---- results ---------------------------------------------------------------------------
    def has_next(self) -> bool:
        return bool(self._running or self._queued or self._done)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False):
        """The next result in submission order (``GetTimeoutError`` after ``timeout``; with
        ``ignore_if_timedout`` that result is skipped rather than kept for the next call)."""
        from nbray import api
        if not self.has_next():
            raise StopIteration("no more results to get")
        while self._next_return in self._returned:
            self._returned.discard(self._next_return)
            self._next_return += 1
        want = self._next_return
        while want not in self._done:
            if not self._wait_one(timeout):
                if ignore_if_timedout:
                    self._next_return += 1
                raise GetTimeoutError(f"the next result was not ready within {timeout}s")
        self._next_return += 1
        return api.get(self._done.pop(want))

    def get_next_unordered(self, timeout: float | None = None):
        """Whichever result finishes first (``GetTimeoutError`` after ``timeout``)."""
        from nbray import api
        if not self.has_next():
            raise StopIteration("no more results to get")
        if not self._done and not self._wait_one(timeout):
            raise GetTimeoutError(f"no result was ready within {timeout}s")
        index = min(self._done)
        self._returned.add(index)
        return api.get(self._done.pop(index))

    def _wait_one(self, timeout) -> bool:
        from nbray import api
        ready, _ = api.wait(list(self._running), num_returns=1, timeout=timeout)
        if not ready:
            return False
        ref = ready[0]
        index, actor = self._running.pop(ref)
        self._done[index] = ref
        self._return(actor)
        return True

    def _return(self, actor) -> None:
        if self._queued:
            fn, value = self._queued.popleft()
            self._start(fn, value, actor)
        else:
            self._idle.append(actor)

    # ---- the actors ------------------------------------------------------------------------
    def has_free(self) -> bool:
        return bool(self._idle) and not self._queued

    def pop_idle(self):
        """Take an idle actor out of the pool (None if none is idle)."""
        return self._idle.popleft() if self.has_free() else None

    def push(self, actor) -> None:
        """Add an actor to the pool; it takes queued work at once."""
        if actor in self._idle or any(a == actor for _, a in self._running.values()):
            raise ValueError("that actor is already in the pool")
        self._return(actor)
