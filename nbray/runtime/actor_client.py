"""Actors, from the side of a client: the calls it makes, and the actors it owns.

Every process that holds a handle is a *caller*. It numbers its calls, holds each one until the
calls before it have left and its own inputs exist, and pushes them, in order and in batches,
straight to the actor's worker. The process that created the actor is its *owner*: it holds the
worker's lease for the actor's life, tells the other callers where the actor is (``ActorState``),
re-creates it when its worker dies (``max_restarts``) and retires it once no handle is left.

::

    Cls.remote() ── creation waits for its inputs ── actor lease ── push creation ──┐
                                                                                    ▼
    h.m.remote() ── pending, in order ─── address known ─── PushTasks ──► actor's worker
                                                                                    │
    caller ◄──────────────────────────── TaskResults ◄──────────────────────────────┘

The head is told what happens to each actor (for names and the state API), never per call.

Recovery: a caller of an actor that may restart keeps the calls it made since the actor's last
checkpoint (their inputs pinned), and replays them, in order and with their results discarded,
on each new incarnation before anything else it sends. An actor with ``__nbray_checkpoint__``
and ``__nbray_restore__`` checkpoints to its owner every ``actor_checkpoint_every`` calls: the
state comes back with the re-creation, and callers replay only their calls after it. Calls from
several callers are replayed in each caller's order, not in their original interleaving.

Everything here runs under the client's lock, from its message handlers or its submitters.
"""
from __future__ import annotations

import collections
import logging
import pickle
import time
from dataclasses import dataclass, field

from nbray.config import CONFIG
from nbray.errors import ActorDiedError, TaskCancelledError
from nbray.runtime import protocol as P, serialization

#: the call a worker hosting an actor ends with: it exits once the calls before it are done
TERMINATE = "__nbray_terminate__"
#: the call that gives a re-created actor the state of its last checkpoint
RESTORE = "__nbray_restore__"
_NONE = P.Value(P.INLINE, pickle.dumps(None, protocol=5))
_ONE_ARG = pickle.dumps(((serialization.ArgSlot(0),), {}), protocol=5)
log = logging.getLogger("nbray")


@dataclass(eq=False)
class Actor:
    """What one client knows of one actor."""
    actor_id: bytes
    owner: str
    owned: bool
    class_name: str
    max_task_retries: int = 0
    state: str = P.PENDING
    incarnation: int = 0
    address: str = ""
    error: P.Value | None = None        # DEAD: what every call fails with
    pending: collections.deque = field(default_factory=collections.deque)
    inflight: dict = field(default_factory=dict)    # task_id -> Task, pushed to the worker
    subscribed: bool = False
    # the owner's part
    name: str = ""
    creation: object = None             # the creation Task (its spec is pushed again on restart)
    fn_blob: bytes = b""
    placement: dict = field(default_factory=dict)
    hold: dict = field(default_factory=dict)
    prefer_node: bytes = b""            # scheduling_strategy: the node it should live on
    lease: object = None
    subscribers: set = field(default_factory=set)
    max_restarts: int = 0
    restarts: int = 0
    no_restart: bool = False
    terminating: bool = False
    worker_pid: int = 0
    worker_id: bytes = b""
    # recovery
    restartable: bool = False
    log: collections.deque = field(default_factory=collections.deque)   # (spec, pinned ids)
    log_overflow: bool = False
    replay_due: bool = False
    checkpoint: object = None           # owner: the Value of the last checkpoint
    marks: dict = field(default_factory=dict)


def died(text: str) -> P.Value:
    return serialization.serialize_error(ActorDiedError(text))


