"""The head's process: serves its tables to nodes, drivers and the CLI, and places the lease
requests that nodes spill (``global_scheduler.py``)."""
from __future__ import annotations

import os
import sys
import time

import psutil

from nbray.config import CONFIG
from nbray.runtime import protocol as P
from nbray.runtime.events import EventLog
from nbray.runtime import bundles
from nbray.runtime.head.global_scheduler import GlobalScheduler, Pending
from nbray.runtime.head.placement_groups import Group, GroupTable, plan
from nbray.runtime.head.tables import Tables
from nbray.runtime.transport import Endpoint, guarded


class HeadServer:
    def __init__(self, *, key: bytes, session: str, bind: list[str], watch_pid: int | None):
        self.ep = Endpoint(key, b"head", bind)
        self.address = self.ep.address
        self.tables = Tables(session)
        self.scheduler = GlobalScheduler()
        self.groups = GroupTable()
        self.events = EventLog(CONFIG.event_log_max, CONFIG.task_log_max)
        self.watch_pid = watch_pid
        self.stopping = False

    def serve(self) -> None:
        try:
            while not self.stopping:
                for peer, msg in self.ep.recv(250):
                    handler = self._HANDLERS.get(type(msg))
                    if handler is not None:
                        guarded(handler, self, peer, msg)
                self._check_nodes()
                if self.watch_pid is not None and not psutil.pid_exists(self.watch_pid):
                    self.stopping = True
        finally:
            # the nodes go with the head: joined nodes on other machines too
            self._shutdown_nodes()
            self.ep.close(linger_ms=500)

    def _on_register_node(self, peer, msg: P.RegisterNode) -> None:
        if msg.version != P.PROTOCOL_VERSION:
            print(f"nbray head: refused node {msg.host} pid {msg.pid}: protocol version "
                  f"{msg.version}, this head speaks {P.PROTOCOL_VERSION}", file=sys.stderr,
                  flush=True)
            self.ep.reply(peer, P.Error(f"protocol version {msg.version} is not the head's "
                                        f"({P.PROTOCOL_VERSION}): install the same nbray"))
            return
        self.tables.register_node(msg.node_id, msg.host, msg.address, msg.resources, msg.pid,
                                  peer)
        self.ep.reply(peer, P.NodeRegistered(self.tables.session))
        self._place_pending()           # it may have what waiting requests need
        self._place_groups()

    def _on_node_leaving(self, peer, msg: P.NodeLeaving) -> None:
        entry = self.tables.nodes.get(msg.node_id)
        if entry is not None and entry.peer == peer:       # only the node itself says so
            self.tables.remove_node(msg.node_id)
            self._node_died(entry, "it stopped", "node_left")

    # ---- placement groups ----------------------------------------------------------------
    def _on_create_group(self, peer, msg: P.CreatePlacementGroup) -> None:
        group = Group(msg.pg_id, msg.name, [dict(b) for b in msg.bundles], msg.strategy,
                      msg.owner, msg.detached)
        error = self.groups.add(group)
        if not error:
            self._place_groups()
        self.ep.reply(peer, P.Reply(msg.request_id, {"state": group.state,
                                                     "reason": group.reason}, error))

    def _place_groups(self) -> None:
        """Plan the waiting groups (or the bundles of them a dead node held) on the nodes'
        free resources; ask the nodes to prepare."""
        live = [n for n in self.tables.nodes.values() if n.alive and n.peer]
        by_id = {n.node_id: n for n in live}
        for group in self.groups.waiting():
            if group.waiting_on:
                continue                # its nodes are still answering
            todo = group.lost or list(range(len(group.bundles)))
            kept = {n for i, n in enumerate(group.nodes) if n and i not in todo}
            nodes = [(n.node_id, n.resources, n.stats.get("resources_available", n.resources))
                     for n in live if group.strategy != "STRICT_SPREAD" or n.node_id not in kept]
            chosen, group.reason = plan([group.bundles[i] for i in todo], group.strategy,
                                        nodes)
            if chosen is None:
                continue
            if len(group.nodes) != len(group.bundles):
                group.nodes = [None] * len(group.bundles)
            for i, node_id in zip(todo, chosen):
                group.nodes[i] = node_id
            group.preparing, group.failed = todo, False
            group.waiting_on = set(chosen)
            for node_id in group.waiting_on:
                mine = group.on(node_id, todo)
                self.ep.reply(by_id[node_id].peer, P.PrepareBundles(group.pg_id, mine))
                avail = by_id[node_id].stats.get("resources_available")
                if avail is not None:   # until its next heartbeat says how things stand
                    for _, b in mine:
                        bundles.add(avail, b, -1.0)

    def _on_bundles_prepared(self, peer, msg: P.BundlesPrepared) -> None:
        group = self.groups.groups.get(msg.pg_id)
        if group is None or msg.node_id not in group.waiting_on:
            return
        group.waiting_on.discard(msg.node_id)
        if not msg.ok:
            group.failed, group.reason = True, msg.reason
        if group.waiting_on:
            return
        todo, group.preparing = group.preparing, []
        if group.state == "removed" or group.failed:
            self._release_group(group, committed=False, among=todo)    # what was set aside
            if group.state != "removed":
                for i in todo:          # planned again at the next try
                    group.nodes[i] = None
            return
        group.state, group.reason, group.lost = "created", "", []
        for node_id in {group.nodes[i] for i in todo}:
            node = self.tables.nodes.get(node_id)
            if node is not None and node.peer:
                self.ep.reply(node.peer, P.CommitBundles(group.pg_id))
                self._group_resources(group, node, 1.0, todo)
        self._place_pending()           # tasks that wait for the group's resources

    def _group_resources(self, group: Group, node, sign: float, among=None) -> None:
        """Add (or take off) the group's resources to what the head knows ``node`` has."""
        node.resources = dict(node.resources)
        for i, b in group.on(node.node_id, among):
            bundles.add(node.resources, bundles.group_resources(group.pg_id.hex(), i, b), sign)

    def _release_group(self, group: Group, committed: bool, among=None) -> None:
        """The nodes give back the group's bundles (those of ``among`` only, if given)."""
        for node_id in {n for i, n in enumerate(group.nodes)
                        if n and (among is None or i in among)}:
            node = self.tables.nodes.get(node_id)
            if node is None:
                continue
            if node.peer and node.alive:
                self.ep.reply(node.peer, P.ReleaseBundles(
                    group.pg_id, indices=tuple(among) if among is not None else ()))
            if committed:
                self._group_resources(group, node, -1.0, among)

    def _on_remove_group(self, peer, msg: P.RemovePlacementGroup) -> None:
        group = self.groups.groups.get(msg.pg_id)
        if group is None:
            self.ep.reply(peer, P.Reply(msg.request_id, None,
                                        f"no placement group {msg.pg_id.hex()}"))
            return
        self._remove_group(group)
        self.ep.reply(peer, P.Reply(msg.request_id, True))

    def _remove_group(self, group: Group) -> None:
        """Removed now; a group its nodes are preparing is released when they have answered
        (``_on_bundles_prepared``)."""
        if group.state == "removed":
            return
        if group.state in ("created", "rescheduling"):
            for node in {self.tables.nodes.get(n) for n in group.nodes if n} - {None}:
                self._group_resources(group, node, -1.0)
        self.groups.removed(group)
        # every node gives back what it holds of the group, and refuses its resources from now
        for node in self.tables.nodes.values():
            if node.alive and node.peer:
                self.ep.reply(node.peer, P.ReleaseBundles(group.pg_id, removed=True))
        # requests waiting here for its resources go back to their nodes, which refuse them
        hexid = group.pg_id.hex()
        waiting = [p for p in self.scheduler.pending
                   if any(bundles.is_group_resource(k) and bundles.group_of(k) == hexid
                          for k in {**p.resources, **(p.hold or {})})]
        for p in waiting:
            self.scheduler.pending.remove(p)
            origin = self.tables.nodes.get(p.origin)
            if origin is not None and origin.alive and origin.peer:
                self.ep.reply(origin.peer, P.SpillTo(p.spill_id, origin.node_id,
                                                     origin.address, "its group was removed"))

    def _on_list_groups(self, peer, msg: P.ListPlacementGroups) -> None:
        rows = [g.row() for g in self.groups.groups.values()
                if not msg.name or (g.name == msg.name and g.state != "removed")]
        self.ep.reply(peer, P.Reply(msg.request_id, rows))

    def _groups_on_dead_node(self, node_id: bytes) -> None:
        """A node with bundles died: those bundles are planned again on the other nodes;
        the others, and what runs in them, stay."""
        for group in list(self.groups.groups.values()):
            if group.state == "created" and node_id in group.nodes:
                group.lost = [i for i, n in enumerate(group.nodes) if n == node_id]
                node = self.tables.nodes.get(node_id)
                if node is not None:
                    self._group_resources(group, node, -1.0, group.lost)
                for i in group.lost:
                    group.nodes[i] = None
                group.state = "rescheduling"
                group.reason = f"node {node_id.hex()} died"
            elif node_id in group.waiting_on:       # it will never answer
                self._on_bundles_prepared(None, P.BundlesPrepared(
                    group.pg_id, node_id, False, f"node {node_id.hex()} died"))

    # ---- actors --------------------------------------------------------------------------
    def _on_register_actor(self, peer, msg: P.RegisterActor) -> None:
        error = self.tables.register_actor(msg.entry)
        self.ep.reply(peer, P.Reply(msg.request_id, None, error))

    def _on_actor_update(self, peer, msg: P.ActorUpdate) -> None:
        self.tables.update_actor(msg.actor_id, msg.fields)

    def _on_lookup_actor(self, peer, msg: P.LookupActor) -> None:
        self.ep.reply(peer, P.Reply(msg.request_id,
                                    self.tables.lookup_actor(msg.name, msg.namespace)))

    def _on_list_actors(self, peer, msg: P.ListActors) -> None:
        self.ep.reply(peer, P.Reply(msg.request_id, self.tables.actor_list()))

    # ---- the event log -------------------------------------------------------------------
    def _on_report_events(self, peer, msg: P.ReportEvents) -> None:
        if isinstance(msg.events, list):
            self.events.add(msg.events)
        if isinstance(msg.tasks, bytes) and isinstance(msg.task_count, int):
            self.events.add_tasks(msg.tasks, msg.task_count)
        if isinstance(msg.unfinished_count, int) and msg.unfinished_count >= 0 and \
                isinstance(msg.unfinished, bytes) and isinstance(msg.owner, str):
            self.events.set_unfinished(msg.owner, msg.unfinished, msg.unfinished_count)
        if msg.summary:
            self.events.add_summary(msg.summary)

    def _on_task_summary(self, peer, msg: P.TaskSummary) -> None:
        self.ep.reply(peer, P.Reply(msg.request_id, self.events.totals))

    def _on_list_events(self, peer, msg: P.ListEvents) -> None:
        self.ep.reply(peer, P.Reply(msg.request_id, self.events.query(
            set(msg.kinds or ()), msg.since_seq, msg.limit, msg.unfinished_except)))

    def _on_client_gone(self, peer, msg: P.ClientGone) -> None:
        self.tables.owner_gone(msg.address)
        for group in list(self.groups.groups.values()):
            if group.owner == msg.address and not group.detached:
                self._remove_group(group)
        self.events.owner_gone(msg.address)
        if msg.client_id:       # it may hold leases on other nodes too
            for node in self.tables.nodes.values():
                if node.alive and node.peer and node.peer != peer:
                    self.ep.reply(node.peer, msg)

    def _on_heartbeat(self, peer, msg: P.Heartbeat) -> None:
        known = self.tables.heartbeat(msg.node_id, msg.stats)
        self.ep.reply(peer, P.HeartbeatAck(self._node_addresses()) if known
                      else P.NodeUnknown())
        if known and self.groups.groups:
            self._place_groups()        # resources it freed may be what a group waits for

    def _node_addresses(self) -> dict:
        return {n.node_id: (n.address, n.resources) for n in self.tables.nodes.values()
                if n.alive}

    # ---- the global scheduler ------------------------------------------------------------
    def _on_spill(self, peer, msg: P.SpillLease) -> None:
        req = Pending(msg.spill_id, msg.origin, msg.resources, msg.hold, msg.why,
                      msg.prefer_node, time.monotonic())
        node, why = self.scheduler.place(list(self.tables.nodes.values()), req)
        if node is None:
            self.scheduler.pending.append(req)
            self.ep.reply(peer, P.SpillPending(msg.spill_id, why))
        else:
            self.ep.reply(peer, P.SpillTo(msg.spill_id, node.node_id, node.address, why))

    def _place_pending(self) -> None:
        nodes = list(self.tables.nodes.values())
        for req, node, why in self.scheduler.retry_pending(nodes):
            origin = self.tables.nodes.get(req.origin)
            if origin is not None and origin.alive and origin.peer:
                self.ep.reply(origin.peer, P.SpillTo(req.spill_id, node.node_id, node.address,
                                                     why))

    def _on_list_decisions(self, peer, msg: P.ListDecisions) -> None:
        pending = [{"origin": p.origin.hex(), "resources": p.resources, "since_s":
                    round(time.monotonic() - p.since, 3)} for p in self.scheduler.pending]
        self.ep.reply(peer, P.Reply(msg.request_id, {
            "decisions": list(self.scheduler.decisions), "pending": pending}))

    def _check_nodes(self) -> None:
        for node in self.tables.check_nodes(CONFIG.node_timeout_s):
            why = f"it sent no heartbeat for {CONFIG.node_timeout_s:g}s"
            print(f"nbray head: node {node.node_id.hex()} ({node.host}, pid {node.pid}) "
                  f"declared dead: {why}", file=sys.stderr, flush=True)
            self._node_died(node, why)

    def _node_died(self, node, why: str, kind: str = "node_died") -> None:
        self._groups_on_dead_node(node.node_id)
        self.events.add([{"time": time.time(), "kind": kind, "pid": os.getpid(),
                          "node_id": node.node_id.hex(), "host": node.host, "cause": why}])
        died = P.NodeDied(node.node_id, node.address, why)
        for other in self.tables.nodes.values():
            if other.alive and other.peer and other is not node:
                self.ep.reply(other.peer, died)

    def _on_list_nodes(self, peer, msg: P.ListNodes) -> None:
        self.ep.reply(peer, P.Reply(msg.request_id, self.tables.node_list()))

    def _on_info(self, peer, msg) -> None:
        head = {"pid": os.getpid(), "started_at": self.tables.started_at,
                "messages_received": self.ep.received, "messages_rejected": self.ep.rejected}
        self.ep.reply(peer, P.ClusterInfo(self.tables.session, self.tables.node_list(), head))

    def _on_shutdown(self, peer, msg) -> None:
        self.stopping = True

    def _shutdown_nodes(self) -> None:
        for node in self.tables.nodes.values():
            if node.peer:
                self.ep.reply(node.peer, P.Shutdown())

    _HANDLERS = {
        P.RegisterNode: _on_register_node,
        P.NodeLeaving: _on_node_leaving,
        P.RegisterActor: _on_register_actor,
        P.ActorUpdate: _on_actor_update,
        P.ReportEvents: _on_report_events,
        P.ListEvents: _on_list_events,
        P.TaskSummary: _on_task_summary,
        P.LookupActor: _on_lookup_actor,
        P.ListActors: _on_list_actors,
        P.ListNodes: _on_list_nodes,
        P.SpillLease: _on_spill,
        P.ListDecisions: _on_list_decisions,
        P.ClientGone: _on_client_gone,
        P.Heartbeat: _on_heartbeat,
        P.ClusterInfoRequest: _on_info,
        P.CreatePlacementGroup: _on_create_group,
        P.RemovePlacementGroup: _on_remove_group,
        P.ListPlacementGroups: _on_list_groups,
        P.BundlesPrepared: _on_bundles_prepared,
        P.Shutdown: _on_shutdown,
    }
