"""Lineage: how each object a client owns was made, so that a lost one can be made again.

When a task finishes, its owner keeps the task (function, arguments, resources) for as long as
one of its results lives, or as long as the lineage of another object needs it as an input.
An object is *lost* when its only copy is gone: the node holding it died (``NodeDied``), or
reading it failed. A lost object is rebuilt on demand (a ``get``, a ``wait`` or a task that
needs it), not eagerly: its task runs again, after its own lost inputs are rebuilt the same
way, recursively. Each rebuild uses one of the task's retries.

What cannot be rebuilt says why, as an ``ObjectLostError``: an object made by ``put``, a task
whose retries are used up, an input owned by another process, a task whose lineage was evicted
(at most ``lineage_max`` results keep theirs; the oldest go first).

Each loss, rebuild and impossible rebuild is an event (``events.py``).

Everything here runs under the client's lock.
"""
from __future__ import annotations

import collections

from nbray.config import CONFIG
from nbray.runtime import protocol as P


class Lineage:
    def __init__(self, client):
        self.client = client
        self.tasks: dict[bytes, object] = {}        # object id -> the task that made it
        self.needed = collections.Counter()         # object id -> recorded tasks reading it
        self.rebuilt = 0
        #: objects whose lineage was evicted (bounded too), to say so when one is lost
        self.evicted: dict[bytes, None] = {}

    # ---- recording ---------------------------------------------------------------------------
    def record(self, task) -> None:
        """A task finished: keep how its results were made while they live."""
        c = self.client
        for rid in task.spec.return_ids:
            if rid in c.objects:
                if rid in self.tasks:           # a rebuild: the new task replaces the old
                    for arg in self._release(self.tasks[rid]):
                        self.object_freed(arg)
                self.tasks[rid] = task
                for arg in task.arg_ids:
                    self.needed[arg] += 1
        while len(self.tasks) > CONFIG.lineage_max:
            self._evict()

    def _evict(self) -> None:
        """Forget the oldest result's lineage (a dict keeps the order results were recorded)."""
        oid = next(iter(self.tasks))
        task = self.tasks.pop(oid)
        self.evicted[oid] = None
        while len(self.evicted) > CONFIG.lineage_max:
            del self.evicted[next(iter(self.evicted))]
        for arg in self._release(task):
            self.object_freed(arg)

    def object_freed(self, oid: bytes) -> None:
        """The object itself is gone: its lineage goes too unless another lineage needs it,
        and with it the lineage of inputs only it needed (a loop, not a recursion: a chain
        of a million tasks unwinds here)."""
        todo = [oid]
        while todo:
            oid = todo.pop()
            if self.needed.get(oid, 0) <= 0:
                task = self.tasks.pop(oid, None)
                if task is not None:
                    todo.extend(self._release(task))

    def _release(self, task) -> list:
        """Drop a task's hold on its inputs' lineage; returns the inputs nothing holds now."""
        c, freed = self.client, []
        for arg in task.arg_ids:
            self.needed[arg] -= 1
            if self.needed[arg] <= 0:
                del self.needed[arg]
                if arg not in c.objects:
                    freed.append(arg)
        return freed

    # ---- loss --------------------------------------------------------------------------------
    def node_died(self, node_id: bytes, reason: str) -> int:
        """Objects whose only copy was on a dead node are lost; returns how many."""
        n = 0
        for oid, obj in self.client.objects.items():
            v = obj.value
            if obj.owned and v is not None and v.kind == P.SHM and v.payload.node_id == node_id:
                self.lose(oid, obj, f"its node died ({reason})")
                n += 1
                if obj.lost and (obj.dependents or obj.subscribers):
                    self.rebuild(oid)       # someone already waits for it
        return n

    def lose(self, oid: bytes, obj, why: str) -> None:
        """The object's value is gone: rebuild it when asked for, or say why it cannot be."""
        events = self.client.events
        events.emit("object_lost", object_id=oid.hex(), cause=why)
        if oid in self.tasks:
            obj.value, obj.lost = None, why
            self.client.lost_seq += 1       # a get that saw it ready must look again
        else:
            why_not = self._why_not(oid)
            events.emit("reconstruction_failed", object_id=oid.hex(), cause=why, why=why_not)
            obj.value = P.Value(P.LOST, f"object {oid.hex()} is lost ({why}), and it cannot "
                                        f"be rebuilt: {why_not}")

    def _why_not(self, oid: bytes) -> str:
        obj = self.client.objects.get(oid)
        if obj is not None and obj.by_put:
            return "it was made by put (only a task's result has lineage to replay)"
        if not self.client.owns(oid):
            return "it is owned by another process, which alone can rebuild it"
        if not CONFIG.lineage:
            return "lineage recording is off (NBRAY_LINEAGE=0)"
        if oid in self.evicted:
            return (f"its lineage was evicted (lineage is kept for the newest "
                    f"{CONFIG.lineage_max} task results; NBRAY_LINEAGE_MAX)")
        return "no lineage of it is kept (an actor's result, or its task failed)"

    # ---- rebuilding --------------------------------------------------------------------------
    def rebuild(self, oid: bytes) -> None:
        """Run again the task that made a lost object (its lost inputs first)."""
        c = self.client
        obj = c.objects.get(oid)
        old = self.tasks.get(oid)
        if old is None:
            if obj is not None and obj.value is None:
                obj.lost = None
                c._set_value(oid, obj, P.Value(P.LOST, f"object {oid.hex()} is lost and cannot "
                                                       f"be rebuilt: {self._why_not(oid)}"))
            return
        tid = old.spec.task_id
        if tid in c.tasks:                      # already being made again
            return
        cause = obj.lost if obj is not None and obj.lost else "an input of a lost object"
        if old.retries_left <= 0:
            self._fail(old, cause, f"the task {old.spec.name} that made it has no retries left")
            return
        for arg in old.arg_ids:                 # inputs this process no longer has
            if arg not in c.objects:
                if not c.owns(arg) or arg not in self.tasks:
                    self._fail(old, cause, f"an input of {old.spec.name} ({arg.hex()}) is "
                                           f"gone and " + (
                                               "its lineage was evicted (NBRAY_LINEAGE_MAX)"
                                               if arg in self.evicted else "was not made here"))
                    return
                c.objects[arg] = c.Obj(c.address, True, lost="freed, needed again")
        task = c.Task(old.spec._replace(arg_values=()), old.fn_blob, _base_key(old.key),
                      list(old.arg_ids), list(old.arg_ids), old.retries_left - 1,
                      retry_on=old.retry_on, history=old.history + [
                          f"rebuilt: {obj.lost if obj is not None and obj.lost else 'lost'}"])
        for rid in old.spec.return_ids:
            r = c.objects.get(rid)
            if r is None:
                continue
            r.value, r.lost, r.producing = None, None, True
        c.tasks[tid] = task
        for arg in task.pinned:
            c.objects[arg].pins += 1
        self.rebuilt += 1
        c.stats["rebuilt"] += 1
        c.events.emit("task_reconstructed", task_id=tid.hex(), name=old.spec.name,
                      object_id=oid.hex(), cause=cause)
        c._resolve_ids(task)

    def _fail(self, task, cause: str, why: str) -> None:
        c = self.client
        for rid in task.spec.return_ids:
            r = c.objects.get(rid)
            if r is not None and r.value is None:
                r.lost = None
                c.events.emit("reconstruction_failed", object_id=rid.hex(), cause=cause,
                              why=why)
                c._set_value(rid, r, P.Value(P.LOST, f"object {rid.hex()} is lost ({cause}) "
                                                     f"and cannot be rebuilt: {why}"))


def _base_key(key: tuple) -> tuple:
    """A task's scheduling key without the node its inputs were on (they may be elsewhere)."""
    return tuple(kv for kv in key if kv[0] != "@node")
