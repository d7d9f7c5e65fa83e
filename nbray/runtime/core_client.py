"""The client side of the runtime: submit, get, wait, put, cancel. Drivers and workers share it.

A client *owns* what it creates: the objects returned by the tasks it submits and the values it
puts. For each it keeps the value (small ones inline, large ones as a shared-memory location),
the count of live refs in this process, and the other processes that borrow it; it frees the
object when all three are gone.

The path of one task (``f.remote(x)``)::

    submit ──► waiting for inputs ──► ready queue (per resource shape)
                                           │  lease a worker from the node (kept while busy)
                                           ▼
                                 PushTasks ─► worker runs it ─► TaskResults ─► value stored,
                                                                               dependents woken

The node is asked only for leases, so a stream of tasks flows straight between this process and
its leased workers, several in flight per worker when tasks are short.

Threads: in a worker (``threaded=False``) the one thread does everything, pumping the sockets
whenever the task it runs calls get/wait. In a driver the sockets belong to whichever thread
holds the *baton*: normally a background I/O thread, so the cluster's answers are handled while
the notebook is idle; but a user thread that waits in get/wait takes the baton and polls itself,
so a result wakes the waiting thread directly instead of waking the I/O thread which then wakes
it (each wake-up of a sleeping thread costs tens of microseconds here). User threads push tasks
on send-only sockets of their own (``PushSender``); anything else they send is queued for the
baton holder.
"""
from __future__ import annotations

import collections
import heapq
import itertools
import logging
import os
import pickle
import random
import signal
import threading
import time
from dataclasses import dataclass, field

from nbray import config
from nbray.config import CONFIG
from nbray.errors import (ClusterError, GetTimeoutError, ObjectLostError, OverloadedError,
                          RemoteError, TaskCancelledError, WorkerCrashedError)
from nbray.object_ref import ObjectRef
from nbray.runtime import object_store, output, protocol as P, serialization, task_log
from nbray.runtime.actor_client import Actor, ActorCalls, cancelled_value
from nbray.runtime import admission
from nbray.runtime.events import EventBuffer
from nbray.runtime.lineage import Lineage
from nbray.runtime.streams import Streams
from nbray.runtime.transport import Endpoint, guarded

_CURRENT = None
log = logging.getLogger("nbray")


def current():
    return _CURRENT


def set_current(client) -> None:
    global _CURRENT
    _CURRENT = client


@dataclass(eq=False)
class Obj:
    """What this process knows of one object (owned, or borrowed through a ref it holds)."""
    owner: str
    owned: bool
    refs: int = 0                   # live ObjectRefs in this process
    pins: int = 0                   # pending tasks of ours that take it as an argument
    borrowers: set = field(default_factory=set)   # processes / outer objects holding it
    value: P.Value | None = None
    producing: bool = False         # owned, and its task has not finished
    subscribers: list = field(default_factory=list)   # peers waiting for the value
    dependents: list = field(default_factory=list)    # our tasks waiting for the value
    subscribed: bool = False        # borrowed: we asked the owner for the value
    registered: bool = False        # borrowed: the owner knows we hold it
    lost: object = None             # owned, its only copy gone: why (rebuilt when needed)
    rebuild_asked: bool = False     # borrowed: we asked its owner to rebuild it
    by_put: bool = False            # made by put: no lineage can rebuild it


@dataclass(eq=False)
class Task:
    spec: P.TaskSpec
    fn_blob: bytes
    key: tuple                      # scheduling key: the resource shape
    arg_ids: list                   # top-level ref ids, in slot order
    pinned: list                    # ids pinned until the task ends (top-level and nested)
    retries_left: int
    missing: int = 0
    worker: "Lease | None" = None
    cancelled: bool = False
    attempts: int = 0
    actor: "Actor | None" = None    # an actor's creation or one of its calls
    ready: bool = False             # an actor call whose inputs exist
    retry_on: object = None         # retry_exceptions: True, or a tuple of exception types
    history: list = field(default_factory=list)     # why earlier attempts failed
    parent: bytes = b""             # the task (run here) that submitted it, if any
    # its life, for the task log (seconds since the epoch): submitted, inputs ready, pushed
    t_submit: float = 0.0
    t_ready: float = 0.0
    t_push: float = 0.0
    t_start: float = 0.0            # on the worker
    run_s: float = 0.0
    inputs_s: float = 0.0           # of run_s, reading its arguments
    ran_on: tuple = ()              # (node id, worker pid, its lease's placement, granted at)
    admitted: tuple | None = None   # its admission key, given back when it is over


@dataclass(eq=False)
class Lease:
    worker_id: bytes
    address: str
    key: tuple
    inflight: dict = field(default_factory=dict)   # task_id -> Task
    sent_functions: set = field(default_factory=set)
    idle_since: float = 0.0
    progress_at: float = 0.0        # last push to it while idle, or last result from it
    returning: bool = False
    actor: "Actor | None" = None    # the worker hosts this actor (we own it)
    node: str = ""                  # the node that granted it (ours, or one spilled to)
    pid: int = 0
    node_id: bytes = b""
    placed: str = ""                # why the global scheduler put it there ("": kept local)
    granted_at: float = 0.0         # seconds since the epoch
    off_target: bool = False        # not on the node its tasks prefer: returned once idle
    taking_back: bool = False       # ReturnQueued sent: its queued tasks are on their way


@dataclass(eq=False)
class Shape:
    """Per scheduling key (resources, and the node holding most of the inputs' bytes when
    that is another node): tasks ready to run, leases held and asked for, their speed."""
    resources: dict
    prefer_node: bytes = b""
    ready: collections.deque = field(default_factory=collections.deque)
    leases: list = field(default_factory=list)
    requests: int = 0
    avg_run_s: float = 0.0


