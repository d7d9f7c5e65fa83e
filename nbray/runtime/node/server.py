"""The node's one process: owns its sockets, grants leases, watches workers, reports to the head.

The node is not on the per-task path: clients lease workers here and then push tasks to them
directly. It sees a message per lease, per blocked get and per dead worker, not per task.
"""
from __future__ import annotations

import collections
import itertools
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass

import psutil

from nbray import config
from nbray.config import CONFIG
from nbray.errors import ClusterError
from nbray.runtime import bundles, object_store, protocol as P
from nbray.runtime.node.local_scheduler import LeaseRequest, LocalScheduler
from nbray.runtime.node.transfer import Transfers
from nbray.runtime.node.worker_pool import WorkerPool
from nbray.runtime.transport import Endpoint, guarded


@dataclass(eq=False)
class ClientInfo:
    client_id: bytes
    pid: int
    address: str


class NodeServer:
    def __init__(self, *, key: bytes, session: str, bind: list[str], head_address: str,
                 resources: dict, num_workers: int, worker_bind, watch_pid: int | None = None):
        self.node_id = os.urandom(8)
        resources = {**resources, bundles.node_resource(self.node_id.hex()): bundles.NODE_AMOUNT}
        self.session = session          # names this node's run directory and segments
        self.cluster_session = ""
        self.ep = Endpoint(key, self.node_id, bind)
        self.address = self.ep.address              # for the clients of this machine
        # bound to TCP: a node of a cluster other machines can join. Its TCP address is how
        # other nodes and remote clients reach it, and it spills what it cannot serve
        tcp = [a for a in self.ep.addresses if a.startswith("tcp://")]
        self.multi_node = bool(tcp)
        self.public_address = tcp[0] if tcp else self.address
        self.head_address = head_address
        self.nodes: dict = {}                       # node_id -> (address, resources)
        self.cluster_total = dict(resources)
        self._spills: dict[int, tuple] = {}         # spill id -> (client peer, request)
        self.known_nodes: dict = {}                 # node_id -> address, alive or not
        self.setups: dict[str, dict] = {}           # driver address -> key -> SetupWorkers
        # clients that left: a request of theirs that arrives late (from another node,
        # behind the news) is refused, or it would hold a worker for nobody
        self._gone: collections.OrderedDict = collections.OrderedDict()
        self._spill_ids = itertools.count(1)
        self.kept_local = 0
        self.spilled = 0
        self.busy = 0                   # requests answered "busy": the queue was full
        self.transfers = Transfers(self)
        self.sched = LocalScheduler(resources)
        self.num_workers = num_workers
        self.max_workers = max(CONFIG.min_worker_cap,
                               max(num_workers, 1) * CONFIG.max_workers_per_cpu)
        self._warned_cap = False
        self.pool = WorkerPool(node_address=self.address, session=session, key=key,
                               bind_for=worker_bind)
        self.clients: dict[bytes, ClientInfo] = {}
        self.watch_pid = watch_pid
        self.stopping = False
        self._last_reclaim = 0.0
        self._last_beat = 0.0
        self._last_check = 0.0
        self._last_served_check = 0.0
        self._head_seen = time.monotonic()
        self.leases_granted = 0
        self.keeper = None              # the worker that owns detached actors, once started
        self._keeper_asks: list = []    # (peer, request id) waiting for it to start

    # ---- main loop -------------------------------------------------------------------------
    def register(self, timeout: float) -> str:
        """Join the head's cluster; returns its session. Raises ClusterError when the head
        refuses us or says nothing (a wrong key looks the same as no head: it gets no answer)."""
        self.ep.send(self.head_address, self._registration())
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0 and not self.stopping:
            for peer, msg in self.ep.recv(min(left, 0.1) * 1000):
                if type(msg) is P.NodeRegistered:
                    self.cluster_session = msg.session
                    self._head_seen = time.monotonic()
                    return msg.session
                if type(msg) is P.Error:
                    raise ClusterError(f"the head at {self.head_address} refused this node: "
                                       f"{msg.text}")
        if self.stopping:
            raise ClusterError("stopped before the head answered")
        raise ClusterError(f"the head at {self.head_address} did not answer within {timeout:g}s "
                           f"(is the address right, is the key the cluster's, and is nbray "
                           f"the same version there?)")

    def serve(self) -> None:
        for _ in range(self.num_workers):
            self.pool.spawn()
        try:
            while not self.stopping:
                # while leases are wanted, come back soon: a reclaim may be due
                for peer, msg in self.ep.recv(10 if self.sched.queue else 100):
                    handler = self._HANDLERS.get(type(msg))
                    if handler is not None:
                        guarded(handler, self, peer, msg)
                self._periodic()
                self._grant()
        finally:
            self.shutdown()

    def _periodic(self) -> None:
        now = time.monotonic()
        for w in self.pool.reap():
            self._on_worker_exit(w)
        if now - self._last_beat >= CONFIG.heartbeat_s:
            self._last_beat = now
            self.ep.send(self.head_address, P.Heartbeat(self.node_id, self.stats()))
            if now - self._head_seen > CONFIG.head_timeout_s:
                print(f"nbray node: the head at {self.head_address} has not answered for "
                      f"{now - self._head_seen:.0f}s; stopping", file=sys.stderr, flush=True)
                self.stopping = True
        if now - self._last_served_check >= CONFIG.store_check_s:
            self._last_served_check = now
            if self.transfers.served or self.transfers._open:
                self.transfers.check_served()
        if now - self._last_check >= 0.5:
            self._last_check = now
            if self.transfers.fetching:
                self.transfers.check_fetching()
            if self.transfers.parked:
                self.transfers.retry_parked()
            if self.watch_pid is not None and not psutil.pid_exists(self.watch_pid):
                self.stopping = True
            for cid, c in list(self.clients.items()):
                if not psutil.pid_exists(c.pid):
                    self._client_gone(cid)

    def shutdown(self) -> None:
        self.ep.send(self.head_address, P.NodeLeaving(self.node_id))
        self.pool.stop_all(CONFIG.shutdown_grace_s)
        self.transfers.close()
        object_store.remove_session(self.session)
        self.ep.close(linger_ms=200)

    def stats(self) -> dict:
        workers = list(self.pool.workers.values())
        return {
            "node_id": self.node_id.hex(), "address": self.address, "pid": os.getpid(),
            "resources_total": dict(self.sched.total),
            "resources_available": dict(self.sched.available),
            "workers": len(workers),
            "workers_idle": sum(w.state == "idle" for w in workers),
            "workers_leased": sum(w.state == "leased" for w in workers),
            "workers_blocked": sum(w.blocked for w in workers),
            "workers_starting": sum(w.state == "starting" for w in workers),
            "worker_list": [{"worker_id": w.worker_id.hex(), "pid": w.pid, "state": w.state,
                             "actor": w.actor} for w in workers],
            "lease_queue": len(self.sched.queue),
            "leases_granted": self.leases_granted,
            "leases_kept_local": self.kept_local,
            "leases_spilled": self.spilled,
            "leases_busy": self.busy,
            "lease_queue_max": CONFIG.node_queue_max,
            "bytes_pulled": self.transfers.bytes_in,
            "bytes_served": self.transfers.bytes_out,
            "object_copies": len(self.transfers.copies),
            "segments_open": len(self.transfers._open),     # served, open to send from
            "clients": len(self.clients),
            "messages_received": self.ep.received,
            "messages_rejected": self.ep.rejected,
        }

    # ---- leases ----------------------------------------------------------------------------
    def _grant(self) -> None:
        while True:
            req = self.sched.next_grantable()
            if req is None:
                break
            idle = self.pool.by_state("idle")
            if not idle:
                self._grow()
                break
            w = idle[0]
            self.sched.queue.remove(req)
            w.state, w.lessee, w.held, w.blocked = "leased", req.peer, req.held, False
            w.actor, w.lessee_node = req.actor, req.client_node
            self.sched.acquire(req.held)
            self.leases_granted += 1
            self.ep.reply(req.peer, P.LeaseGranted(req.request_id, w.worker_id, w.address,
                                                   w.pid, self.node_id, req.placed))
            if req.actor and self._pool_size() < self.max_workers:
                self.pool.spawn()       # the actor keeps this worker: stand another in
        if self.sched.queue:
            self._reclaim()

    def _grow(self) -> None:
        """Resources are free but every worker is busy (some block in get): start one more."""
        starting = len(self.pool.by_state("starting"))
        waiting = self.sched.grantable_together()
        if starting >= waiting:
            return
        if self._pool_size() < self.max_workers:
            self.pool.spawn()
        elif not self._warned_cap:
            self._warned_cap = True
            print(f"nbray node: {len(self.pool.workers)} workers, the most it starts, are all "
                  f"busy or blocked in get; tasks wait until one is free (raise "
                  f"NBRAY_MIN_WORKER_CAP to allow more)", file=sys.stderr, flush=True)

    def _reclaim(self) -> None:
        """Another client waits: ask the clients holding leases to give them back (idle ones at
        once, busy ones once drained). A lessee that also waits for more is asked too when
        someone else waits: otherwise a client flooding the node would keep every worker,
        and another client's first task would wait for the whole flood."""
        now = time.monotonic()
        if now - self._last_reclaim < 0.01:
            return
        self._last_reclaim = now
        waiting = {r.peer for r in self.sched.queue}
        for peer in {w.lessee for w in self.pool.by_state("leased")}:
            if waiting - {peer}:
                self.ep.reply(peer, P.ReclaimLeases())

    def _release(self, w, retire: bool = False) -> None:
        if w.state == "leased" and not w.blocked:
            self.sched.release(w.held)
        w.state, w.lessee, w.held, w.blocked = "idle", None, {}, False
        if w.actor or retire:   # an actor's state must not leak into the next lessee's work
            w.state, w.retired = "retiring", True
            self.pool.signal(w.worker_id, signal.SIGKILL)

    # ---- handlers --------------------------------------------------------------------------
    def _on_hello(self, peer, msg: P.Hello) -> None:
        if msg.version != P.PROTOCOL_VERSION:
            self.ep.reply(peer, P.Error(f"protocol version {msg.version} != "
                                        f"{P.PROTOCOL_VERSION}"))
            return
        if msg.worker_id is not None:
            w = self.pool.workers.get(msg.worker_id)
            if w is not None and w.state == "starting":
                w.address, w.state = msg.address, "keeper" if w is self.keeper else "idle"
                if w is self.keeper:
                    for asker, request_id in self._keeper_asks:
                        self.ep.reply(asker, P.Reply(request_id, w.address))
                    self._keeper_asks.clear()
        else:
            self.clients[msg.client_id] = ClientInfo(msg.client_id, msg.pid, msg.address)
        self.ep.reply(peer, P.Welcome(self.node_id, self.session, dict(self.sched.total),
                                      object_store.store_dir(), self.head_address,
                                      dict(self.cluster_total), config.limits()))
        if msg.worker_id is not None:       # a new worker runs the setups drivers asked for
            for setups in self.setups.values():
                for setup in setups.values():
                    self.ep.reply(peer, setup)

    def _on_setup_workers(self, peer, msg: P.SetupWorkers) -> None:
        """A driver's setup: every worker runs it, those started later too, until the driver
        leaves."""
        self.setups.setdefault(msg.owner, {})[msg.key or str(msg.setup_id)] = msg
        for w in self.pool.workers.values():
            if w.state != "starting":
                self.ep.reply((True, w.worker_id), msg)
        if not msg.forwarded:
            for address in set(self.known_nodes.values()) - {self.address,
                                                              self.public_address}:
                self.ep.send(address, msg._replace(forwarded=True))

    # ---- the local half of the hybrid scheduler --------------------------------------------
    def _on_request_lease(self, peer, msg: P.RequestLease) -> None:
        """Keep a request that this node can grant now; spill the others to the head, which
        knows the other nodes (a node of a one-machine cluster keeps what it can ever grant,
        and refuses the rest: no node can join it)."""
        if peer[0] and peer[1] in self._gone:
            return                      # a client that left: nobody would use the lease
        gone = self.sched.removed(msg.resources) or (
            self.sched.removed(msg.hold) if msg.hold else None)
        if gone is not None:
            self.ep.reply(peer, P.LeaseRejected(msg.request_id, gone))
            return
        reason = self.sched.infeasible(msg.resources) or (
            self.sched.infeasible(msg.hold) if msg.hold else None)
        req = LeaseRequest(peer, msg.request_id, msg.resources, msg.actor, msg.hold,
                           msg.client_node, msg.placed)
        if self.multi_node and not msg.spilled:
            why = f"resources: not feasible here ({reason})" if reason is not None else \
                self._why_not_now(req, msg.prefer_node)
            if why:
                self._spill(peer, msg, why)
                return
        elif reason is not None:
            self.ep.reply(peer, P.LeaseRejected(msg.request_id, reason))
            return
        if len(self.sched.queue) >= CONFIG.node_queue_max and \
                not self.sched.fits_behind_queue(req.resources):
            # bounded: what would wait is asked again later (what fits, even behind the
            # queue, is granted now)
            self.busy += 1
            self.ep.reply(peer, P.LeaseBusy(msg.request_id, len(self.sched.queue)))
            return
        self.kept_local += 1
        self.sched.queue.append(req)

    def _why_not_now(self, req: LeaseRequest, prefer_node: bytes) -> str:
        """Why this node should not keep the request ('' if it should)."""
        if prefer_node and prefer_node != self.node_id and prefer_node in self.nodes:
            return "locality: the task's input bytes are on another node"
        if not self.sched.fits_behind_queue(req.resources):
            return "queue: its resources are busy here"
        return ""

    def _spill(self, peer, msg: P.RequestLease, why: str) -> None:
        sid = next(self._spill_ids)
        self._spills[sid] = (peer, msg._replace(placed=why))
        self.spilled += 1
        self.ep.send(self.head_address, P.SpillLease(
            sid, msg.resources, msg.hold, self.node_id, why, msg.prefer_node))

    def _on_spill_to(self, peer, msg: P.SpillTo) -> None:
        client, req = self._spills.pop(msg.spill_id, (None, None))
        if client is None or (client[0] and client[1] in self._gone):
            return
        placed = f"{req.placed}; the global scheduler chose " + (
            "this node again" if msg.node_id == self.node_id else
            f"node {msg.node_id.hex()[:8]}") + f": {msg.why}"
        if msg.node_id == self.node_id:         # the head sends it back: it waits here
            self._on_request_lease(client, req._replace(spilled=True, placed=placed))
        else:
            self.ep.reply(client, P.LeaseSpilled(req.request_id, msg.address, msg.node_id,
                                                 placed))

    def _on_spill_pending(self, peer, msg: P.SpillPending) -> None:
        client, req = self._spills.get(msg.spill_id, (None, None))
        if client is not None:          # the head keeps it, and says where when it can
            self.ep.reply(client, P.LeasePending(req.request_id, msg.reason))

    def _on_return_lease(self, peer, msg: P.ReturnLease) -> None:
        w = self.pool.workers.get(msg.worker_id)
        if w is not None and w.lessee == peer:
            w.actor = w.actor or msg.kill
            self._release(w)

    # ---- placement groups' bundles (the head plans them: head/placement_groups.py) ---------
    def _on_prepare_bundles(self, peer, msg: P.PrepareBundles) -> None:
        reason = self.sched.prepare(msg.pg_id, msg.bundles)
        self.ep.send(self.head_address, P.BundlesPrepared(msg.pg_id, self.node_id,
                                                          not reason, reason))

    def _on_commit_bundles(self, peer, msg: P.CommitBundles) -> None:
        self.sched.commit(msg.pg_id)

    def _on_release_bundles(self, peer, msg: P.ReleaseBundles) -> None:
        gone = self.sched.release_group(msg.pg_id, msg.indices)
        whole = msg.pg_id not in self.sched.groups
        hexid = msg.pg_id.hex()
        for w in self.pool.by_state("leased"):      # what runs in it goes with it
            mine = {k for k in w.held if bundles.is_group_resource(k) and
                    bundles.group_of(k) == hexid}
            if mine and (whole or mine & gone):
                w.held = {k: v for k, v in w.held.items() if k not in mine}
                self.pool.signal(w.worker_id, signal.SIGKILL)
        if msg.removed:         # what waits for it here fails: it will never exist again
            self.sched.removed_groups.add(hexid)
            for req in list(self.sched.queue):
                reason = self.sched.removed(req.resources)
                if reason is not None:
                    self.sched.queue.remove(req)
                    self.ep.reply(req.peer, P.LeaseRejected(req.request_id, reason))

    def _pool_size(self) -> int:
        """The workers that serve leases (not the keeper)."""
        return len(self.pool.workers) - (self.keeper is not None and
                                          self.keeper.worker_id in self.pool.workers)

    def _on_keeper_address(self, peer, msg: P.KeeperAddress) -> None:
        """Where the keeper is: a worker of its own, never leased, that owns the detached
        actors created through this node; started on first need, again if it died."""
        if self.keeper is not None and self.keeper.worker_id not in self.pool.workers:
            self.keeper = None
        if self.keeper is None:
            self.keeper = self.pool.spawn()
        if self.keeper.state == "keeper":
            self.ep.reply(peer, P.Reply(msg.request_id, self.keeper.address))
        else:
            self._keeper_asks.append((peer, msg.request_id))

    def _on_blocked(self, peer, msg: P.WorkerBlocked) -> None:
        w = self.pool.workers.get(msg.worker_id)
        if w is not None and w.state == "leased" and not w.blocked:
            w.blocked = True
            self.sched.release(w.held)

    def _on_unblocked(self, peer, msg: P.WorkerUnblocked) -> None:
        w = self.pool.workers.get(msg.worker_id)
        if w is not None and w.state == "leased" and w.blocked:
            w.blocked = False
            self.sched.acquire(w.held)

    def _on_poke(self, peer, msg: P.Poke) -> None:
        if self.pool.signal(msg.worker_id, signal.SIGKILL if msg.force else signal.SIGUSR1):
            return
        if msg.forward:         # an actor's worker, on another node
            for address in set(self.known_nodes.values()) - {self.address,
                                                              self.public_address}:
                self.ep.send(address, msg._replace(forward=False))

    def _on_free(self, peer, msg: P.FreeObjects) -> None:
        if msg.node_id and msg.node_id != self.node_id:     # another node's: send it on
            target = self.known_nodes.get(msg.node_id)      # even one taken for dead
            if target is not None:
                self.ep.send(target, P.FreeObjects(msg.paths))
            return
        for path in msg.paths:
            if object_store.owned_by(self.session, path):
                if not msg.unlinked:    # (a segment made again since keeps its new file)
                    object_store.unlink(path)
                self.transfers.freed(path)

    def _on_info(self, peer, msg) -> None:
        self.ep.reply(peer, P.NodeInfo(self.stats()))

    def _on_chaos_kill(self, peer, msg: P.ChaosKill) -> None:
        """Fault injection: a worker dies as if the machine killed it, or the node does."""
        if msg.worker_id:
            self.pool.signal(msg.worker_id, signal.SIGKILL)
            return
        print("nbray node: killed by nbray.chaos", file=sys.stderr, flush=True)
        for w in list(self.pool.workers.values()):
            self.pool.signal(w.worker_id, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

    def _on_goodbye(self, peer, msg: P.Goodbye) -> None:
        if peer == (True, msg.client_id) and msg.client_id in self.clients:
            self._client_gone(msg.client_id)

    def _on_shutdown(self, peer, msg) -> None:
        self.stopping = True

    def _on_client_gone_elsewhere(self, peer, msg: P.ClientGone) -> None:
        """The head says a client of another node died or left."""
        self._client_gone(msg.client_id, msg.address, tell_head=False)
        if msg.driver:          # its results written here are gone with it
            object_store.remove_owner(self.session, msg.client_id)

    def _on_heartbeat_ack(self, peer, msg) -> None:
        self._head_seen = time.monotonic()
        nodes = getattr(msg, "nodes", None)
        if nodes:
            joined = set(nodes) - set(self.known_nodes) - {self.node_id}
            self.nodes = nodes
            self.known_nodes.update({nid: a for nid, (a, _) in nodes.items()})
            for nid in joined:          # a node that joined gets our drivers' setups
                for setups in self.setups.values():
                    for setup in setups.values():
                        if not setup.forwarded:
                            self.ep.send(nodes[nid][0], setup._replace(forwarded=True))
            if self.transfers.parked:
                self.transfers.retry_parked()
            total: dict = {}
            for _, resources in nodes.values():
                for k, v in resources.items():
                    total[k] = total.get(k, 0.0) + v
            if total != self.cluster_total:     # a node came or went: clients ask for more
                self.cluster_total = total
                update = P.ClusterResources(total)
                for cid in self.clients:
                    self.ep.reply((True, cid), update)
                for wid in self.pool.workers:
                    self.ep.reply((True, wid), update)

    def _on_node_unknown(self, peer, msg) -> None:
        """The head does not know us (it restarted, or took us for dead): join it again, and
        ask again for the placements it owed us."""
        self._head_seen = time.monotonic()
        self.ep.send(self.head_address, self._registration())
        for sid, (_, req) in self._spills.items():
            self.ep.send(self.head_address, P.SpillLease(
                sid, req.resources, req.hold, self.node_id, "asked again: the head restarted",
                req.prefer_node))

    def _on_node_died(self, peer, msg: P.NodeDied) -> None:
        """Another node died or left: its clients' leases here end, its requests are dropped,
        copies of its objects go, and our clients hear of it (their leases there are lost)."""
        for w in self.pool.by_state("leased"):
            if w.lessee_node == msg.node_id:
                w.owner_died = w.actor
                self._release(w, retire=True)
        self.sched.queue = collections.deque(r for r in self.sched.queue
                                             if r.client_node != msg.node_id)
        self.transfers.source_died(msg.node_id)
        for cid in self.clients:
            self.ep.reply((True, cid), msg)
        for wid in self.pool.workers:
            self.ep.reply((True, wid), msg)

    def _registration(self) -> P.RegisterNode:
        return P.RegisterNode(self.node_id, socket.gethostname(), self.public_address,
                              self.sched.total, os.getpid())

    _HANDLERS = {
        P.Hello: _on_hello,
        P.PrepareBundles: _on_prepare_bundles,
        P.KeeperAddress: _on_keeper_address,
        P.CommitBundles: _on_commit_bundles,
        P.ReleaseBundles: _on_release_bundles,
        P.RequestLease: _on_request_lease,
        P.ReturnLease: _on_return_lease,
        P.WorkerBlocked: _on_blocked,
        P.WorkerUnblocked: _on_unblocked,
        P.Poke: _on_poke,
        P.SetupWorkers: _on_setup_workers,
        P.FreeObjects: _on_free,
        P.NodeInfoRequest: _on_info,
        P.Goodbye: _on_goodbye,
        P.ChaosKill: _on_chaos_kill,
        P.Shutdown: _on_shutdown,
        P.HeartbeatAck: _on_heartbeat_ack,
        P.NodeUnknown: _on_node_unknown,
        P.SpillTo: _on_spill_to,
        P.FetchObject: lambda self, peer, msg: self.transfers.fetch(peer, msg),
        P.PullChunk: lambda self, peer, msg: self.transfers.pull(peer, msg),
        P.Chunk: lambda self, peer, msg: self.transfers.chunk(peer, msg),
        P.FreeCopies: lambda self, peer, msg: self.transfers.free_copies(peer, msg),
        P.SpillPending: _on_spill_pending,
        P.ClientGone: _on_client_gone_elsewhere,
        P.NodeDied: _on_node_died,
        P.NodeRegistered: _on_heartbeat_ack,
    }

    # ---- deaths ----------------------------------------------------------------------------
    def _on_worker_exit(self, w) -> None:
        code = w.proc.returncode
        reason = f"worker pid {w.pid} exited with code {code}" if code >= 0 else \
            f"worker pid {w.pid} was killed by signal {-code}"
        if w is self.keeper:        # who waits for it to start hears why not, now
            self.keeper = None
            for asker, request_id in self._keeper_asks:
                self.ep.reply(asker, P.Reply(request_id, None,
                                             f"the keeper of detached actors died: {reason}"))
            self._keeper_asks.clear()
        if w.owner_died:
            # the owner cannot tell the actor's other callers: tell every client here
            died = P.WorkerDied(w.worker_id, "the actor's owner died", owner_died=True)
            for peer in [(True, c) for c in self.clients] + \
                    [(True, o) for o in self.pool.workers if o != w.worker_id]:
                self.ep.reply(peer, died)
        elif w.lessee is not None:
            if not w.blocked:
                self.sched.release(w.held)
            self.ep.reply(w.lessee, P.WorkerDied(w.worker_id, reason))
        self._client_gone(w.worker_id, w.address)
        if not self.stopping and self._pool_size() < self.num_workers:
            self.pool.spawn()

    def _client_gone(self, client_id: bytes, address: str = "", tell_head: bool = True) -> None:
        """A client died or left: the workers it leased go back to the pool (those hosting its
        actors are retired: actors share their owner's fate), its requests are dropped."""
        info = self.clients.pop(client_id, None)
        address = address or (info.address if info is not None else "")
        self.setups.pop(address, None)
        if address and tell_head:
            self.ep.send(self.head_address, P.ClientGone(address, client_id,
                                                         driver=info is not None))
        self._gone[client_id] = None
        while len(self._gone) > 10_000:
            self._gone.popitem(last=False)
        self._spills = {sid: v for sid, v in self._spills.items() if v[0] != (True, client_id)}
        peer = (True, client_id)
        self.sched.drop_peer(peer)
        for w in self.pool.by_state("leased"):
            if w.lessee == peer:        # running the gone client's tasks, for nobody
                w.owner_died = w.actor
                self._release(w, retire=True)
        if info is not None:
            # a driver: what it owned is gone with it (its ids begin with its client id). A
            # dead worker's objects stay until the node stops: a driver may still read them,
            # and losing them must be a clear ObjectLostError first
            object_store.remove_owner(self.session, client_id)
