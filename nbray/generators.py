"""Remote functions and actor methods that yield.

``num_returns="streaming"`` (the default for a function or method that yields):
``.remote()`` returns an :class:`ObjectRefGenerator` at once. Iterating it (``for`` or
``async for``) gives a ref per item as the task yields it, while the task still runs; it can
be passed to ``nbray.wait`` (ready when its next item is). ``num_returns="dynamic"``:
``.remote()`` returns one ref, whose value, once the task ended, is a
:class:`DynamicObjectRefGenerator` of the items' refs.

Either way an error that ends the task (it raised, its worker died, it was cancelled, its
actor died) comes as the ref after the last item yielded: ``get`` on it raises, and the items
before it stay readable. The owner's side is ``nbray/runtime/streams.py``.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
from abc import ABCMeta


class ObjectRefGenerator(metaclass=ABCMeta):   # ABC: another backend's register
    """The refs of a streaming task's items, in the order it yields them."""

    __slots__ = ("_ref", "_client", "_next", "__weakref__")

    def __init__(self, ref, client):
        self._ref = ref             # the task's own result: its item count, or its error
        self._client = client
        self._next = 1              # the index of the next item to hand out

    def __iter__(self) -> "ObjectRefGenerator":
        return self

    def __next__(self):
        return self._next_sync(None)

    def _next_sync(self, timeout_s: float | None = None):
        """The next item's ref, waiting at most ``timeout_s`` (``GetTimeoutError``);
        ``StopIteration`` at the end."""
        ref = self._client.next_item(self._ref, self._next, timeout_s)
        if ref is None:
            raise StopIteration
        self._next += 1
        return ref

    def __aiter__(self) -> "ObjectRefGenerator":
        return self

    async def __anext__(self):
        client, index = self._client, self._next
        if client.threaded:         # its I/O thread says when the stream moves: no thread
            while client.poll_item(self._ref, index) is None:
                ready = concurrent.futures.Future()
                client.watch_stream(self._ref, index,
                                    lambda f=ready: f.done() or f.set_result(None))
                await asyncio.wrap_future(ready)
            try:
                return self._next_sync(0)
            except StopIteration:
                raise StopAsyncIteration from None
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, self._next_sync, None)
        except StopIteration:
            raise StopAsyncIteration from None

    def completed(self):
        """The ref of the task itself: its value is the number of items, or its error."""
        return self._ref

    def is_finished(self) -> bool:
        """Every item was handed out and the task is over."""
        return self._client.poll_item(self._ref, self._next) == ("end",)

    def _ready(self) -> bool:
        """For ``nbray.wait``: the next item (or the end) is there."""
        return self._client.poll_item(self._ref, self._next) is not None

    def __reduce__(self):
        raise TypeError("an ObjectRefGenerator cannot be sent to another process: iterate it "
                        "here and pass the refs, or use num_returns='dynamic'")

    def __del__(self):
        client = getattr(self, "_client", None)
        if client is not None:
            client.streams.dropped.append(self._ref._id[:16])

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._ref.task_id().hex()}, next item {self._next})"


class DynamicObjectRefGenerator:
    """The value of a ``num_returns="dynamic"`` task's ref: the refs of what it yielded."""

    def __init__(self, refs: list):
        self._refs = list(refs)

    def __iter__(self):
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)

    def __repr__(self) -> str:
        return f"DynamicObjectRefGenerator({len(self._refs)} refs)"


__all__ = ["ObjectRefGenerator", "DynamicObjectRefGenerator"]