class ActorCalls:
    """The actor half of a CoreClient (``client.actors``)."""

    def __init__(self, client):
        self.client = client
        self.actors: dict[bytes, Actor] = {}
        self.by_creation: dict[bytes, Actor] = {}       # creation object id -> owned actor
        self.dirty: set = set()                          # actors with calls to push

    # ---- the owner: create --------------------------------------------------------------
    def create(self, task, actor: Actor, top: list) -> None:
        """Record an actor the client creates; its creation runs once its inputs exist."""
        c = self.client
        self.actors[actor.actor_id] = actor
        actor.creation = task
        rid = task.spec.return_ids[0]
        # the creation object stands for the actor's handles: it lives while any does
        c.objects[rid] = c.Obj(c.address, True, refs=1, value=_NONE)
        self.by_creation[rid] = actor
        task.actor = actor
        c.tasks[task.spec.task_id] = task
        for oid in task.pinned:
            c.objects[oid].pins += 1
        c._resolve(task, top)

    def creation_ready(self, task) -> None:
        """Its inputs exist (or one failed): ask the node for a worker of the actor's own."""
        actor = task.actor
        error = next((v for v in task.spec.arg_values if v.kind in (P.ERROR, P.LOST)), None)
        if error is not None:
            self.die(actor, error, "an argument of its constructor failed")
            return
        if actor.state != P.DEAD:
            self._request_lease(actor)

    def _request_lease(self, actor: Actor) -> None:
        self.client.ask_lease(actor, lambda rid: P.RequestLease(
            rid, actor.placement, True, actor.hold, prefer_node=actor.prefer_node))

    def lease_granted(self, actor: Actor, msg: P.LeaseGranted, node: str) -> None:
        c = self.client
        if actor.state == P.DEAD:
            c._send(node, P.ReturnLease(msg.worker_id, kill=True))
            return
        lease = c.Lease(msg.worker_id, msg.address, ("actor",), idle_since=time.monotonic(),
                        node=node, placed=msg.placed, granted_at=time.time())
        lease.actor = actor
        c.leases[msg.worker_id] = lease
        actor.lease = lease
        actor.address = msg.address
        actor.worker_pid, actor.worker_id = msg.pid, msg.worker_id
        creation = actor.creation.spec
        specs = [creation._replace(origin=()) if actor.restarts else creation]  # printed once
        if actor.checkpoint is not None:    # re-created: its state first, then the replays
            specs.append(P.TaskSpec(c._new_task_id(), RESTORE, f"{actor.class_name}.{RESTORE}",
                                    _ONE_ARG, (actor.checkpoint,), 0, (), P.ACTOR_CALL,
                                    actor.actor_id))
        c._send(msg.address, P.PushTasks(c.address, specs, {specs[0].fn_id: actor.fn_blob}))
        self._set_state(actor, actor.incarnation, P.PENDING, msg.address, None)
        self._tell_head(actor, state=P.PENDING, address=msg.address, worker_pid=msg.pid,
                        node_id=c.node_id.hex())

    def lease_rejected(self, actor: Actor, reason: str) -> None:
        self.die(actor, died(f"actor {actor.class_name} cannot be placed: {reason}"),
                 f"cannot be placed: {reason}")

    def creation_done(self, task, values) -> None:
        actor = task.actor
        value = values[0] if values else _NONE
        if actor.state == P.DEAD:
            return
        if value.kind == P.ERROR:         # __init__ raised: every call raises it too
            self.die(actor, value, "its constructor raised")
        else:
            self._set_state(actor, actor.incarnation, P.ALIVE, actor.address, None)
            self._tell_head(actor, state=P.ALIVE)

    # ---- the owner: death, restart, kill, end ---------------------------------------------
    def worker_died(self, lease, reason: str) -> None:
        """The worker hosting an actor we own died."""
        actor = lease.actor
        if actor.lease is lease:
            actor.lease = None
        if actor.state == P.DEAD:
            return
        if actor.terminating:
            self.die(actor, died(f"actor {actor.class_name} ended: no handle to it is left"),
                     "no handle left")
            return
        if actor.no_restart or not (actor.max_restarts == -1 or
                                    actor.restarts < actor.max_restarts):
            why = "it was killed with nbray.kill" if actor.no_restart else (
                f"its worker died ({reason})" + (
                    f" after {actor.restarts} restart(s)" if actor.max_restarts else
                    "; it has max_restarts=0"))
            self.die(actor, died(f"actor {actor.class_name} died: {why}"), why)
            return
        actor.restarts += 1
        self._event(actor, "actor_restarted", restart=actor.restarts,
                    cause=f"its worker died ({reason})")
        self._set_state(actor, actor.incarnation + 1, P.RESTARTING, "", None)
        self._tell_head(actor, state=P.RESTARTING, restarts=actor.restarts, address="",
                        detail=f"its worker died ({reason}); restart {actor.restarts}")
        if actor.creation.missing == 0:
            self._request_lease(actor)

    def die(self, actor: Actor, error: P.Value, detail: str) -> None:
        """The actor is over: its calls fail with ``error``; its worker, if any, is retired."""
        c = self.client
        if actor.state == P.DEAD:
            return
        if actor.lease is not None:
            c.leases.pop(actor.lease.worker_id, None)
            c._send(actor.lease.node, P.ReturnLease(actor.lease.worker_id, kill=True))
            actor.lease = None
        self._set_state(actor, actor.incarnation, P.DEAD, "", error)
        self._tell_head(actor, state=P.DEAD, address="", detail=detail)
        self._event(actor, "actor_died", cause=detail)
        task = actor.creation
        if task is not None and c.tasks.pop(task.spec.task_id, None) is not None:
            for oid in task.pinned:         # its arguments were kept for restarts
                obj = c.objects.get(oid)
                if obj is not None:
                    obj.pins -= 1
                    c._maybe_free(oid, obj)

    def kill(self, actor_id: bytes, owner: str, no_restart: bool) -> None:
        actor = self.actors.get(actor_id)
        if actor is None or not actor.owned:
            self.client._post(owner, P.KillActor(actor_id, no_restart))
            return
        self.on_kill(actor, no_restart)

    def on_kill(self, actor: Actor, no_restart: bool) -> None:
        c = self.client
        if actor.state == P.DEAD:
            return
        actor.no_restart = no_restart
        if no_restart:      # its worker is retired, and calls fail from now on
            self.die(actor, died(f"actor {actor.class_name} was killed with nbray.kill"),
                     "killed with nbray.kill")
        elif actor.lease is not None:       # killed as if it crashed: it may restart
            c._send(actor.lease.node, P.Poke(actor.lease.worker_id, True))

    def out_of_scope(self, actor: Actor) -> None:
        """No handle is left anywhere: the actor ends after the calls already made."""
        c = self.client
        if actor.state == P.DEAD or actor.terminating:
            return
        actor.terminating = True
        task_id = c._new_task_id()
        spec = P.TaskSpec(task_id, TERMINATE, TERMINATE, serialization.EMPTY_ARGS, (), 0, (),
                          P.ACTOR_CALL, actor.actor_id)
        task = c.Task(spec, b"", ("actor",), [], [], 0)
        task.actor, task.ready = actor, True
        c.tasks[task_id] = task
        actor.pending.append(task)
        self.dirty.add(actor)

    # ---- callers --------------------------------------------------------------------------
    def known(self, actor_id: bytes, owner: str, class_name: str, retries: int) -> Actor:
        """The entry for a handle that arrived here (unpickled, or from get_actor)."""
        actor = self.actors.get(actor_id)
        if actor is None:
            actor = self.actors[actor_id] = Actor(actor_id, owner, False, class_name, retries)
        if not actor.owned and not actor.subscribed:
            actor.subscribed = True
            self.client._post(owner, P.SubscribeActor(actor_id))
        return actor

    def call(self, task, top: list) -> None:
        """Queue a call; it leaves after the calls made before it, once its inputs exist."""
        c = self.client
        actor = task.actor
        c.tasks[task.spec.task_id] = task
        for oid in task.pinned:
            c.objects[oid].pins += 1
        actor.pending.append(task)
        if actor.state == P.DEAD:
            self._fail_calls(actor, actor.error)
            return
        c._resolve(task, top)

    def call_ready(self, task) -> None:
        for v in task.spec.arg_values:
            if v.kind in (P.ERROR, P.LOST):
                self._drop(task)
                self.client._finish(task, [v] * task.spec.num_returns)
                return
        task.ready = True
        task.t_ready = time.time()
        self.dirty.add(task.actor)

    def dispatch(self) -> None:
        """Push, for every actor with calls waiting, the ready calls at the head of its queue."""
        c = self.client
        dirty, self.dirty = self.dirty, set()
        for actor in dirty:
            if actor.state == P.DEAD:
                self._fail_calls(actor, actor.error)
                continue
            if not actor.address or actor.state == P.RESTARTING:
                continue
            batch = self._replays(actor) if actor.replay_due else []
            room = CONFIG.actor_inflight_max - len(actor.inflight)
            while actor.pending and actor.pending[0].ready and room > 0:
                room -= 1
                task = actor.pending.popleft()
                if task.cancelled:
                    continue
                task.attempts += 1
                task.t_push = time.time()
                actor.inflight[task.spec.task_id] = task
                batch.append(task.spec)
            if batch:
                c._send(actor.address, P.PushTasks(c.address, batch, {}))

    def _replays(self, actor: Actor) -> list:
        """The calls to run again on a new incarnation, their results not wanted."""
        c = self.client
        actor.replay_due = False
        if actor.log_overflow:
            actor.log_overflow = False
            log.warning("nbray: actor %s restarted fresh, without replaying its calls: more "
                        "than %d of them since its last checkpoint (NBRAY_ACTOR_LOG_MAX)",
                        actor.class_name, CONFIG.actor_log_max)
            self._event(actor, "actor_restarted_fresh", cause=(
                f"more than {CONFIG.actor_log_max} calls since its last checkpoint "
                f"(NBRAY_ACTOR_LOG_MAX)"))
            return []
        c.stats["actor_replays"] += len(actor.log)
        self._event(actor, "actor_replayed", calls=len(actor.log),
                    from_checkpoint=bool(actor.marks))
        # the same task ids (checkpoint marks name them), no results: nobody waits for them,
        # and what they print was shown the first time
        return [spec._replace(num_returns=0, return_ids=(), origin=()) for spec, _ in actor.log]

    def result(self, task, values) -> None:
        """A call's result came back (``values`` None: the worker bounced it, which an actor's
        worker does not do; treat it as lost)."""
        actor = task.actor
        if actor.inflight.pop(task.spec.task_id, None) is None:
            self._drop(task)            # requeued after a restart, but it did run: keep it
        if values is None:
            values = [died(f"a call to actor {actor.class_name} was lost")] * \
                task.spec.num_returns
        elif actor.restartable and task.spec.fn_id != TERMINATE:
            self._log(actor, task)
        if actor.pending:
            self.dirty.add(actor)       # room in its mailbox for the next calls
        self.client._finish(task, values)

    def _log(self, actor: Actor, task) -> None:
        """Keep a call that ran, to replay it if the actor restarts (its inputs stay pinned)."""
        c = self.client
        if actor.log_overflow:
            return
        for oid in task.pinned:
            c.objects[oid].pins += 1
        actor.log.append((task.spec, list(task.pinned)))
        if actor.marks.get(c.address) == task.spec.task_id:
            self._clear_log(actor)          # the checkpoint, sent ahead of this result, has it
        elif len(actor.log) > CONFIG.actor_log_max:
            actor.log_overflow = True
            self._clear_log(actor)

    def _clear_log(self, actor: Actor, upto: bytes | None = None) -> None:
        """Forget the logged calls (those up to task id ``upto``, when given)."""
        c = self.client
        if upto is not None and not any(spec.task_id == upto for spec, _ in actor.log):
            return
        while actor.log:
            spec, pinned = actor.log.popleft()
            for oid in pinned:
                obj = c.objects.get(oid)
                if obj is not None:
                    obj.pins -= 1
                    c._maybe_free(oid, obj)
            if spec.task_id == upto:
                break

    def cancel(self, task) -> bool:
        """Cancel a call; True if it had not been pushed (it is over now)."""
        actor = task.actor
        if task in actor.pending:
            actor.pending.remove(task)
            return True
        if task.spec.task_id in actor.inflight and actor.address:
            c = self.client
            c._post(actor.address, P.CancelTasks((task.spec.task_id,)))
            if actor.worker_id:         # a running call is interrupted, as a task is
                c._post(c.node_address, P.Poke(actor.worker_id, False))
        return False

    # ---- state, told by the owner ---------------------------------------------------------
    def _set_state(self, actor: Actor, incarnation: int, state: str, address: str,
                   error) -> None:
        """Apply a change of the actor's state (the owner's own, or one the owner sent)."""
        if incarnation < actor.incarnation:
            return
        if incarnation > actor.incarnation and actor.inflight:
            # calls pushed to the worker that died are lost: retry them first, in order
            lost = list(actor.inflight.values())
            actor.inflight.clear()
            for task in reversed(lost):
                if task.retries_left > 0 and state != P.DEAD:
                    task.retries_left -= 1
                    self.client.stats["actor_retries"] += 1
                    actor.pending.appendleft(task)
                else:
                    self.client._finish(task, [error if state == P.DEAD else died(
                        f"actor {actor.class_name} died while running {task.spec.name} (its "
                        f"worker died; the call is not retried: max_task_retries=0)")] *
                        task.spec.num_returns)
        if incarnation > actor.incarnation and state != P.DEAD and actor.restartable:
            actor.replay_due = True
        actor.incarnation, actor.state, actor.address = incarnation, state, address
        if state == P.DEAD:
            actor.error = error
            self._fail_calls(actor, error)
            self._clear_log(actor)
        self.dirty.add(actor)
        if actor.owned and actor.subscribers:
            msg = self._state_msg(actor)
            for peer in actor.subscribers:
                self.client._send(peer, msg)

    def _state_msg(self, actor: Actor) -> P.ActorState:
        return P.ActorState(actor.actor_id, actor.incarnation, actor.state, actor.address,
                            actor.error, actor.worker_pid, self.client.node_id,
                            actor.worker_id, actor.restartable, actor.marks)

    def on_checkpoint(self, msg: P.ActorCheckpoint) -> None:
        """Owner: the actor checkpointed; callers forget the calls it covers."""
        actor = self.actors.get(msg.actor_id)
        if actor is None or not actor.owned or actor.state == P.DEAD:
            return
        actor.checkpoint, actor.marks = msg.state, dict(msg.marks)
        self._clear_log(actor, msg.marks.get(self.client.address))
        self.client.stats["actor_checkpoints"] += 1
        state = self._state_msg(actor)
        for peer in actor.subscribers:
            self.client._send(peer, state)

    def on_state(self, msg: P.ActorState) -> None:
        actor = self.actors.get(msg.actor_id)
        if actor is not None and not actor.owned:
            actor.worker_pid, actor.worker_id = msg.worker_pid, msg.worker_id
            actor.restartable = msg.restartable
            actor.marks = dict(msg.marks)
            if msg.marks.get(self.client.address) is not None:
                self._clear_log(actor, msg.marks[self.client.address])
            self._set_state(actor, msg.incarnation, msg.state, msg.address, msg.error)

    def on_subscribe(self, peer, msg: P.SubscribeActor) -> None:
        actor = self.actors.get(msg.actor_id)
        if actor is None or not actor.owned:
            self.client._send(peer, P.ActorState(msg.actor_id, 1 << 30, P.DEAD, "", died(
                "the actor is unknown to its owner (it ended, or its owner restarted)")))
            return
        actor.subscribers.add(peer)
        self.client._send(peer, self._state_msg(actor))

    def worker_gone(self, worker_id: bytes, reason: str) -> None:
        """A worker hosting an actor was retired because the actor's owner died: the owner
        cannot say so, so the node did."""
        for actor in self.actors.values():
            if not actor.owned and actor.state != P.DEAD and actor.worker_id == worker_id:
                self._set_state(actor, actor.incarnation + 1, P.DEAD, "", died(
                    f"actor {actor.class_name} died: {reason}"))

    # ---- helpers --------------------------------------------------------------------------
    def _fail_calls(self, actor: Actor, error) -> None:
        while actor.pending:
            task = actor.pending.popleft()
            if task.spec.fn_id != TERMINATE:
                self.client._finish(task, [error] * task.spec.num_returns)
        for task in list(actor.inflight.values()):
            self.client._finish(task, [error] * task.spec.num_returns)
        actor.inflight.clear()

    def _drop(self, task) -> None:
        try:
            task.actor.pending.remove(task)
        except ValueError:
            pass

    def _event(self, actor: Actor, kind: str, **fields) -> None:
        self.client.events.emit(kind, actor_id=actor.actor_id.hex(),
                                class_name=actor.class_name, **fields)

    def _tell_head(self, actor: Actor, **fields) -> None:
        c = self.client
        if c.head_address:
            c._send(c.head_address, P.ActorUpdate(actor.actor_id, fields))


def cancelled_value(name: str) -> P.Value:
    return serialization.serialize_error(TaskCancelledError(f"task {name} was cancelled"))
