"""Runs the tasks that clients push to this worker, in order, and sends back their results.

Results are batched: they go out when the queue runs dry, when a batch is full or when the oldest
waited a few milliseconds, so a stream of short tasks costs one message per batch each way.
A worker that blocks in ``get`` bounces the tasks queued behind the running one back to their
owners, who run them elsewhere: a task never waits behind one that waits for it.

A worker whose lease is an actor's becomes that actor's host (``actor_host.py``) with its first
task, the creation; from then on it runs only that actor's calls, and never bounces them, since
they must run here and in order. Calls that arrive before the creation wait for it.
"""
from __future__ import annotations

import collections
import os
import pickle
import sys
import threading
import time
import traceback

import cloudpickle

from nbray.errors import TaskCancelledError
from nbray.runtime import output, protocol as P, serialization
from nbray.config import CONFIG
from nbray.runtime.actor_client import RESTORE, TERMINATE
from nbray.runtime.worker.actor_host import ActorHost, stream_items

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
        self.inputs_s = 0.0                     # the running task's time reading its args
        self.outgoing: dict = {}
        self.oldest = 0.0
        self.stopping = False
        self.host: ActorHost | None = None      # the actor this worker hosts
        self.hosting = False                    # its creation arrived (it may not have run)
        self.parked: list = []                  # calls that came before the creation ran
        self.owner_of_actor = ""
        self._wake: threading.Condition | None = None
        self.output = output.WorkerOutput(client)
        self.setups: list = []                  # drivers' setups to run before the next task
        self.detached: list = []                # CreateDetached asks (this is the keeper)
        self.kept: dict = {}                    # actor id -> handle of a detached actor
        client.on_push = self.on_message
        client.on_wait = self.output.end_task
        client.on_block = self.bounce_queued

    # ---- messages from clients -------------------------------------------------------------
    def on_message(self, peer, msg) -> None:
        if type(msg) is P.PushTasks:
            for fn_id, blob in msg.functions.items():   # each new lessee sends them again
                if fn_id not in self.functions:
                    self.blobs[fn_id] = blob
            owner = msg.owner       # results go to the owner's ROUTER, after our borrow notes
            for spec in msg.tasks:
                if spec.kind == P.ACTOR_CREATE:
                    self.hosting = True
                    self.owner_of_actor = owner     # checkpoints go to it
                    self.client.on_block = None     # an actor's calls are not bounced
                self.queue.append((owner, spec))
            if self.client.blocked_depth and not self.hosting:
                self.bounce_queued()    # we wait in get: someone else should run these
            if self._wake is not None:
                self._wake.notify()
        elif type(msg) is P.CancelTasks:
            self.client.cancels_seen += 1
            if len(self.cancelled) > 10_000:    # cancels for tasks that had already finished
                self.cancelled.clear()
            for tid in msg.task_ids:
                if tid == self.running:
                    self.client.cancel_requested = True
                    self.client.cancel_children(tid)    # what it started goes with it
                else:
                    self.cancelled.add(tid)
        elif type(msg) is P.ReturnQueued:
            self.client.cancels_seen += 1       # (a poke waits for a message for the task)
            if not self.hosting:
                self.bounce_queued(output=False)    # (the running task's line goes on)
        elif type(msg) is P.SetupWorkers:
            if self.host is not None and self.host.concurrent:
                self.client._send(msg.owner, P.SetupDone(
                    msg.setup_id, self.output.source, None,
                    "skipped: this worker hosts an actor that runs calls concurrently"))
            else:
                self.setups.append(msg)
                if self._wake is not None:
                    self._wake.notify()
        elif type(msg) is P.CreateDetached:
            self.detached.append(msg)
            if self._wake is not None:
                self._wake.notify()
        elif type(msg) is P.ActorInfoRequest:
            queued = len(self.queue) + len(self.parked)
            info = self.host.info(queued, self.running is not None) if self.host else \
                {"queued": queued, "running": 0}
            self.client._send(peer, P.Reply(msg.request_id, info))

    def bounce_queued(self, output: bool = True) -> None:
        if output:
            self.output.end_task()      # what the task printed before it waits leaves now
        while self.queue:
            owner, spec = self.queue.popleft()
            self._add_result(owner, P.TaskResult(spec.task_id, None, 0.0))
        self.flush()

    # ---- the loop --------------------------------------------------------------------------
    def run_forever(self, idle_check) -> None:
        client = self.client
        while not self.stopping:
            if self.host is not None and self.host.concurrent:
                self._run_concurrent(idle_check)
                return
            if self.setups:
                self._run_setups()
            if self.detached:
                self._create_detached()
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
                self.output.flush()
                self.flush()
                if client.leases:       # leases served the tasks our task submitted: done
                    client.return_idle_leases()
                client.pump(client.idle_timeout_ms())
                if not self.queue:
                    idle_check()
        self.flush()

    def run(self, owner: str, spec: P.TaskSpec) -> float:
        """Run one task or actor call and queue its result; returns how long it ran (s)."""
        if spec.task_id in self.cancelled:
            self.cancelled.discard(spec.task_id)
            self._add_result(owner, P.TaskResult(spec.task_id, (_cancelled(spec),) *
                                                 spec.num_returns, 0.0))
            return 0.0
        if spec.kind == P.ACTOR_CALL and self._answered_without_running(owner, spec):
            return 0.0
        client = self.client
        start = time.perf_counter()
        wall = time.time()
        self.inputs_s = 0.0
        self.running = spec.task_id
        client.cancel_requested = False
        current = (spec.origin, spec.name, spec.task_id) if spec.origin else None
        token = output.CURRENT.set(current) if current else None
        self.output.running = client.current_task = current
        if spec.placement:      # its child tasks run in its placement group (an actor's: all)
            client.capture_pg = spec.placement
        try:
            fn, args, kwargs = self.prepare(spec)
            client.in_user_code = True
            try:
                if client.poke_pending or client.cancel_requested:
                    client.take_poke()      # a cancel was announced while we got ready
                result = fn(*args, **kwargs)
                if spec.generator:
                    result = stream_items(owner, spec, result, self.send_item)
            finally:
                client.in_user_code = False
            del args, kwargs
            encoded = self._encode(spec, result)
        except BaseException as exc:        # noqa: B902 - everything a task raises goes back
            if client.cancel_requested and isinstance(exc, (KeyboardInterrupt,
                                                            TaskCancelledError)):
                value = serialization.serialize_error(
                    TaskCancelledError(f"task {spec.name} was cancelled while running"))
            else:
                value = _error_value(exc, spec.name)
            encoded = (value,) * spec.num_returns
            self._count(spec, failed=True)
        else:
            self._count(spec, failed=False)
            if spec.kind == P.ACTOR_CALL:
                self._after_call(owner, spec)
        finally:
            self.running = None
            if spec.placement and spec.kind == P.TASK:
                client.capture_pg = None
            if token is not None:
                output.CURRENT.reset(token)
                self.output.running = client.current_task = None
                self.output.end_task()      # what it printed arrives before its result
        if spec.kind == P.ACTOR_CREATE:
            self._created(encoded)
        ran = time.perf_counter() - start
        self._add_result(owner, P.TaskResult(spec.task_id, encoded, ran, wall, self.inputs_s))
        return ran

    def _run_setups(self) -> None:
        """Run the setups drivers sent (``%%remote --all``), each once, and say how it went."""
        client = self.client
        while self.setups:
            msg = self.setups.pop(0)
            current = (msg.origin, "setup", b"")
            token = output.CURRENT.set(current)
            self.output.running = current
            value, error = None, ""
            client.in_user_code = True
            try:
                fn, args = cloudpickle.loads(msg.blob)
                value = fn(*args)
                value = value if _plain(value) else repr(value)[:2000]
            except BaseException as exc:        # noqa: B902 - it goes back to the driver
                error = _user_traceback(exc)
            finally:
                client.in_user_code = False
                output.CURRENT.reset(token)
                self.output.running = None
                self.output.end_task()
            client._send(msg.owner, P.SetupDone(msg.setup_id, self.output.source, value,
                                                error))

    def _create_detached(self) -> None:
        """The keeper: make each actor asked for, as its owner, and keep its handle, so it
        lives on when the client that asked is gone (until ``nbray.kill``)."""
        client = self.client
        while self.detached:
            msg = self.detached.pop(0)
            handle, error = None, ""
            try:
                actor_class, args, kwargs = serialization.loads_function(msg.blob)
                handle = actor_class.remote(*args, **kwargs)
                self.kept[handle._actor_id] = handle
            except BaseException as exc:        # noqa: B902 - it goes back to the asker
                error = f"{type(exc).__name__}: {exc}"
            client._send(msg.reply_to, P.Reply(msg.request_id, handle, error))
        for actor_id in [a for a in self.kept if getattr(client.actors.actors.get(a), "state",
                                                          P.DEAD) == P.DEAD]:
            del self.kept[actor_id]             # killed: nothing to keep

    def prepare(self, spec: P.TaskSpec):
        """What to call and with what: (callable, args, kwargs)."""
        if spec.kind == P.TASK:
            fn = self._function(spec.fn_id)
        elif spec.kind == P.ACTOR_CALL:
            fn = getattr(self.host.instance, spec.fn_id)
        else:
            fn = self._become_actor(spec)
        start = time.perf_counter()
        values = [self.client.decode(v) for v in spec.arg_values]
        blob = spec.args_blob
        if type(blob) is P.Value:       # large arguments: in shared memory, maybe elsewhere
            blob = self.client.localize(blob)
        args, kwargs = serialization.unpack_args(blob, values)
        self.inputs_s = time.perf_counter() - start
        return fn, args, kwargs

    def _function(self, fn_id: bytes):
        fn = self.functions.get(fn_id)
        if fn is None:
            fn = self.functions[fn_id] = serialization.loads_function(self.blobs.pop(fn_id))
        return fn

    def send_item(self, owner: str, spec: P.TaskSpec, index: int, item) -> None:
        """One item of a generator task, now (any thread)."""
        client = self.client
        rid = client.return_id(spec.task_id, index)
        encoded = client.encode(rid, item)
        if encoded.contained:
            client.register_contained(rid, encoded.contained)
        self.output.end_task()
        with client.lock:
            client.send_results(owner, P.StreamItem(spec.task_id, index, encoded))
        if not client.threaded:
            client.pump(0)          # a cancel of this task, say
            if client.cancel_requested:
                raise TaskCancelledError(f"task {spec.name} was cancelled while it yielded")

    def _encode(self, spec: P.TaskSpec, result) -> tuple:
        client = self.client
        if spec.num_returns == 0:           # a replayed call, or a restore: nothing to send
            return ()
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

    # ---- actors --------------------------------------------------------------------------
    def _become_actor(self, spec: P.TaskSpec):
        cls, options = serialization.loads_function(self.blobs.pop(spec.fn_id))
        self.client.actor_id = spec.actor_id        # for get_runtime_context()

        def construct(*args, **kwargs):
            self.host = ActorHost(cls(*args, **kwargs), options.get("max_concurrency"))
            return None
        return construct

    def _created(self, encoded: tuple) -> None:
        """The creation ran: on failure every call fails with its error; parked calls run,
        after the restore of its last checkpoint when it was re-created with one."""
        if self.host is None:
            self.host = ActorHost(None, None, error=encoded[0])
        restore = self.queue.popleft() if self.queue and self.queue[0][1].fn_id == RESTORE \
            else None
        self.queue.extendleft(reversed(self.parked))
        self.parked.clear()
        if restore is not None:
            self.queue.appendleft(restore)

    def _after_call(self, caller: str, spec: P.TaskSpec) -> None:
        """Checkpoint an actor that can be, every ``actor_checkpoint_every`` calls."""
        host = self.host
        if spec.fn_id in (RESTORE, TERMINATE):
            return
        host.last_by_caller[caller] = spec.task_id
        host.calls_since_checkpoint += 1
        hook = getattr(host.instance, "__nbray_checkpoint__", None)
        if hook is None or host.calls_since_checkpoint < CONFIG.actor_checkpoint_every:
            return
        host.calls_since_checkpoint = 0
        try:
            state = serialization.serialize(hook(), 1 << 62)    # inline: it goes to the owner
        except Exception as e:
            print(f"nbray worker: __nbray_checkpoint__ of {spec.name.split('.')[0]} failed: "
                  f"{type(e).__name__}: {e}", file=sys.stderr, flush=True)
            return
        self.client._send(self.owner_of_actor, P.ActorCheckpoint(
            spec.actor_id, state, dict(host.last_by_caller)))

    def _answered_without_running(self, owner: str, spec: P.TaskSpec) -> bool:
        """A call that need not run: before the actor exists (parked), after its creation
        failed (it fails the same way), or the last one (this worker then exits)."""
        if self.host is None:
            self.parked.append((owner, spec))
            return True
        if self.host.error is not None:
            self._add_result(owner, P.TaskResult(spec.task_id, (self.host.error,) *
                                                 spec.num_returns, 0.0))
            return True
        if spec.fn_id == TERMINATE:
            self.stopping = True
            return True
        return False

    def _count(self, spec: P.TaskSpec, failed: bool) -> None:
        if spec.kind == P.ACTOR_CALL and self.host is not None:
            if failed:
                self.host.calls_failed += 1
            else:
                self.host.calls_done += 1

    def _run_concurrent(self, idle_check) -> None:
        """Calls of an async or threaded actor: the client turns threaded (an I/O thread owns
        the sockets) and this thread hands each call to the actor's loop or thread pool."""
        client, host = self.client, self.host
        host.start(self.prepare, self.complete, self.send_item)
        with client.lock:
            self._wake = threading.Condition(client.lock)
        self.flush()
        client.become_threaded()
        while not self.stopping:
            with client.lock:
                if not self.queue:
                    self._wake.wait(0.5)
                calls = list(self.queue)
                self.queue.clear()
            if not calls:
                idle_check()
            for owner, spec in calls:
                if spec.kind != P.ACTOR_CALL:
                    continue
                if spec.task_id in self.cancelled:
                    self.cancelled.discard(spec.task_id)
                    self.complete(owner, spec, None, None, cancelled=True)
                elif spec.fn_id == TERMINATE:
                    self.stopping = True
                    break
                else:
                    host.submit(owner, spec)
        host.stop()
        with client.lock:
            self.flush()

    def complete(self, owner: str, spec: P.TaskSpec, result, exc, cancelled=False) -> None:
        """Encode a concurrent call's result (or error) and send it (any thread)."""
        if cancelled:
            encoded = (_cancelled(spec),) * spec.num_returns
        elif exc is None:
            try:
                encoded = self._encode(spec, result)
            except BaseException as e:      # noqa: B902 - an unpicklable result, say
                exc = e
        if exc is not None:
            encoded = (_error_value(exc, spec.name),) * spec.num_returns
        self._count(spec, failed=exc is not None)
        self.output.end_task()
        with self.client.lock:
            self._add_result(owner, P.TaskResult(spec.task_id, encoded, 0.0))
            self.flush()

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


