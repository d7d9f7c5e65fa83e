"""The owner's side of tasks and actor calls that yield (``num_returns="streaming"`` or
``"dynamic"``).

The worker sends each item as it is yielded (``StreamItem``: object id ``return_id(task, i)``
for ``i`` from 1); the task's own result comes last, as for any task, and is the item count or
the error that ended it. The owner keeps the items in a ``Stream``, each object holding one
count for the stream until a consumer takes its ref. An error that ended the stream (raised
mid-way, the worker died, the task was cancelled, the actor died) becomes one more item, so
iteration hands out the items yielded before it and then a ref that raises it.

- streaming: the caller's ``ObjectRefGenerator`` asks for item ``i`` (``next_item``), which
  waits until it or the end arrives; dropping the generator frees the items not taken.
- dynamic: at the end the task's one ref gets the value ``DynamicObjectRefGenerator(refs)``;
  the items then live as long as that value (they are refs contained in it).

A retried attempt (its worker died) yields again from item 1; items already kept are not
replaced, so a deterministic generator streams each item once.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field

from nbray.runtime import protocol as P


@dataclass(eq=False)
class Stream:
    kind: int                       # P.STREAMING or P.DYNAMIC
    items: list = field(default_factory=list)   # object ids, in the order yielded
    done: bool = False
    taken: int = 0                  # items whose ref a consumer took
    dropped: bool = False           # its ObjectRefGenerator is gone
    watchers: list = field(default_factory=list)    # callbacks run on each change


class Streams:
    def __init__(self, client):
        self.client = client
        self.by_task: dict[bytes, Stream] = {}
        self.dropped: collections.deque = collections.deque()   # task ids, from any thread

    def open(self, task_id: bytes, kind: int) -> None:
        self.by_task[task_id] = Stream(kind)

    # ---- from the worker -------------------------------------------------------------------
    def item(self, msg: P.StreamItem) -> None:
        client = self.client
        stream = self.by_task.get(msg.task_id)
        rid = client.return_id(msg.task_id, msg.index)
        if stream is None or stream.done or msg.index != len(stream.items) + 1:
            # a retried attempt's repeat (kept already), or an attempt nobody waits for
            kept = client.objects.get(rid)
            if kept is None:
                self._discard(rid, msg.value)
            elif msg.value.kind == P.SHM and (
                    kept.value is None or kept.value.kind != P.SHM or
                    kept.value.payload.path != msg.value.payload.path or
                    kept.value.payload.node_id != msg.value.payload.node_id):
                client._free_segment(msg.value.payload)     # a copy made elsewhere
            return
        self._add(stream, rid, msg.value)

    def _add(self, stream: Stream, rid: bytes, value: P.Value) -> None:
        client = self.client
        obj = client.Obj(client.address, True, refs=1, value=value)
        client.objects[rid] = obj
        stream.items.append(rid)
        if stream.dropped:
            obj.refs = 0
            client._maybe_free(rid, obj)
        self._changed(stream)

    def _discard(self, rid: bytes, value: P.Value) -> None:
        obj = self.client.Obj(self.client.address, True, value=value)
        self.client.objects[rid] = obj
        self.client._maybe_free(rid, obj)

    def _changed(self, stream: Stream) -> None:
        self.client._notify = True
        if stream.watchers:
            watchers, stream.watchers = stream.watchers, []
            for watch in watchers:
                watch()

    def finished(self, task, values):
        """The task is over (``values``: its result, or the error it failed with): the stream
        ends; for a dynamic one, the values to store become the generator of its refs."""
        client = self.client
        task_id = task.spec.task_id
        stream = self.by_task.get(task_id)
        if stream is None:
            return values
        first = next(iter(values))
        if first.kind not in (P.INLINE, P.SHM):     # the error is the item after the last
            self._add(stream, client.return_id(task_id, len(stream.items) + 1), first)
        stream.done = True
        self._changed(stream)
        if stream.kind == P.STREAMING:
            if stream.dropped:
                del self.by_task[task_id]
            return values
        del self.by_task[task_id]
        from nbray.generators import DynamicObjectRefGenerator
        refs = [client._make_ref(rid) for rid in stream.items]  # the stream's counts
        rid0 = task.spec.return_ids[0]
        encoded = client.encode(rid0, DynamicObjectRefGenerator(refs))
        client._register_contained(rid0, encoded.contained, ack=False)
        return (encoded,)

    # ---- for the consumer ------------------------------------------------------------------
    def poll(self, task_id: bytes, index: int):
        """("item", object id) when item ``index`` exists, ("end",) when the stream ended
        before it, None while neither."""
        stream = self.by_task.get(task_id)
        if stream is None:
            return ("end",)
        if len(stream.items) >= index:
            return ("item", stream.items[index - 1])
        return ("end",) if stream.done else None

    def take(self, task_id: bytes, index: int, oid: bytes):
        """The ref of item ``index`` (its stream's count goes to it the first time)."""
        client = self.client
        stream = self.by_task.get(task_id)
        obj = client.objects.get(oid)
        if stream is not None and index > stream.taken:
            stream.taken = index
        elif obj is not None:
            obj.refs += 1
        return client._make_ref(oid)

    def watch(self, task_id: bytes, index: int, callback) -> None:
        """Run ``callback()`` once: now if item ``index`` (or the end) is there, else when the
        stream next changes (in the thread that handles messages)."""
        if self.poll(task_id, index) is not None:
            callback()
        else:
            self.by_task[task_id].watchers.append(callback)

    def drain_dropped(self) -> None:
        """Generators dropped since: free the items nobody took."""
        client = self.client
        while self.dropped:
            task_id = self.dropped.popleft()
            stream = self.by_task.get(task_id)
            if stream is None:
                continue
            stream.dropped = True
            for rid in stream.items[stream.taken:]:
                obj = client.objects.get(rid)
                if obj is not None:
                    obj.refs -= 1
                    client._maybe_free(rid, obj)
            stream.taken = len(stream.items)
            if stream.done:
                del self.by_task[task_id]
