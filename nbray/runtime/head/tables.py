"""The control store's tables. Pure: no sockets."""
from __future__ import annotations

import time
from dataclasses import dataclass, field


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


class Tables:
    def __init__(self, session: str):
        self.session = session
        self.nodes: dict[bytes, NodeEntry] = {}
        self.started_at = time.time()

    def register_node(self, node_id, host, address, resources, pid, peer=()) -> NodeEntry:
        entry = self.nodes[node_id] = NodeEntry(node_id, host, address, resources, pid, peer)
        return entry

    def remove_node(self, node_id: bytes) -> NodeEntry | None:
        return self.nodes.pop(node_id, None)

    def heartbeat(self, node_id: bytes, stats: dict) -> None:
        entry = self.nodes.get(node_id)
        if entry is not None:
            entry.last_seen = time.monotonic()
            entry.stats = stats
            entry.alive = True

    def node_list(self) -> list[dict]:
        now = time.monotonic()
        return [{"node_id": n.node_id.hex(), "host": n.host, "address": n.address,
                 "resources": n.resources, "pid": n.pid, "alive": n.alive,
                 "seconds_since_heartbeat": round(now - n.last_seen, 3), **n.stats}
                for n in self.nodes.values()]