def _plain(value) -> bool:
    """A value small and simple enough to send back as it is."""
    return value is None or isinstance(value, (bool, int, float)) or \
        (isinstance(value, str) and len(value) <= 2000)


def _cancelled(spec: P.TaskSpec) -> P.Value:
    return serialization.serialize_error(TaskCancelledError(f"task {spec.name} was cancelled"))


_RUNTIME_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the frames that run a notebook cell as a task are the runtime's too
_CELL_RUNNER = os.path.join(os.path.dirname(_RUNTIME_DIR), "extension", "cells.py")


def _user_traceback(exc: BaseException) -> str:
    """The traceback as text, starting in the user's code (the runtime's frames before it
    are dropped)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None and (
            tb.tb_frame.f_code.co_filename.startswith(_RUNTIME_DIR) or
            tb.tb_frame.f_code.co_filename == _CELL_RUNNER):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _error_value(exc: BaseException, name: str) -> P.Value:
    text = _user_traceback(exc)
    for dumps in (pickle.dumps, cloudpickle.dumps):
        try:
            blob = dumps((exc, text, name), protocol=5)
            pickle.loads(blob)      # an exception whose __init__ its args do not fit fails here
            return P.Value(P.ERROR, blob)
        except Exception:
            pass
    stand_in = RuntimeError(f"{type(exc).__name__}: {exc} (the exception could not be "
                            f"pickled and unpickled, so it comes as a RuntimeError)")
    return P.Value(P.ERROR, pickle.dumps((stand_in, text, name), protocol=5))
