"""Runs the tasks that clients push to this worker, in order, and sends back their results.

Results are batched: they go out when the queue runs dry, when a batch is full or when the oldest
waited a few milliseconds, so a stream of short tasks costs one message per batch each way.
A worker that blocks in ``get`` bounces the tasks queued behind the running one back to their
owners, who run them elsewhere: a task never waits behind one that waits for it.
"""
from __future__ import annotations

import collections
import pickle
import time
import traceback

import cloudpickle

from nbray.errors import TaskCancelledError
from nbray.runtime import protocol as P, serialization

_BATCH = 64
_FLUSH_AFTER_S = 0.001


class Executor:
    def __init__(self, client):
        self.client = client
        self.queue: collections.deque = collections.deque()
        self.functions: dict[bytes, object] = {}
        self.blobs: dict[bytes, bytes] = {}
        self.cancelled: set = set()
        self.running: bytes | None = None
        self.outgoing: dict = {}
        self.oldest = 0.0
        self.stopping = False
        client.on_push = self.on_message
        client.on_block = self.bounce_queued

    # ---- messages from clients -------------------------------------------------------------
    def on_message(self, peer, msg) -> None:
        if type(msg) is P.PushTasks:
            self.blobs.update(msg.functions)
            owner = msg.owner       # results go to the owner's ROUTER, after our borrow notes
            for spec in msg.tasks:
                self.queue.append((owner, spec))
            if self.client.blocked_depth:
                self.bounce_queued()    # we wait in get: someone else should run these
        elif type(msg) is P.CancelTasks:
            self.client.cancels_seen += 1
            if len(self.cancelled) > 10_000:    # cancels for tasks that had already finished
                self.cancelled.clear()
            for tid in msg.task_ids:
                if tid == self.running:
                    self.client.cancel_requested = True
                else:
                    self.cancelled.add(tid)

    def bounce_queued(self) -> None:
        while self.queue:
            owner, spec = self.queue.popleft()
            self._add_result(owner, P.TaskResult(spec.task_id, None, 0.0))
        self.flush()

    # ---- the loop --------------------------------------------------------------------------
    def run_forever(self, idle_check) -> None:
        client = self.client
        while not self.stopping:
            if self.queue:
                owner, spec = self.queue.popleft()
                ran = self.run(owner, spec)
                # results of tiny tasks leave in batches; a slower task's result leaves now,
                # rather than wait behind the tasks queued after it
                if self.queue and (ran > _FLUSH_AFTER_S or
                                   time.monotonic() - self.oldest > _FLUSH_AFTER_S):
                    self.flush()
                    client.pump(0)
            else:
                self.flush()
                if client.leases:       # leases served the tasks our task submitted: done
                    client.return_idle_leases()
                client.pump(client.idle_timeout_ms())
                if not self.queue:
                    idle_check()

    def run(self, owner: str, spec: P.TaskSpec) -> float:
        """Run one task and queue its result; returns how long it ran (seconds)."""
        if spec.task_id in self.cancelled:
            self.cancelled.discard(spec.task_id)
            err = serialization.serialize_error(
                TaskCancelledError(f"task {spec.name} was cancelled"))
            self._add_result(owner, P.TaskResult(spec.task_id, (err,) * spec.num_returns, 0.0))
            return 0.0
        client = self.client
        start = time.perf_counter()
        self.running = spec.task_id
        client.cancel_requested = False
        try:
            fn = self._function(spec.fn_id)
            values = [client.decode(v) for v in spec.arg_values]
            args, kwargs = serialization.unpack_args(spec.args_blob, values)
            client.in_user_code = True
            try:
                if client.pokes_seen > client.cancels_seen or client.cancel_requested:
                    client.take_poke()      # a cancel was announced while we got ready
                result = fn(*args, **kwargs)
            finally:
                client.in_user_code = False
            del args, kwargs, values
            encoded = self._encode(spec, result)
        except BaseException as exc:        # noqa: B902 - everything a task raises goes back
            if client.cancel_requested and isinstance(exc, (KeyboardInterrupt,
                                                            TaskCancelledError)):
                value = serialization.serialize_error(
                    TaskCancelledError(f"task {spec.name} was cancelled while running"))
            else:
                value = _error_value(exc, spec.name)
            encoded = (value,) * spec.num_returns
        finally:
            self.running = None
        ran = time.perf_counter() - start
        self._add_result(owner, P.TaskResult(spec.task_id, encoded, ran))
        return ran

    def _function(self, fn_id: bytes):
        fn = self.functions.get(fn_id)
        if fn is None:
            fn = self.functions[fn_id] = serialization.loads_function(self.blobs.pop(fn_id))
        return fn

    def _encode(self, spec: P.TaskSpec, result) -> tuple:
        client = self.client
        if spec.num_returns == 1:
            results = (result,)
        else:
            results = tuple(result)
            if len(results) != spec.num_returns:
                raise ValueError(f"{spec.name} declared num_returns={spec.num_returns} but "
                                 f"returned {len(results)} values")
        out = []
        for rid, value in zip(spec.return_ids, results):
            encoded = client.encode(rid, value)
            if encoded.contained:
                client.register_contained(rid, encoded.contained)
            out.append(encoded)
        return tuple(out)

    # ---- results ---------------------------------------------------------------------------
    def _add_result(self, owner: str, result: P.TaskResult) -> None:
        batch = self.outgoing.get(owner)
        if batch is None:
            batch = self.outgoing[owner] = []
            if len(self.outgoing) == 1:
                self.oldest = time.monotonic()
        batch.append(result)
        if len(batch) >= _BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.outgoing:
            return
        outgoing, self.outgoing = self.outgoing, {}
        for owner, results in outgoing.items():
            self.client.send_results(owner, P.TaskResults(results))


def _error_value(exc: BaseException, name: str) -> P.Value:
    tb = exc.__traceback__
    if tb is not None and tb.tb_next is not None:
        tb = tb.tb_next            # drop the executor's own frame
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    try:
        return P.Value(P.ERROR, pickle.dumps((exc, text, name), protocol=5))
    except Exception:
        try:
            return P.Value(P.ERROR, cloudpickle.dumps((exc, text, name), protocol=5))
        except Exception:
            stand_in = RuntimeError(f"{type(exc).__name__}: {exc}")
            return P.Value(P.ERROR, pickle.dumps((stand_in, text, name), protocol=5))


