"""The control store's tables. Pure: no sockets."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from nbray.runtime import bundles


@dataclass(eq=False)
class NodeEntry:
    node_id: bytes
    host: str
    address: str
    resources: dict
    pid: int
    #: the connection the node registered on: the head answers there, since ``address`` may
    #: be an ipc path on another machine
    peer: tuple = ()
    registered_at: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.monotonic)
    stats: dict = field(default_factory=dict)
    alive: bool = True
    died_at: float | None = None


#: state changes kept per actor (the oldest go first)
ACTOR_HISTORY = 50
#: actors that ended are kept in the table (for the state API) up to this many
DEAD_ACTORS_KEPT = 1000


class Tables:
    def __init__(self, session: str):
        self.session = session
        self.nodes: dict[bytes, NodeEntry] = {}
        self.started_at = time.time()
        self.actors: dict[bytes, dict] = {}
        self.names: dict[tuple, bytes] = {}        # (namespace, name) -> actor id
        self._dead: list[bytes] = []

    # ---- actors --------------------------------------------------------------------------
    def register_actor(self, entry: dict) -> str:
        """Add an actor; returns why it cannot be added ('' if it was)."""
        key = (entry.get("namespace", ""), entry.get("name") or "")
        if key[1]:
            holder = self.names.get(key)
            if holder is not None and self.actors.get(holder, {}).get("state") != "dead":
                return f"an actor named {key[1]!r} already exists" + (
                    f" in namespace {key[0]!r}" if key[0] else "")
            self.names[key] = entry["actor_id"]
        row = dict(entry, history=[], restarts=entry.get("restarts", 0))
        self.actors[entry["actor_id"]] = row
        self.update_actor(entry["actor_id"], {"state": entry.get("state", "pending")})
        return ""

    def update_actor(self, actor_id: bytes, fields: dict) -> None:
        row = self.actors.get(actor_id)
        if row is None:
            return
        state = fields.get("state")
        last = row["history"][-1]["state"] if row["history"] else None
        if state is not None and (state != last or fields.get("detail")):
            row["history"].append({"time": time.time(), "state": state,
                                   "detail": fields.get("detail", "")})
            del row["history"][:-ACTOR_HISTORY]
        row.update({k: v for k, v in fields.items() if k != "detail"})
        if state == "dead":
            key = (row.get("namespace", ""), row.get("name") or "")
            if self.names.get(key) == actor_id:
                del self.names[key]
            self._dead.append(actor_id)
            while len(self._dead) > DEAD_ACTORS_KEPT:
                self.actors.pop(self._dead.pop(0), None)

    def lookup_actor(self, name: str, namespace: str = "") -> dict | None:
        actor_id = self.names.get((namespace, name))
        return None if actor_id is None else self.actors.get(actor_id)

    def owner_gone(self, address: str) -> None:
        """An owner died: its actors died with it."""
        for actor_id, row in list(self.actors.items()):
            if row.get("owner") == address and row.get("state") != "dead":
                self.update_actor(actor_id, {"state": "dead",
                                             "detail": "its owner died"})

    def actor_list(self) -> list[dict]:
        return [dict(row, history=list(row["history"])) for row in self.actors.values()]

    def register_node(self, node_id, host, address, resources, pid, peer=()) -> NodeEntry:
        entry = self.nodes[node_id] = NodeEntry(node_id, host, address, resources, pid, peer)
        return entry

    def remove_node(self, node_id: bytes) -> NodeEntry | None:
        return self.nodes.pop(node_id, None)

    def heartbeat(self, node_id: bytes, stats: dict) -> bool:
        """Note a node's heartbeat; False if the node is not (or no longer) known."""
        entry = self.nodes.get(node_id)
        if entry is None or not entry.alive:
            return False
        entry.last_seen = time.monotonic()
        entry.stats = stats
        return True

    def check_nodes(self, timeout_s: float) -> list[NodeEntry]:
        """Declare dead the nodes silent for ``timeout_s``; returns those newly dead."""
        now = time.monotonic()
        dead = [n for n in self.nodes.values() if n.alive and now - n.last_seen > timeout_s]
        for n in dead:
            n.alive = False
            n.died_at = time.time()
        return dead

    def node_list(self) -> list[dict]:
        now = time.monotonic()
        return [{**n.stats, **{k: bundles.visible(n.stats[k]) for k in
                               ("resources_total", "resources_available") if k in n.stats},
                 "node_id": n.node_id.hex(), "host": n.host, "address": n.address,
                 "resources": bundles.visible(n.resources), "pid": n.pid, "alive": n.alive,
                 "state": "alive" if n.alive else "dead", "registered_at": n.registered_at,
                 "died_at": n.died_at,
                 "seconds_since_heartbeat": round(now - n.last_seen, 3)}
                for n in self.nodes.values()]