class CoreClient:
    Obj, Task, Lease = Obj, Task, Lease
    #: the driver's current scope (a notebook cell: the extension sets it): its tasks, and
    #: the tasks they start, carry it, for their output and for an interrupt of the cell
    scope = 0

    def __init__(self, *, key: bytes, session: str, node_address: str, bind: str,
                 threaded: bool, worker_id: bytes | None = None, client_id: bytes | None = None):
        self.client_id = client_id or os.urandom(8)
        self.session = session
        self.ep = Endpoint(key, self.client_id, [bind], link=CONFIG.local_links)
        self.address = self.ep.address
        self.node_address = node_address
        self.threaded = threaded
        self.worker_id = worker_id
        self.node_id = b""
        self.node_resources: dict = {}
        self.cluster_resources: dict = {}
        self.head_address = ""
        self.lock = threading.RLock()
        self.cv = threading.Condition(self.lock)
        self.objects: dict[bytes, Obj] = {}
        self.tasks: dict[bytes, Task] = {}
        self.shapes: dict[tuple, Shape] = {}
        self.leases: dict[bytes, Lease] = {}
        self._take_back_at = 0.0        # when _dispatch looks for stalled workers next
        self.actors = ActorCalls(self)
        self.lineage = Lineage(self)
        self.streams = Streams(self)
        self.events = EventBuffer()
        self.printer = output.Printer()
        self.setup_results: dict[int, list] = {}
        self.released: collections.deque = collections.deque()
        self._outbox: collections.deque = collections.deque()
        self._seq = itertools.count(1)
        self._requests = itertools.count(1)
        self._acks = itertools.count(1)
        self._lease_requests: dict[int, tuple] = {}
        self._lease_msgs: dict[int, P.RequestLease] = {}
        self._lease_targets: dict[int, str] = {}    # request id -> the node it was spilled to
        self._lease_retry: list = []    # heap of (when, request id): asked again, a node busy
        self._busy_tries: dict[int, int] = {}      # request id -> busy answers so far
        self._warned: set = set()
        self.admission = admission.Counts()
        self.lost_seq = 0               # objects lost so far (a get's scan starts over)
        object_store.FREE_HOOKS.append(self.free_released)
        #: the process's own limit on its unfinished tasks and actor calls (the cluster's
        #: ``max_pending``, or nbray.init(max_pending=...))
        self.default_limit: admission.Limit | None = process_limit()
        self._groups = 0                # nbray.util.group() blocks open: dispatch waits
        self._groups_by: int | None = None
        self._replies: dict[int, P.Reply | None] = {}
        self._pending_acks: set = set()
        self._held: list = []
        self._pusher = self.ep.push_sender()
        # the baton: which thread may use the Endpoint's sockets (see _acquire_sockets)
        self._baton_owner: int | None = None
        self._baton_busy = False                # its owner is polling right now
        self._baton_idle_since = 0.0
        self._baton_wanted: int | None = None   # a user thread waits for the I/O thread's
        self._io_ident: int | None = None
        self._io_cv = threading.Condition(self.lock)
        self._waiters = 0
        self._wake_pending = False
        self._closing = False
        self._welcomed = threading.Event()
        self._io_thread = None
        self.in_user_code = False    # worker: a task's own code is running (signals may pump)
        self.on_push = None          # worker: callback for PushTasks / CancelTasks
        self.blocked_depth = 0
        self.stats = collections.Counter()

    # ---- lifecycle -------------------------------------------------------------------------
    def connect(self, timeout: float = 30.0, alive=None) -> None:
        """Say hello to our node and wait for its welcome. ``alive()`` (a worker's check that
        its node still exists) returning False gives up at once."""
        hello = P.Hello(self.client_id, os.getpid(), self.address, self.worker_id)
        if self.threaded:
            self._io_thread = threading.Thread(target=self._io_loop, name="nbray-io", daemon=True)
            self._post(self.node_address, hello)
            self._io_thread.start()
            if not self._welcomed.wait(timeout):
                raise TimeoutError(f"node at {self.node_address} did not answer in {timeout}s")
        else:
            self.ep.send(self.node_address, hello)
            deadline = time.monotonic() + timeout
            while not self._welcomed.is_set():
                if time.monotonic() > deadline or (alive is not None and not alive()):
                    raise TimeoutError(f"node at {self.node_address} did not answer")
                self.pump(100)

    def become_threaded(self) -> None:
        """From now on an I/O thread owns the sockets (a worker hosting an async or threaded
        actor, whose calls run on other threads). Called by the thread that pumped so far."""
        with self.lock:
            self.threaded = True
            self._baton_owner = None
        self._io_thread = threading.Thread(target=self._io_loop, name="nbray-io", daemon=True)
        self._io_thread.start()

    def close(self) -> None:
        self._closing = True
        try:
            object_store.FREE_HOOKS.remove(self.free_released)
        except ValueError:
            pass
        if self._io_thread is not None:
            with self.lock:
                self._io_cv.notify_all()
                self.cv.notify_all()
            self.ep.wake()
            self._io_thread.join(timeout=5)
        # the node takes back our leases now, not when this process exits (a notebook that
        # shuts down and joins again lives on): idle ones go back to its pool, and it retires
        # the workers still running our tasks, whose results nobody will read
        io_done = self._io_thread is None or not self._io_thread.is_alive()
        if self._welcomed.is_set() and io_done:
            if self.events and self.head_address:
                self.ep.send(self.head_address, P.ReportEvents(
                    *self.events.take(), summary=self.events.take_summary()))
            nodes = {self.node_address}
            for lease in list(self.leases.values()):
                nodes.add(lease.node)
                if not lease.inflight and lease.actor is None:
                    self.ep.send(lease.node, P.ReturnLease(lease.worker_id))
            for node in nodes:
                self.ep.send(node, P.Goodbye(self.client_id))
        self.ep.close(linger_ms=200)

    # ---- ids -------------------------------------------------------------------------------
    def _new_task_id(self) -> bytes:
        return self.client_id + next(self._seq).to_bytes(8, "big")

    @staticmethod
    def return_id(task_id: bytes, index: int) -> bytes:
        return task_id + index.to_bytes(4, "big")

    def owns(self, object_id: bytes) -> bool:
        return object_id[:8] == self.client_id

    # ---- submit ----------------------------------------------------------------------------
    def _pack(self, name: str, args: tuple, kwargs: dict):
        """Pickle a call's arguments for a new task id. Returns (task_id, blob, top-level refs,
        their ids, ids to pin while it waits, id of the arguments' own object or None)."""
        buffers: list = []
        blob, top, nested = serialization.pack_args(name, args, kwargs, _is_ref, buffers.append)
        with self.lock:
            task_id = self._new_task_id()
        args_id = None
        if buffers or len(blob) > CONFIG.inline_threshold:
            blob, args_id = self._args_blob(task_id, blob, buffers, name, args, kwargs)
        arg_ids = [r._id for r in top]
        return task_id, blob, top, arg_ids, arg_ids + [i for i, _ in nested], args_id

    def _keep_args(self, task: Task, args_id) -> None:
        """Large arguments live in an object of their own, freed when the task is done."""
        if args_id is not None:
            self.objects[args_id] = Obj(self.address, True, value=task.spec.args_blob)
            task.pinned.append(args_id)

    def admit(self, limit: "admission.Limit | None") -> tuple | None:
        """Count a submission against ``limit`` (waiting for room, or refusing, as its policy
        says); returns the key to give back when it is over (None: not counted)."""
        if limit is None or limit.max_pending < 1:
            return None
        with self.lock:
            if self.admission.take(limit):
                return limit.key
        if self._groups and self._groups_by == threading.get_ident():
            # waiting for room would wait for tasks the group holds back: the process's own
            # bound lets a group's tasks through (they wait for the group's end anyway)
            if limit is self.default_limit:
                return None
            self._refuse(limit, "", " inside nbray.util.group(), which holds back the "
                                    "tasks it would wait for")
        if limit.policy == "raise" or limit.timeout == 0:
            self._refuse(limit, "")
        deadline = None if limit.timeout is None else time.monotonic() + limit.timeout
        while True:
            self.wait_for(lambda: True if self.admission.room(limit) else None, deadline,
                          lend_cpu=True)
            with self.lock:
                if self.admission.take(limit):
                    return limit.key
            if deadline is not None and time.monotonic() >= deadline:
                self._refuse(limit, f" for {limit.timeout:g}s")

    def _refuse(self, limit, waited: str, where: str = "") -> None:
        with self.lock:
            self.admission.refused += 1
        raise OverloadedError(
            f"{limit.what or 'this process'} already has {limit.max_pending} unfinished "
            f"{'calls' if limit.key[0] == 'actor' else 'tasks'} (max_pending"
            f"{'_calls' if limit.key[0] == 'actor' else ''}={limit.max_pending}){where}; "
            f"nothing was submitted{' after waiting' + waited if waited else ''}")

    def _admit_and_pack(self, limit, name: str, args: tuple, kwargs: dict) -> tuple:
        """(admission key, ``_pack``'s result): admitted first (against ``limit``, or the
        process's own without one), the room given back if the arguments cannot be packed."""
        admitted = self.admit(limit if limit is not None else self.default_limit)
        try:
            return admitted, self._pack(name, args, kwargs)
        except BaseException:
            if admitted is not None:
                with self.lock:
                    self.admission.give_back(admitted)
            raise

    def submit(self, fn_id: bytes, fn_blob: bytes, name: str, args: tuple, kwargs: dict,
               num_returns: int, resources: dict, max_retries: int,
               retry_on=None, node: bytes = b"", limit=None,
               generator: int = P.NOT_GENERATOR, placement: tuple = ()) -> list[ObjectRef]:
        """Submit a task; ``node``: run it there if that node can take it (soft affinity);
        ``limit``: its admission limit (None: the process's own, if it set one);
        ``generator``: it yields its items (``streams.py``; ``num_returns`` is then 1)."""
        admitted, (task_id, blob, top, arg_ids, pinned, args_id) = self._admit_and_pack(
            limit, name, args, kwargs)
        key = tuple(sorted(resources.items()))
        if node:
            key = key + ((_LOCALITY, node),)
        origin, parent = self._origin()
        with self.lock:
            rids = tuple(self.return_id(task_id, i) for i in range(num_returns))
            spec = P.TaskSpec(task_id, fn_id, name, blob, (), num_returns, rids, P.TASK, b"",
                              origin, generator, placement)
            if generator:
                self.streams.open(task_id, generator)
            task = Task(spec, fn_blob, key, arg_ids, pinned, max_retries, retry_on=retry_on,
                        parent=parent, t_submit=time.time(), admitted=admitted)
            for rid in rids:
                self.objects[rid] = Obj(self.address, True, refs=1, producing=True)
            self._keep_args(task, args_id)
            for oid in task.pinned:
                self.objects[oid].pins += 1
            self.tasks[task_id] = task
            self._resolve(task, top)
            refs = [self._make_ref(rid) for rid in rids]
        self._kick()
        return refs

    def _origin(self) -> tuple:
        """(origin, parent task id) of a task submitted now: a task run here passes its own
        origin on; a driver's tasks get its address and current scope."""
        current = output.CURRENT.get() or self.current_task     # (a task's own threads)
        if current is not None:
            return current[0], current[2]
        return (self.address, self.scope), b""

    def _args_blob(self, task_id: bytes, blob: bytes, buffers: list, name, args, kwargs):
        """Arguments with large buffers (or just large) go to shared memory, like a put, and
        the task carries their location: the worker reads them without a copy."""
        size = len(blob) + sum(memoryview(b).nbytes for b in buffers)
        if size <= CONFIG.inline_threshold:     # small numpy arrays: back in band
            data, _, _ = serialization.pack_args(name, args, kwargs, _is_ref)
            return data, None
        args_id = self.return_id(task_id, 0xFFFFFFFF)
        path = object_store.segment_path(self.session, args_id)
        written = object_store.write_segment(path, blob, [b.raw() for b in buffers])
        return P.Value(P.SHM, P.ShmLocation(self.node_id, path, written)), args_id

    # ---- actors ----------------------------------------------------------------------------
    def create_actor(self, cls_id: bytes, cls_blob: bytes, class_name: str, args: tuple,
                     kwargs: dict, *, placement: dict, hold: dict, max_restarts: int,
                     max_task_retries: int, name: str, namespace: str, meta: dict,
                     node: bytes = b"", placement_group: tuple = ()):
        """Create an actor we own; returns (actor id, the ref that stands for its handles).
        A name is registered with the head first: a taken name raises ClusterError."""
        task_name = f"{class_name}.__init__"
        task_id, blob, top, arg_ids, pinned, args_id = self._pack(task_name, args, kwargs)
        rid = self.return_id(task_id, 0)
        entry = {"actor_id": task_id, "name": name, "namespace": namespace,
                 "class_name": class_name, "owner": self.address, "state": P.PENDING,
                 "resources": hold, "max_restarts": max_restarts, "created_at": time.time(),
                 "meta": dict(meta, creation_id=rid, max_task_retries=max_task_retries)}
        if name:
            self.request(self.head_address, lambda r: P.RegisterActor(r, entry))
        elif self.head_address:
            self._post(self.head_address, P.RegisterActor(0, entry))
        origin, _ = self._origin()
        with self.lock:
            spec = P.TaskSpec(task_id, cls_id, task_name, blob, (), 1, (rid,),
                              P.ACTOR_CREATE, task_id, origin, placement=placement_group)
            task = Task(spec, cls_blob, ("actor",), arg_ids, pinned, 0)
            self._keep_args(task, args_id)
            actor = Actor(task_id, self.address, True, class_name, max_task_retries,
                          name=name, fn_blob=cls_blob, placement=placement, hold=hold,
                          max_restarts=max_restarts, restartable=max_restarts != 0,
                          prefer_node=node)
            self.actors.create(task, actor, top)
            ref = self._make_ref(rid)
        self._kick()
        return task_id, ref

    def call_actor(self, actor_id: bytes, owner: str, class_name: str, retries: int,
                   method: str, args: tuple, kwargs: dict, num_returns: int,
                   limit=None, generator: int = P.NOT_GENERATOR) -> list:
        """Call a method of an actor; returns the refs of its results. ``limit``: the
        handle's bound on this process's unfinished calls to the actor."""
        name = f"{class_name}.{method}"
        admitted, (task_id, blob, top, arg_ids, pinned, args_id) = self._admit_and_pack(
            limit, name, args, kwargs)
        origin, parent = self._origin()
        with self.lock:
            actor = self.actors.known(actor_id, owner, class_name, retries)
            rids = tuple(self.return_id(task_id, i) for i in range(num_returns))
            spec = P.TaskSpec(task_id, method, name, blob, (), num_returns, rids,
                              P.ACTOR_CALL, actor_id, origin, generator)
            if generator:
                self.streams.open(task_id, generator)
            task = Task(spec, b"", ("actor",), arg_ids, pinned, actor.max_task_retries,
                        parent=parent, t_submit=time.time(), admitted=admitted)
            task.actor = actor
            for rid in rids:
                self.objects[rid] = Obj(self.address, True, refs=1, producing=True)
            self._keep_args(task, args_id)
            self.actors.call(task, top)
            refs = [self._make_ref(rid) for rid in rids]
        self._kick()
        return refs

    def kill_worker(self, node_address: str, worker_id: bytes) -> None:
        """Fault injection: ask a node to SIGKILL one of its workers (or itself: empty id)."""
        with self.lock:
            self._post(node_address, P.ChaosKill(worker_id))
        self._kick()

    def kill_actor(self, actor_id: bytes, owner: str, no_restart: bool) -> None:
        with self.lock:
            self.actors.kill(actor_id, owner, no_restart)
        self._kick()

    def adopt_actor(self, actor_id: bytes, owner: str, class_name: str, retries: int) -> None:
        """A handle arrived in this process: learn where its actor is before the first call."""
        with self.lock:
            self.actors.known(actor_id, owner, class_name, retries)

    def _make_ref(self, rid: bytes) -> ObjectRef:
        ref = ObjectRef.__new__(ObjectRef)
        ref._id, ref._owner, ref._client = rid, self.address, self
        return ref

    def _resolve(self, task: Task, top: list) -> None:
        """Queue the task when its inputs exist; until then it waits here, not on a worker."""
        for ref in top:
            obj = self.objects[ref._id]
            if obj.lost:
                self.lineage.rebuild(ref._id)
            if obj.value is None:
                task.missing += 1
                obj.dependents.append(task)
                if not obj.owned:
                    self._subscribe(ref._id, obj)
        if task.missing == 0:
            self._ready(task)

    def _resolve_ids(self, task: Task) -> None:
        """``_resolve`` for a task made again from its lineage (its inputs are ours)."""
        for oid in task.arg_ids:
            obj = self.objects[oid]
            if obj.lost:
                self.lineage.rebuild(oid)
            if obj.value is None:
                task.missing += 1
                obj.dependents.append(task)
                if not obj.owned:
                    self._subscribe(oid, obj)
        if task.missing == 0:
            self._ready(task)

    def _ready(self, task: Task) -> None:
        values = [self.objects[i].value for i in task.arg_ids]
        if None in values:      # an input was lost after it had arrived: wait for it again
            self._resolve_ids(task)
            return
        if task.actor is not None:
            if values:
                task.spec = task.spec._replace(arg_values=tuple(values))
            if task.spec.kind == P.ACTOR_CREATE:
                self.actors.creation_ready(task)
            else:
                self.actors.call_ready(task)
            return
        for v in values:
            if v.kind in (P.ERROR, P.LOST):
                self._finish(task, [v] * task.spec.num_returns)
                return
        if values:
            task.spec = task.spec._replace(arg_values=tuple(values))
            pinned = task.key and task.key[-1][0] == _LOCALITY   # scheduling_strategy
            prefer = b"" if pinned else self._where_inputs_are(task)
            if prefer:      # leases for it are asked for on that node (locality)
                task.key = task.key + ((_LOCALITY, prefer),)
        task.t_ready = time.time()
        shape = self.shapes.get(task.key)
        if shape is None:
            resources = {k: v for k, v in task.key if k != _LOCALITY}
            shape = self.shapes[task.key] = Shape(resources, dict(task.key).get(_LOCALITY, b""))
        shape.ready.append(task)

    def _where_inputs_are(self, task: Task) -> bytes:
        """The other node holding most of a task's input bytes, if they are worth moving the
        task for (at least ``locality_min_bytes``); b"" otherwise."""
        if len(self.cluster_resources) == 0 or self.cluster_resources == self.node_resources:
            return b""              # one node: nowhere else to go
        by_node: dict = {}
        values = list(task.spec.arg_values)
        if type(task.spec.args_blob) is P.Value:
            values.append(task.spec.args_blob)
        for v in values:
            if v.kind == P.SHM and v.payload.node_id:
                by_node[v.payload.node_id] = by_node.get(v.payload.node_id, 0) + v.payload.size
        if not by_node:
            return b""
        node, size = max(by_node.items(), key=lambda kv: kv[1])
        if node == self.node_id or size < CONFIG.locality_min_bytes or \
                size <= by_node.get(self.node_id, 0):
            return b""
        return node

    # ---- dispatch (I/O thread, or the worker's one thread) ---------------------------------
    def hold_dispatch(self) -> None:
        """Until ``release_dispatch``, what is submitted waits to be scheduled together."""
        with self.lock:
            self._groups += 1
            self._groups_by = threading.get_ident()

    def release_dispatch(self) -> None:
        with self.lock:
            self._groups = max(0, self._groups - 1)
            if not self._groups:
                self._groups_by = None
        self._kick()

    def _check_not_held(self) -> None:
        if self._groups and self._groups_by == threading.get_ident():
            raise RuntimeError("get or wait inside nbray.util.group() would wait for tasks "
                               "the group holds back until it ends; get after the block")

    def _dispatch(self, eager: bool = True) -> None:
        now = time.monotonic()
        if self._lease_retry and self._lease_retry[0][0] <= now:
            self._retry_leases(now)
        if self._groups:
            return                      # nbray.util.group(): all together when it ends
        if self.actors.dirty:
            self.actors.dispatch()
        look_back = now >= self._take_back_at
        if look_back:               # (every 50 ms at most)
            self._take_back_at = now + 0.05
        for shape in self.shapes.values():
            if look_back and shape.leases:
                self._take_back_stalled(shape, now)
            if shape.ready:
                self._dispatch_shape(shape, eager)
            if shape.leases:
                self._return_idle(shape, now, expired_ok=not shape.ready)

    def _take_back_stalled(self, shape: Shape, now: float) -> None:
        """Tasks pipelined behind a task that has run far longer than its kind does come back
        (the worker answers them as bounced) and go to another worker: the running one may
        wait for one of them (a cell polling for a file the next cell writes), and would
        otherwise hold them until it ends."""
        late = max(CONFIG.take_back_after_s, 20 * shape.avg_run_s)
        for lease in shape.leases:
            if len(lease.inflight) > 1 and not lease.taking_back and lease.actor is None \
                    and now - lease.progress_at > late:
                lease.taking_back = True
                self._post(lease.address, P.ReturnQueued())
                self._post(lease.node, P.Poke(lease.worker_id, False))  # it may be in user code

    def _depth(self, shape: Shape) -> int:
        if shape.avg_run_s <= 0:
            return 1
        return max(1, min(CONFIG.max_tasks_in_flight,
                          int(CONFIG.pipeline_target_s / shape.avg_run_s)))

    def _dispatch_shape(self, shape: Shape, eager: bool) -> None:
        """Push ready tasks to leased workers, up to ``depth`` in flight on each. From a submit
        (``eager=False``) a task leaves at once only for an idle worker, or with a half-depth
        batch; the others leave together when results come back, one message for many."""
        depth = self._depth(shape)
        # Queue more behind a busy worker only while its results keep coming: one whose
        # current task has run over twice the usual time may be on a long task, so the next
        # tasks wait for another worker (asked for below) rather than behind it.
        fresh = min(0.05, max(0.0005, 2 * shape.avg_run_s))
        now = time.monotonic()
        usable = [lease for lease in shape.leases if not lease.returning and not (
            lease.inflight and now - lease.progress_at > fresh)]
        for lease in sorted(usable, key=lambda w: len(w.inflight)):
            inflight = len(lease.inflight)
            if not shape.ready or inflight >= depth:
                break
            # share the queue among the leases, so one worker is not handed everything
            share = -(-len(shape.ready) // len(usable))
            n = min(depth - inflight, share)
            if not eager and inflight and n < max(1, depth // 2):
                break
            self._push(lease, [shape.ready.popleft() for _ in range(n)])
        if shape.ready and not any(len(w.inflight) < depth for w in usable):
            # as many leases as the cluster has CPUs: what our node cannot grant, it spills
            cpus = max(1, int(self.cluster_resources.get("CPU", 1)))
            wanted = min(len(shape.ready), cpus) - len(usable)
            for _ in range(max(1 if not usable else 0, wanted) - shape.requests):
                self._request_lease(shape)

    def _push(self, lease: Lease, tasks: list) -> None:
        if not lease.inflight:
            lease.progress_at = time.monotonic()
        functions = {}
        now = time.time()
        for t in tasks:
            t.worker = lease
            t.t_push = now
            t.attempts += 1
            lease.inflight[t.spec.task_id] = t
            if t.spec.fn_id not in lease.sent_functions:
                lease.sent_functions.add(t.spec.fn_id)
                functions[t.spec.fn_id] = t.fn_blob
        self._send(lease.address, P.PushTasks(self.address, [t.spec for t in tasks], functions))

    def _request_lease(self, shape: Shape) -> None:
        shape.requests += 1
        self.ask_lease(shape, lambda rid: P.RequestLease(rid, shape.resources,
                                                         prefer_node=shape.prefer_node))

    def ask_lease(self, wants, make) -> None:
        """Ask our node for a lease; ``wants`` (a Shape, or an Actor) gets it. The request
        may be sent on to another node (``LeaseSpilled``)."""
        rid = next(self._requests)
        msg = make(rid)._replace(client_node=self.node_id)
        self._lease_requests[rid] = wants
        self._lease_msgs[rid] = msg
        self._send(self.node_address, msg)

    def _on_lease_spilled(self, peer, msg: P.LeaseSpilled) -> None:
        request = self._lease_msgs.get(msg.request_id)
        if request is None:
            return
        self.stats["leases_spilled"] += 1
        self._lease_targets[msg.request_id] = msg.address
        self._send(msg.address, request._replace(spilled=True, placed=msg.why))

    def _on_node_died(self, peer, msg: P.NodeDied) -> None:
        """A node died: our leases there are dead workers (their tasks are retried, our actors
        there restart), and lease requests we sent it are asked of our node again."""
        for lease in [lease for lease in self.leases.values() if lease.node == msg.address]:
            self._on_worker_died(peer, P.WorkerDied(lease.worker_id,
                                                    f"its node died: {msg.reason}"))
        if self.lineage.node_died(msg.node_id, msg.reason):
            self._notify = True     # a get waiting on a value there must rebuild it now
        for rid, target in list(self._lease_targets.items()):
            if target == msg.address and rid in self._lease_msgs:
                del self._lease_targets[rid]
                self._send(self.node_address, self._lease_msgs[rid])

    def _on_lease_busy(self, peer, msg: P.LeaseBusy) -> None:
        """The node's queue is full: ask again after a while (longer while it stays full);
        what waits for the lease waits here, within this process's own bound."""
        if msg.request_id not in self._lease_msgs:
            return
        self.stats["leases_busy"] += 1
        self._lease_targets.pop(msg.request_id, None)
        tries = self._busy_tries[msg.request_id] = self._busy_tries.get(msg.request_id, 0) + 1
        delay = min(1.0, 0.01 * 2 ** (tries - 1)) * (0.5 + random.random())  # not all at once
        heapq.heappush(self._lease_retry, (time.monotonic() + delay, msg.request_id))

    def _retry_leases(self, now: float) -> None:
        while self._lease_retry and self._lease_retry[0][0] <= now:
            _, rid = heapq.heappop(self._lease_retry)
            msg = self._lease_msgs.get(rid)
            if msg is not None:
                self._send(self.node_address, msg)

    def _on_lease_pending(self, peer, msg: P.LeasePending) -> None:
        wants = self._lease_requests.get(msg.request_id)
        if wants is None:
            return
        what = f"actor {wants.class_name}" if type(wants) is Actor else \
            f"a task that needs {_describe(wants.resources)}"
        key = (what, msg.reason)
        if key not in self._warned:             # once: it is asked again for every lease
            self._warned.add(key)
            log.warning("nbray: %s cannot be scheduled yet: %s", what, msg.reason)

    def _return_idle(self, shape: Shape, now: float, expired_ok: bool) -> None:
        for lease in list(shape.leases):
            if lease.inflight:
                continue
            if lease.returning or (expired_ok and (
                    lease.off_target or now - lease.idle_since >= CONFIG.lease_idle_s)):
                shape.leases.remove(lease)
                del self.leases[lease.worker_id]
                self._send(lease.node, P.ReturnLease(lease.worker_id))

    # ---- message handling ------------------------------------------------------------------
    def _handle(self, peer, msg) -> None:
        handler = self._HANDLERS.get(type(msg))
        if handler is None:
            self.stats["unknown_message"] += 1
            return
        guarded(handler, self, peer, msg)

    def _on_task_results(self, peer, msg: P.TaskResults) -> None:
        now = time.monotonic()
        for res in msg.results:
            task = self.tasks.get(res.task_id)
            if task is None:
                continue
            task.t_start, task.run_s, task.inputs_s = res.started, res.run_s, res.inputs_s
            if task.actor is not None:
                if task.spec.kind == P.ACTOR_CREATE:
                    self.actors.creation_done(task, res.values)
                else:
                    self.actors.result(task, res.values)
                continue
            lease = task.worker
            if lease is not None:
                task.ran_on = (lease.node_id, lease.pid, lease.placed, lease.granted_at)
                lease.inflight.pop(res.task_id, None)
                if res.values is not None:      # (a bounce says nothing of its progress)
                    lease.progress_at = now
                    lease.taking_back = False
                if not lease.inflight:
                    lease.idle_since = now
                    lease.taking_back = False
                task.worker = None
            if res.values is None:       # bounced: the worker blocked, or was asked for it
                self._requeue(task, front=True)
                continue
            shape = self.shapes[task.key]
            shape.avg_run_s = res.run_s if shape.avg_run_s <= 0 else \
                0.8 * shape.avg_run_s + 0.2 * res.run_s
            if task.retry_on is not None and task.retries_left > 0 and \
                    self._retry_error(task, res.values):
                continue
            if self.lineage.tasks and self._input_lost(task, res.values):
                continue
            self._finish(task, res.values)

    def _input_lost(self, task: Task, values) -> bool:
        """The task could not read an input of ours whose copy is gone: rebuild the input from
        its lineage and run the task again when it exists."""
        error = next((v for v in values if v.kind == P.ERROR), None)
        if error is None or task.retries_left <= 0:
            return False
        exc = serialization.deserialize(error)
        exc = exc[0] if isinstance(exc, tuple) else exc
        path = getattr(exc, "path", None)
        if not isinstance(exc, ObjectLostError) or not path:
            return False
        lost, hopeless = [], None
        for oid in task.arg_ids:
            obj = self.objects.get(oid)
            if obj is None or not obj.owned:
                continue
            v = obj.value
            if obj.lost:                # known lost already (its node's death came first)
                lost.append(oid)
            elif v is not None and v.kind == P.SHM and v.payload.path == path:
                self.lineage.lose(oid, obj, "a task could not read its copy")
                if obj.lost:
                    lost.append(oid)
                else:                   # it cannot be rebuilt: the task fails saying why
                    hopeless = obj.value
        if hopeless is not None:
            self._finish(task, _repeat(hopeless))
            return True
        if not lost:
            return False
        task.retries_left -= 1
        cause = f"its input(s) {', '.join(o.hex() for o in lost)} were lost"
        task.history.append(f"attempt {task.attempts}: {cause}")
        self._event_retry(task, "task_retried", cause)
        task.missing = 0
        task.key = tuple(kv for kv in task.key if kv[0] != _LOCALITY)
        self._resolve_ids(task)
        return True

    def _retry_error(self, task: Task, values) -> bool:
        """retry_exceptions: an attempt that raised one of those is run again."""
        error = next((v for v in values if v.kind == P.ERROR), None)
        if error is None:
            return False
        exc = serialization.deserialize(error)
        exc = exc[0] if isinstance(exc, tuple) else exc
        if task.retry_on is not True and not isinstance(exc, task.retry_on):
            return False
        task.retries_left -= 1
        cause = f"raised {type(exc).__name__}: {exc}"
        task.history.append(f"attempt {task.attempts}: {cause}")
        self._event_retry(task, "task_retried", cause)
        self.stats["retries"] += 1
        self._requeue(task)
        return True

    def _event_retry(self, task: Task, kind: str, cause: str) -> None:
        self.events.emit(kind, task_id=task.spec.task_id.hex(), name=task.spec.name,
                         attempt=task.attempts, cause=cause)

    def _finish(self, task: Task, values) -> None:
        """The task is over: store its return values, wake who waits, unpin its arguments."""
        self.tasks.pop(task.spec.task_id, None)
        if task.spec.generator:
            values = self.streams.finished(task, values)
        if task.admitted is not None:
            self.admission.give_back(task.admitted)
            task.admitted = None
            self._notify = True         # a submitter may be waiting for room
        if CONFIG.task_events and task.t_submit:
            values = list(itertools.islice(values, task.spec.num_returns)) \
                if type(values) is itertools.repeat else values
            self.events.record(task_log.record(task, values, self))
        ok = True
        for rid, value in zip(task.spec.return_ids, values):
            ok = ok and value.kind in (P.INLINE, P.SHM)
            obj = self.objects.get(rid)
            if obj is None:
                continue
            obj.producing = False
            self._set_value(rid, obj, value)
        if ok and task.actor is None and CONFIG.lineage and not task.spec.generator:
            self.lineage.record(task)       # before its arguments are unpinned
        for oid in task.pinned:
            obj = self.objects.get(oid)
            if obj is not None:
                obj.pins -= 1
                self._maybe_free(oid, obj)

    def _set_value(self, oid: bytes, obj: Obj, value: P.Value) -> None:
        obj.value = value
        if obj.subscribers:
            for peer in obj.subscribers:
                self._send(peer, P.ObjectStates([(oid, value)]))
            obj.subscribers.clear()
        if obj.dependents:
            for task in obj.dependents:
                task.missing -= 1
                if task.missing == 0 and not task.cancelled:
                    self._ready(task)
            obj.dependents.clear()
        self._notify = True
        self._maybe_free(oid, obj)

    def _requeue(self, task: Task, front: bool = False) -> None:
        if task.cancelled:
            return
        shape = self.shapes[task.key]
        (shape.ready.appendleft if front else shape.ready.append)(task)

    def _on_lease_granted(self, peer, msg: P.LeaseGranted) -> None:
        node = peer[1] if peer[0] is False else self.node_address
        shape = self._lease_requests.pop(msg.request_id, None)
        self._lease_msgs.pop(msg.request_id, None)
        self._lease_targets.pop(msg.request_id, None)
        self._busy_tries.pop(msg.request_id, None)
        if shape is None:
            self._send(node, P.ReturnLease(msg.worker_id))
            return
        if type(shape) is Actor:
            self.actors.lease_granted(shape, msg, node)
            return
        shape.requests -= 1
        key = next(k for k, s in self.shapes.items() if s is shape)
        lease = Lease(msg.worker_id, msg.address, key, idle_since=time.monotonic(), node=node,
                      pid=msg.pid, node_id=msg.node_id, placed=msg.placed,
                      granted_at=time.time(), off_target=bool(
                          shape.prefer_node and msg.node_id and
                          msg.node_id != shape.prefer_node))
        self.leases[msg.worker_id] = lease
        shape.leases.append(lease)

    def _on_lease_rejected(self, peer, msg: P.LeaseRejected) -> None:
        self._lease_msgs.pop(msg.request_id, None)
        self._busy_tries.pop(msg.request_id, None)
        self._lease_targets.pop(msg.request_id, None)
        shape = self._lease_requests.pop(msg.request_id, None)
        if shape is None:
            return
        if type(shape) is Actor:
            self.actors.lease_rejected(shape, msg.reason)
            return
        shape.requests -= 1
        err = serialization.serialize_error(
            RemoteError.from_parts(RuntimeError(msg.reason), "", "scheduler"))
        while shape.ready:
            self._finish(shape.ready.popleft(), _repeat(err))

    def _on_reclaim(self, peer, msg) -> None:
        """Another client waits for a worker. Give back the idle ones; if none is idle, stop
        feeding ours and give each back when drained (queued tasks then ask again, behind the
        other client's request)."""
        node = peer[1] if peer[0] is False else self.node_address
        ours = [lease for lease in self.leases.values()
                if lease.actor is None and lease.node == node]      # that node's leases only
        idle = [lease for lease in ours if not lease.inflight]
        for lease in idle or ours:
            lease.returning = True

    def _on_worker_died(self, peer, msg: P.WorkerDied) -> None:
        lease = self.leases.pop(msg.worker_id, None)
        if lease is None:
            if msg.owner_died:
                self.actors.worker_gone(msg.worker_id, msg.reason)
            return
        if lease.actor is not None:
            self.actors.worker_died(lease, msg.reason)
            return
        shape = self.shapes.get(lease.key)
        if shape is not None and lease in shape.leases:
            shape.leases.remove(lease)
        for task in list(lease.inflight.values()):
            task.worker = None
            if task.cancelled:
                self._finish(task, _repeat(serialization.serialize_error(
                    TaskCancelledError(f"task {task.spec.name} was cancelled"))))
            else:
                cause = f"its worker died ({msg.reason})"
                task.history.append(f"attempt {task.attempts}: {cause}")
                self._event_retry(task, "task_retried" if task.retries_left > 0 else
                                  "task_failed", cause)
                if task.retries_left > 0:
                    task.retries_left -= 1
                    self.stats["retries"] += 1
                    self._requeue(task, front=True)
                else:
                    err = WorkerCrashedError(
                        f"task {task.spec.name} failed {task.attempts} time(s), its retries "
                        f"used up: " + "; ".join(task.history))
                    err.history = list(task.history)
                    self._finish(task, _repeat(serialization.serialize_error(err)))

    def _on_welcome(self, peer, msg: P.Welcome) -> None:
        self.node_id = msg.node_id
        self.node_resources = msg.resources
        self.cluster_resources = dict(msg.cluster_resources or msg.resources)
        self.head_address = msg.head_address
        config.adopt(msg.limits)        # the cluster's bounds, but what our environment sets
        self.default_limit = process_limit()
        self._welcomed.set()

    def _on_cluster_resources(self, peer, msg: P.ClusterResources) -> None:
        self.cluster_resources = dict(msg.total)

    def _on_subscribe(self, peer, msg: P.Subscribe) -> None:
        ready = []
        for oid in msg.object_ids:
            obj = self.objects.get(oid) if self.owns(oid) else None
            if obj is None:
                ready.append((oid, P.Value(P.LOST, f"object {oid.hex()} was freed by its owner")))
            elif obj.value is not None:
                ready.append((oid, obj.value))
            else:
                obj.subscribers.append(peer)
        if ready:
            self._send(peer, P.ObjectStates(ready))

    def _on_object_states(self, peer, msg: P.ObjectStates) -> None:
        for oid, value in msg.states:
            obj = self.objects.get(oid)
            if obj is not None and obj.value is None:
                self._set_value(oid, obj, value)

    def _on_add_borrower(self, peer, msg: P.AddBorrower) -> None:
        for oid in msg.object_ids:
            obj = self.objects.get(oid)
            if obj is not None:
                obj.borrowers.add(msg.borrower)
            else:
                self.stats["late_borrow"] += 1
        if msg.ack_id:
            self._send(peer, P.Ack(msg.ack_id))

    def _on_remove_borrower(self, peer, msg: P.RemoveBorrower) -> None:
        for oid in msg.object_ids:
            obj = self.objects.get(oid)
            if obj is not None:
                obj.borrowers.discard(msg.borrower)
                self._maybe_free(oid, obj)

    def _on_ack(self, peer, msg: P.Ack) -> None:
        self._pending_acks.discard(msg.ack_id)
        if not self._pending_acks and self._held:
            held, self._held = self._held, []
            for address, m in held:
                self._send(address, m)

    def _on_subscribe_actor(self, peer, msg: P.SubscribeActor) -> None:
        self.actors.on_subscribe(peer, msg)

    def _on_actor_state(self, peer, msg: P.ActorState) -> None:
        self.actors.on_state(msg)

    def _on_actor_checkpoint(self, peer, msg: P.ActorCheckpoint) -> None:
        self.actors.on_checkpoint(msg)

    def _on_kill_actor(self, peer, msg: P.KillActor) -> None:
        actor = self.actors.actors.get(msg.actor_id)
        if actor is not None and actor.owned:
            self.actors.on_kill(actor, msg.no_restart)

    def _on_report_lost(self, peer, msg: P.ReportLost) -> None:
        obj = self.objects.get(msg.object_id)
        v = obj.value if obj is not None else None
        if obj is not None and obj.owned and v is not None and v.kind == P.SHM and \
                v.payload.path == msg.path:
            self.lineage.lose(msg.object_id, obj, "a borrower could not read its copy")
            if obj.lost:
                self.lineage.rebuild(msg.object_id)     # the borrower waits for it

    def _on_reply(self, peer, msg: P.Reply) -> None:
        if msg.request_id in self._replies:
            self._replies[msg.request_id] = msg
            self._notify = True

    def _on_task_output(self, peer, msg: P.TaskOutput) -> None:
        self.printer(msg)

    def _on_setup_done(self, peer, msg: P.SetupDone) -> None:
        if msg.setup_id in self.setup_results:
            self.setup_results[msg.setup_id].append(msg)
            self._notify = True

    def setup_workers(self, blob: bytes, key: str = "") -> int:
        """Have every worker of the cluster, and every one started later, run the
        cloudpickled ``(fn, args)`` once (``SetupDone`` replies collect in ``setup_results``)."""
        with self.lock:
            setup_id = next(self._requests)
            self.setup_results[setup_id] = []
            self._send(self.node_address, P.SetupWorkers(setup_id, self.address, blob,
                                                         (self.address, self.scope), key=key))
        return setup_id

    def _on_push(self, peer, msg) -> None:
        if self.on_push is not None:
            self.on_push(peer, msg)

    def _on_shutdown(self, peer, msg) -> None:
        if self.on_shutdown is not None:
            self.on_shutdown()

    on_shutdown = None

    _HANDLERS = {
        P.TaskResults: _on_task_results,
        P.StreamItem: lambda self, peer, msg: self.streams.item(msg),
        P.LeaseGranted: _on_lease_granted,
        P.LeaseRejected: _on_lease_rejected,
        P.LeaseSpilled: _on_lease_spilled,
        P.LeasePending: _on_lease_pending,
        P.LeaseBusy: _on_lease_busy,
        P.ClusterResources: _on_cluster_resources,
        P.NodeDied: _on_node_died,
        P.ReclaimLeases: _on_reclaim,
        P.WorkerDied: _on_worker_died,
        P.Welcome: _on_welcome,
        P.Subscribe: _on_subscribe,
        P.ObjectStates: _on_object_states,
        P.AddBorrower: _on_add_borrower,
        P.RemoveBorrower: _on_remove_borrower,
        P.Ack: _on_ack,
        P.PushTasks: _on_push,
        P.CancelTasks: _on_push,
        P.ReturnQueued: _on_push,
        P.ActorInfoRequest: _on_push,
        P.SetupWorkers: _on_push,
        P.CreateDetached: _on_push,
        P.SetupDone: _on_setup_done,
        P.SubscribeActor: _on_subscribe_actor,
        P.ActorState: _on_actor_state,
        P.KillActor: _on_kill_actor,
        P.ActorCheckpoint: _on_actor_checkpoint,
        P.ReportLost: _on_report_lost,
        P.Reply: _on_reply,
        P.TaskOutput: _on_task_output,
        P.Shutdown: _on_shutdown,
    }

    # ---- refs, borrowing, freeing ----------------------------------------------------------
    def adopt(self, ref: ObjectRef, by_id: bool = False) -> None:
        """Count a ref that was unpickled (or built from an id: ``by_id``) in this process."""
        with self.lock:
            if by_id and self.released and self.owns(ref._id):
                # an object of ours whose last ref was dropped is gone now, not still
                # readable by an id kept from it (only ours: a borrowed object's release
                # must not race the borrow that would follow)
                self._drain_released()
            obj = self.objects.get(ref._id)
            if obj is None:
                owned = self.owns(ref._id)
                if owned:       # our own object came back after it was freed
                    obj = Obj(self.address, True, value=P.Value(
                        P.LOST, f"object {ref._id.hex()} was already freed"))
                elif not ref._owner:
                    raise ValueError(
                        f"ObjectRef({ref._id.hex()}): this process neither owns nor holds "
                        f"that object, so its owner is unknown; pass the ref itself (refs "
                        f"travel in arguments, values and return values)")
                else:
                    obj = Obj(ref._owner, False)
                self.objects[ref._id] = obj
            ref._client = self
            if not ref._owner:
                ref._owner = obj.owner
            if not obj.owned and not obj.registered:
                obj.registered = True
                ack = next(self._acks)
                self._pending_acks.add(ack)
                self._post(obj.owner, P.AddBorrower((ref._id,), self.client_id, ack))
            obj.refs += 1

    def free_released(self) -> None:
        """Free now the objects whose last ref was dropped (a full store asks, before it
        refuses a write)."""
        if self.lock.acquire(timeout=1.0):
            try:
                self._drain_released()
            finally:
                self.lock.release()

    def _drain_released(self) -> None:
        if self.streams.dropped:
            self.streams.drain_dropped()
        released = self.released
        objects = self.objects
        while released:
            oid = released.popleft()
            obj = objects.get(oid)
            if obj is not None:
                obj.refs -= 1
                if obj.refs <= 0:
                    self._maybe_free(oid, obj)

    def _maybe_free(self, oid: bytes, obj: Obj) -> None:
        if obj.refs > 0 or obj.pins > 0 or obj.borrowers or obj.producing \
                or obj.dependents:
            return
        del self.objects[oid]
        value = obj.value
        if self.lineage.tasks:
            self.lineage.object_freed(oid)
        if self.actors.by_creation:
            actor = self.actors.by_creation.pop(oid, None)
            if actor is not None:       # the last handle to an actor we own is gone
                self.actors.out_of_scope(actor)
        if not obj.owned:
            if obj.registered:
                self._send_release(obj.owner, P.RemoveBorrower((oid,), self.client_id))
            return
        if value is None:
            return
        if value.kind == P.SHM:
            self._free_segment(value.payload)
        for inner, owner in value.contained:
            inner_obj = self.objects.get(inner)
            if inner_obj is not None and inner_obj.owned:
                inner_obj.borrowers.discard(oid)
                self._maybe_free(inner, inner_obj)
            else:
                self._send_release(owner, P.RemoveBorrower((inner,), oid))

    def _free_segment(self, loc: P.ShmLocation) -> None:
        if loc.node_id == self.node_id:
            object_store.unlink(loc.path)
            # our node hears of it now, not at its next look at the store: it unmaps what
            # it served from the segment and tells the nodes that copied it to drop theirs
            self._send(self.node_address, P.FreeObjects((loc.path,), b"", True))
        else:                       # our node sends it on to the node that holds it
            self._send(self.node_address, P.FreeObjects((loc.path,), loc.node_id))

    def _send_release(self, address: str, msg) -> None:
        if self._pending_acks:
            self._held.append((address, msg))
        else:
            self._send(address, msg)

    def _register_contained(self, outer: bytes, contained: tuple, ack: bool) -> None:
        """``outer``'s value holds these refs: make their owners keep them while it lives."""
        for inner, owner in contained:
            obj = self.objects.get(inner)
            if obj is not None and obj.owned:
                obj.borrowers.add(outer)
            else:
                ack_id = 0
                if ack:
                    ack_id = next(self._acks)
                    self._pending_acks.add(ack_id)
                self._post(owner, P.AddBorrower((inner,), outer, ack_id))

    def register_contained(self, outer: bytes, contained: tuple) -> None:
        """A worker's result holds refs. No ack is needed: this process borrows them itself,
        and its own release reaches their owners after this, on the same channel."""
        with self.lock:
            self._register_contained(outer, contained, ack=False)

    def send_results(self, peer, msg: P.TaskResults) -> None:
        """Results wait while our borrows are unconfirmed, so the owner cannot unpin first."""
        self._send_release(peer, msg)

    def _subscribe(self, oid: bytes, obj: Obj) -> None:
        if not obj.subscribed:
            obj.subscribed = True
            self._post(obj.owner, P.Subscribe((oid,)))

    # ---- put / get / wait ------------------------------------------------------------------
    def put(self, value) -> ObjectRef:
        with self.lock:
            oid = self.return_id(self._new_task_id(), 0)
        encoded = self.encode(oid, value)
        with self.lock:
            self.objects[oid] = Obj(self.address, True, refs=1, value=encoded, by_put=True)
            self._register_contained(oid, encoded.contained, ack=False)
            ref = self._make_ref(oid)
        self._kick()
        return ref

    def _shm_path_for(self, oid: bytes):
        session = self.session
        return lambda: object_store.segment_path(session, oid)

    def encode(self, oid: bytes, value) -> P.Value:
        encoded = serialization.serialize(value, CONFIG.inline_threshold, self._shm_path_for(oid))
        if encoded.kind == P.SHM:
            encoded = encoded._replace(payload=encoded.payload._replace(node_id=self.node_id))
        return encoded

    def get_values(self, refs: list, timeout: float | None) -> list:
        self._check_not_held()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            values = self._wait_values(refs, len({r._id for r in refs}), remaining,
                                       need_all=True)
            out = []
            try:
                for ref in refs:
                    current = ref
                    out.append(self.decode(values[ref._id], deadline))
                return out
            except ObjectLostError as e:        # the copy we were told of is gone
                if not self._rebuild_on_read(current._id, str(e)):
                    raise

    def _rebuild_on_read(self, oid: bytes, why: str) -> bool:
        """Reading an object failed: if we own it, rebuild it from its lineage (or make its
        value an error saying why it cannot be); if we borrow it, ask its owner to, and wait
        for the value again."""
        with self.lock:
            obj = self.objects.get(oid)
            if obj is None or obj.value is None or obj.value.kind != P.SHM:
                return False
            if not obj.owned:
                if obj.rebuild_asked:       # asked once already: the owner could not
                    return False
                obj.rebuild_asked = True
                path = obj.value.payload.path
                obj.value, obj.subscribed = None, False
                self._post(obj.owner, P.ReportLost(oid, path))
                self._subscribe(oid, obj)
                return True
            self.lineage.lose(oid, obj, why)    # rebuilt when read again, or says why not
        return True

    def decode(self, value: P.Value, deadline: float | None = None):
        kind = value.kind
        if kind == P.INLINE:
            return pickle.loads(value.payload)
        if kind == P.ERROR:
            raise _as_error(serialization.deserialize(value))
        if kind == P.LOST:
            raise ObjectLostError(value.payload)
        value = self.localize(value, deadline)
        try:
            return serialization.deserialize(value)
        except FileNotFoundError:
            err = ObjectLostError(f"the shared-memory segment {value.payload.path} of an "
                                  f"object is gone")
            err.path = value.payload.path
            raise err from None

    def localize(self, value: P.Value, deadline: float | None = None) -> P.Value:
        """A shared-memory value as one of this node's segments: a value another node wrote
        is pulled by our node first (once for all its readers)."""
        loc = value.payload
        if value.kind != P.SHM or not loc.node_id or loc.node_id == self.node_id:
            return value
        timeout = CONFIG.fetch_timeout_s if deadline is None else \
            max(0.0, deadline - time.monotonic())
        try:
            path = self.request(self.node_address, lambda r: P.FetchObject(r, loc),
                                timeout=timeout)
        except ClusterError as e:
            if deadline is not None and time.monotonic() >= deadline:
                raise GetTimeoutError(f"get timed out after the object arrived, while its "
                                      f"{loc.size:,} bytes were being fetched from node "
                                      f"{loc.node_id.hex()}") from None
            err = ObjectLostError(f"an object of {loc.size:,} bytes on node "
                                  f"{loc.node_id.hex()} could not be fetched: {e}")
            err.path = loc.path
            raise err from None
        return value._replace(payload=loc._replace(node_id=self.node_id, path=path))

    # ---- streams of items (generator tasks: streams.py) ------------------------------------
    def next_item(self, ref: ObjectRef, index: int, timeout: float | None):
        """The ref of item ``index`` of the generator task ``ref`` is the result of, once it
        is there; None when the task ended before it; GetTimeoutError after ``timeout``."""
        self._check_not_held()
        task_id = ref._id[:16]
        deadline = None if timeout is None else time.monotonic() + timeout
        got = self.wait_for(lambda: self.streams.poll(task_id, index), deadline,
                            lend_cpu=True)
        if got is None:
            raise GetTimeoutError(f"item {index} of the stream was not ready within "
                                  f"{timeout}s")
        if got[0] == "end":
            return None
        with self.lock:
            return self.streams.take(task_id, index, got[1])

    def poll_item(self, ref: ObjectRef, index: int):
        with self.lock:
            return self.streams.poll(ref._id[:16], index)

    def watch_stream(self, ref: ObjectRef, index: int, callback) -> None:
        with self.lock:
            self.streams.watch(ref._id[:16], index, callback)

    def wait(self, refs: list, num_returns: int, timeout: float | None) -> tuple[list, list]:
        self._check_not_held()
        values = self._wait_values(refs, num_returns, timeout, need_all=False)
        ready, not_ready = [], []
        for ref in refs:
            (ready if ref._id in values and len(ready) < num_returns else not_ready).append(ref)
        return ready, not_ready

    def _wait_values(self, refs: list, num_returns: int, timeout: float | None,
                     need_all: bool) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.lock:
            objs = []
            for ref in refs:
                obj = self.objects.get(ref._id)
                if obj is None:
                    obj = Obj(ref._owner, False, value=P.Value(
                        P.LOST, f"object {ref._id.hex()} is not known to this process"))
                objs.append((ref._id, obj))
                if obj.lost:
                    self.lineage.rebuild(ref._id)
                if obj.value is None and not obj.owned:
                    self._subscribe(ref._id, obj)

            everything = num_returns >= len({oid for oid, _ in objs})
            # objects before scan[0] were seen ready, as of loss number scan[1]; the lost
            # among them were sent to be rebuilt as of loss number scan[2]
            scan = [0, self.lost_seq, self.lost_seq]

        def ready():
            if everything:
                # a get of all of them: look on from the first one not seen ready (each
                # wake-up costs what arrived, not the whole list); a loss starts over
                if scan[1] != self.lost_seq:
                    scan[0], scan[1] = 0, self.lost_seq
                i = scan[0]
                while i < len(objs) and objs[i][1].value is not None:
                    i += 1
                scan[0] = i
                if i == len(objs):
                    return {oid: o.value for oid, o in objs}
            else:
                done = {oid: o.value for oid, o in objs if o.value is not None}
                if len(done) >= num_returns:
                    return done
            if scan[2] != self.lost_seq:    # lost while we waited: make them again
                with self.lock:
                    scan[2] = self.lost_seq
                    for oid, o in objs:
                        if o.lost:
                            self.lineage.rebuild(oid)
            return None

        done = self.wait_for(ready, deadline, lend_cpu=True)
        if done is not None:
            return done
        done = {oid: o.value for oid, o in objs if o.value is not None}
        if need_all:
            raise GetTimeoutError(f"get timed out after {timeout}s: {len(objs) - len(done)} of "
                                  f"{len(objs)} objects not ready")
        return done

    def wait_for(self, check, deadline: float | None, lend_cpu: bool = False):
        """Handle messages until ``check()`` returns something other than None (returned), or
        ``deadline`` (monotonic) passes (None returned). A worker that waits here while
        ``lend_cpu`` lends its CPU to its node meanwhile."""
        blocked = owner = False
        try:
            while True:
                result = check()
                if result is not None:
                    return result
                if self.interrupt_pending:
                    self._interrupted()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                if not self.threaded:
                    if lend_cpu and not blocked and self.worker_id is not None:
                        blocked = True
                        self._set_blocked(True)
                    timeout = None if remaining is None else remaining * 1000
                    if self.on_wait is not None:    # look at the task's output now and then
                        timeout = _MAIN_POLL_MS if timeout is None else \
                            min(timeout, _MAIN_POLL_MS)
                    self.pump(timeout)
                    if self.cancel_requested and self.in_user_code:
                        raise TaskCancelledError("task was cancelled while it waited")
                    if self.on_wait is not None:
                        self.on_wait()      # a worker: what its task's threads print
                    continue
                if self._acquire_sockets(remaining):
                    owner = True
                    # the main thread polls in short steps: an interrupt deferred while it
                    # was in pump is raised soon (above), not when a message next comes
                    step = _MAIN_POLL_MS if threading.current_thread() is \
                        threading.main_thread() else 1e9
                    try:
                        self.pump(min(self._timer_ms(), step, 1e9 if remaining is None else
                                      remaining * 1000))
                    finally:
                        with self.lock:
                            self._baton_busy = False
                            self._baton_idle_since = time.monotonic()
                else:
                    with self.lock:
                        self._waiters += 1
                        try:
                            self.cv.wait(1.0 if remaining is None else min(remaining, 1.0))
                        finally:
                            self._waiters -= 1
        finally:
            if blocked:
                self._set_blocked(False)
            if owner:
                with self.lock:         # keep the baton: the next get may need it soon
                    self._baton_idle_since = time.monotonic()
                    if self._waiters:
                        self.cv.notify_all()

    # ---- requests (to the head, to a worker) -----------------------------------------------
    def request(self, address: str, make, timeout: float = 10.0):
        """Send ``make(request_id)`` to ``address`` and return the ``Reply``'s value; raises
        ClusterError if no reply comes within ``timeout`` or the reply is an error."""
        reply = self.request_many([(address, make)], timeout)[0]
        if reply is None:
            raise ClusterError(f"{address} did not answer within {timeout:g}s")
        if reply.error:
            raise ClusterError(reply.error)
        return reply.value

    def request_many(self, requests: list, timeout: float) -> list:
        """Several requests at once: their ``Reply`` messages (None where none came in time)."""
        with self.lock:
            ids = []
            for address, make in requests:
                rid = next(self._requests)
                self._replies[rid] = None
                ids.append(rid)
                self._post(address, make(rid))
        self._kick()

        def answered():
            return True if all(self._replies[i] is not None for i in ids) else None

        try:
            self.wait_for(answered, time.monotonic() + timeout)
        finally:
            with self.lock:
                out = [self._replies.pop(i, None) for i in ids]
        return out

    def _acquire_sockets(self, remaining: float | None) -> bool:
        """Let this user thread poll the sockets itself (False: another user thread polls).

        The baton is sticky: a thread keeps it after its get returns, so a loop of submit and
        get never wakes the I/O thread; the I/O thread takes it back once it has been idle
        for ``baton_idle_s``. Taking it from the I/O thread costs one wake-up.
        """
        me = threading.get_ident()
        with self.lock:
            owner = self._baton_owner
            if owner == me or owner is None or (owner != self._io_ident and not
                                                self._baton_busy):
                self._baton_owner, self._baton_busy = me, True
                return True
            if owner != self._io_ident:
                return False            # another user thread is polling for all of us
            self._baton_wanted = me
        self._wake_pending = True
        self.ep.wake()                  # the I/O thread leaves its poll and hands over
        with self.lock:
            deadline = None if remaining is None else time.monotonic() + remaining
            while self._baton_owner != me:
                if self._baton_owner not in (self._io_ident, None) or self._closing or (
                        deadline is not None and time.monotonic() >= deadline):
                    if self._baton_wanted == me:
                        self._baton_wanted = None
                    return False
                self.cv.wait(0.05)
            self._baton_busy = True
            return True

    def _set_blocked(self, blocked: bool) -> None:
        """A worker waiting in get lends its CPU back to the node, and hands back queued work."""
        self.blocked_depth += 1 if blocked else -1
        if blocked and self.blocked_depth == 1:
            if self.on_block is not None:
                self.on_block()
            self._send(self.node_address, P.WorkerBlocked(self.worker_id))
        elif not blocked and self.blocked_depth == 0:
            self._send(self.node_address, P.WorkerUnblocked(self.worker_id))

    on_block = None
    on_wait = None
    #: a worker: the task its main thread runs, as output.CURRENT (for the task's threads)
    current_task = None
    #: (placement group id hex, bundle index) the running task (or the hosted actor) captures
    #: its child tasks into, or None
    capture_pg = None
    _spread_nodes: tuple = (0.0, [])     # (when read, live node ids) for "SPREAD"

    def spread_node(self, turn: dict) -> bytes:
        """The next live node in turn (``turn``: the function's or class's own count), for
        the "SPREAD" strategy."""
        read_at, nodes = self._spread_nodes
        if time.monotonic() - read_at > 2.0:
            rows = self.request(self.head_address, lambda r: P.ListNodes(r))
            nodes = sorted(bytes.fromhex(n["node_id"]) for n in rows if n.get("alive"))
            self._spread_nodes = (time.monotonic(), nodes)
        if not nodes:
            return b""
        turn["spread"] = turn.get("spread", -1) + 1
        return nodes[turn["spread"] % len(nodes)]
    actor_id = b""                  # in a worker hosting an actor: its id

    # ---- cancel ----------------------------------------------------------------------------
    def cancel(self, ref: ObjectRef, force: bool = False) -> None:
        with self.lock:
            task = self.tasks.get(ref._id[:16])
            if task is not None:
                self._cancel_task(task, force)
        self._kick()

    def cancel_children(self, parent: bytes) -> int:
        """The task ``parent`` running here was cancelled: so are the tasks and actor calls it
        submitted (and, as each is cancelled where it runs, theirs)."""
        with self.lock:
            children = [t for t in self.tasks.values() if t.parent == parent]
            for task in children:
                self._cancel_task(task, False)
        return len(children)

    def cancel_scope(self, scope: int) -> int:
        """Cancel every unfinished task and actor call this driver submitted in ``scope``
        (a notebook cell), and what they submitted, recursively; returns how many."""
        origin = (self.address, scope)
        with self.lock:
            mine = [t for t in self.tasks.values() if t.spec.origin == origin and
                    not t.parent and t.spec.kind != P.ACTOR_CREATE]
            for task in mine:
                self._cancel_task(task, False)
        self._kick()
        return len(mine)

    def _cancel_task(self, task: Task, force: bool) -> None:
        if task.cancelled or task.spec.kind == P.ACTOR_CREATE:
            return
        with self.lock:
            task.cancelled = True
            err = cancelled_value(task.spec.name)
            if task.actor is not None:
                if task.spec.kind == P.ACTOR_CALL and self.actors.cancel(task):
                    self._finish(task, _repeat(err))
                return
            lease = task.worker
            if lease is None:
                for shape in self.shapes.values():
                    if task in shape.ready:
                        shape.ready.remove(task)
                for oid in task.arg_ids:
                    obj = self.objects.get(oid)
                    if obj is not None and task in obj.dependents:
                        obj.dependents.remove(task)
                self._finish(task, _repeat(err))
            else:
                self._post(lease.address, P.CancelTasks((task.spec.task_id,)))
                self._post(lease.node, P.Poke(lease.worker_id, force))

    # ---- the I/O loop ----------------------------------------------------------------------
    def _send(self, to, msg) -> None:
        """Send to an address or answer a peer, from any thread. Only the baton holder touches
        the Endpoint; other threads push tasks on their own sockets and queue the rest."""
        if self.threaded and type(msg) in _PUSHED:
            self._pusher.send(to, msg)      # one channel per worker keeps pushes in order
            return
        if self.threaded and threading.get_ident() != self._baton_owner:
            self._outbox.append((to, msg))
            if not self._wake_pending:
                self._wake_pending = True
                self.ep.wake()
            return
        if type(to) is tuple:
            self.ep.reply(to, msg)
        else:
            self.ep.send(to, msg)

    _post = _send

    def _flush_events(self) -> None:
        """Send the events recorded since the last turn to the head, in one message."""
        if self.head_address and self.events:
            self._send(self.head_address, P.ReportEvents(
                *self.events.take(), summary=self.events.take_summary()))

    def _report_unfinished(self) -> None:
        """Tell the head of our unfinished tasks (the newest few hundred), for the state API
        of other processes: a message about once a second while there are any."""
        from nbray.runtime import task_log
        rows = task_log.unfinished(self, task_log.UNFINISHED_MAX)
        blob, count = self.events.take_unfinished(rows, len(rows) and len(self.tasks))
        events, tasks, n = self.events.take()
        self._send(self.head_address, P.ReportEvents(events, tasks, n, blob, count,
                                                     self.address,
                                                     self.events.take_summary()))

    def _kick(self) -> None:
        """Dispatch now, in this thread: a task for an idle leased worker goes straight out."""
        with self.lock:
            self._drain_released()
            self._dispatch(eager=False)
        if self.poke_pending and self.in_user_code and not self.lock._is_owned():
            self.take_poke()            # a cancel announced while we were busy in here
        if self.interrupt_pending:
            self._interrupted()

    # a worker's cancel state (see install_poke_handler)
    cancel_requested = poke_pending = False
    #: threads inside pump() now (the driver defers an interrupt while the main one is)
    in_pump = 0
    #: a driver: the user's interrupt (SIGINT) came while the runtime held its lock; it is
    #: raised when the runtime lets go (see nbray/extension/notebook.py)
    interrupt_pending = False

    def busy_in_runtime(self) -> bool:
        """Whether the calling thread is in the runtime's own code, where an exception would
        leave it half way through a change: holding the lock, or receiving in pump."""
        return self.lock._is_owned() or (
            self.in_pump and self._baton_owner == threading.get_ident())

    def _interrupted(self) -> None:
        if threading.current_thread() is threading.main_thread() and \
                not self.busy_in_runtime():
            self.interrupt_pending = False
            raise KeyboardInterrupt

    def pump(self, timeout_ms: float | None) -> None:
        """Receive and handle what is ready (waiting up to ``timeout_ms``), then dispatch.
        Called by the baton holder only."""
        self.in_pump += 1           # an interrupt now would drop what was received
        try:
            msgs = self.ep.recv(timeout_ms)
            self._handle_all(msgs)
        finally:
            self.in_pump -= 1

    def _handle_all(self, msgs) -> None:
        with self.lock:
            self._notify = False
            while self._outbox:
                self._send(*self._outbox.popleft())
            self._drain_released()
            for peer, msg in msgs:
                self._handle(peer, msg)
            self._dispatch()
            if self.events and self.events.due():
                self._flush_events()
            if CONFIG.task_events and self.head_address and \
                    self.events.unfinished_due(bool(self.tasks)):
                self._report_unfinished()
            if self._notify and self._waiters:
                self.cv.notify_all()

    def _io_loop(self) -> None:
        me = self._io_ident = threading.get_ident()
        grace = CONFIG.baton_idle_s
        while not self._closing:
            with self.lock:
                while not self._closing:
                    owner = self._baton_owner
                    idle = time.monotonic() - self._baton_idle_since
                    if owner in (None, me) or (not self._baton_busy and idle >= grace):
                        self._baton_owner = me      # free, ours, or left idle: take it
                        break
                    # a user thread polls: look again now and then, to take the sockets
                    # back once it has left them idle (a notify on every get would cost a
                    # wake-up of this thread per get, which is what the baton saves)
                    self._io_cv.wait(0.02 if self._baton_busy else grace - idle)
                if self._closing:
                    break
                self._wake_pending = False
            try:
                self.pump(self._timer_ms())
            except Exception:           # the I/O thread must not die silently
                import traceback
                traceback.print_exc()
            with self.lock:
                if self._baton_wanted is not None:      # hand over to a waiting user thread
                    self._baton_owner, self._baton_wanted = self._baton_wanted, None
                    self._baton_busy = True
                    self.cv.notify_all()
        with self.lock:
            self._baton_owner = me
            while self._outbox:
                self._send(*self._outbox.popleft())

    def return_idle_leases(self) -> None:
        """Give back every lease with nothing in flight (a worker, when its task is done);
        the leases of actors it owns stay for the actors' lives."""
        with self.lock:
            for lease in self.leases.values():
                if not lease.inflight and lease.actor is None:
                    lease.returning = True
            self._dispatch()

    def idle_timeout_ms(self) -> float:
        """How long the sockets may be left unpolled: idle leases go back on time, and tasks
        queued behind busy workers are looked at again soon (a worker may have stalled)."""
        if any(shape.ready for shape in self.shapes.values()):
            return 10
        ms = 1000 * CONFIG.lease_idle_s if self.leases else 1000
        try:        # a worker with tasks queued behind its running one: looked at again
            if any(len(lease.inflight) > 1 and lease.actor is None
                   for lease in self.leases.values()):
                ms = min(ms, 50)
        except RuntimeError:            # (unlocked: the dict changed meanwhile)
            pass
        retry = self._lease_retry
        if retry:
            try:                        # unlocked: another thread may pop it meanwhile
                ms = min(ms, max(0.0, 1000 * (retry[0][0] - time.monotonic())))
            except IndexError:
                pass
        return ms

    def _timer_ms(self) -> float:
        return 0 if self._outbox or self.released else self.idle_timeout_ms()


_PUSHED = (P.PushTasks, P.CancelTasks, P.ReturnQueued)
_MAIN_POLL_MS = 100
_LOCALITY = "@node"      # a scheduling key's entry for the node its tasks' inputs are on


def process_limit(bound: int | None = None, policy: str = "block", timeout=None,
                  what: str = "this process") -> "admission.Limit | None":
    """A process's own bound on its unfinished tasks and calls (``CONFIG.max_pending`` when
    ``bound`` is None; none below 1)."""
    n = CONFIG.max_pending if bound is None else bound
    return admission.Limit(("*",), n, policy, timeout, what) if n > 0 else None


def _describe(resources: dict) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in sorted(resources.items()) if v) or "nothing"


def _repeat(value):
    return itertools.repeat(value)


def _is_ref(v) -> bool:
    return type(v) is ObjectRef


def _as_error(exc) -> BaseException:
    if isinstance(exc, tuple) and len(exc) == 3:
        return RemoteError.from_parts(*exc)
    return exc


def install_poke_handler(client: CoreClient) -> None:
    """Worker: SIGUSR1 means "a cancel is on its way to your socket". The signal can overtake
    the message (they travel different paths), so the handler reads the socket and waits for a
    new cancel briefly. A poke that lands while our own code runs (between receiving a task and
    starting it, say) stays pending, and the task looks at it as it starts (``take_poke``):
    otherwise the cancel would wait in the socket until the task ended. Signals that arrive
    close together merge into one, so nothing here counts them: a poke is pending or not."""
    def take_poke():
        client.in_user_code = False
        try:
            while client.poke_pending and not client.cancel_requested:
                client.poke_pending = False
                seen = client.poke_seen_cancels
                deadline = time.monotonic() + 0.2
                client.pump(0)
                while client.cancels_seen == seen and not client.cancel_requested \
                        and time.monotonic() < deadline:
                    client.pump(10)
        finally:
            client.in_user_code = True
        if client.cancel_requested:
            raise TaskCancelledError("task was cancelled while running")

    def on_poke(signum, frame):
        if not client.poke_pending:
            client.poke_pending = True
            client.poke_seen_cancels = client.cancels_seen
        # not inside the runtime's own code (it holds the lock): raising there would leave
        # it half done; it looks at the poke when it lets go (``_kick``, ``wait_for``)
        if client.in_user_code and not client.lock._is_owned():
            take_poke()

    client.cancel_requested = False
    client.poke_pending = False
    client.cancels_seen = client.poke_seen_cancels = 0
    client.take_poke = take_poke
    signal.signal(signal.SIGUSR1, on_poke)
