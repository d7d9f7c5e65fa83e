"""The global scheduler: where a lease request goes when its node did not keep it. Pure: no
sockets.

A node keeps a request when it can grant it now; otherwise it spills it here, and the choice is
made from the nodes' last heartbeats:

1. only live nodes with the resources at all are candidates (none: the request waits, and the
   reason names what no node has);
2. the node holding most of the task's input bytes, if it has the resources free now or
   only a short lease queue (locality: moving the bytes costs more than a short wait);
3. else another node with the resources free now, the one with the most free CPU first (load;
   the spilling node said it has none free, which is newer than its last heartbeat);
4. else every candidate is busy: the one with the shortest lease queue, the spilling node
   itself when it is as short as any (it then waits where it was asked).

Each choice is written to ``decisions`` (bounded) with the reason, for the state API.
"""
from __future__ import annotations

import collections
import time
from dataclasses import dataclass

#: decisions kept for the state API
DECISIONS_KEPT = 1000


@dataclass(eq=False)
class Pending:
    spill_id: int
    origin: bytes
    resources: dict
    hold: dict | None
    why: str
    prefer_node: bytes
    since: float


class GlobalScheduler:
    def __init__(self):
        self.pending: list[Pending] = []
        self.decisions: collections.deque = collections.deque(maxlen=DECISIONS_KEPT)

    def place(self, nodes: list, request: Pending):
        """(chosen node, why) or (None, reason it must wait)."""
        need = dict(request.resources)
        if request.hold:
            need.update({k: max(v, need.get(k, 0.0)) for k, v in request.hold.items()})
        live = [n for n in nodes if n.alive]
        feasible = [n for n in live if _has(n.resources, need)]
        if not feasible:
            return None, _missing(live, need)
        # a node that spilled because it is busy just said so: its last heartbeat, which may
        # say otherwise, is older than that
        busy_origin = request.origin if "busy" in request.why else None
        free = [n for n in feasible if _has(_available(n), need) and n.node_id != busy_origin]
        by_id = {n.node_id: n for n in feasible}
        prefer = by_id.get(request.prefer_node)
        if prefer is not None and (prefer in free or
                                   _queue(prefer) < max(1, prefer.resources.get("CPU", 1))):
            chosen, why = prefer, "locality: it holds most of the task's input bytes"
        elif free:
            chosen = max(free, key=lambda n: (_available(n).get("CPU", 0.0),
                                              -_queue(n), n.node_id == request.origin))
            why = f"load: {_describe(need)} free there" + (
                f" ({request.why.split(': ', 1)[-1]} on the first node)"
                if chosen.node_id != request.origin
                else "")
        else:
            chosen = min(feasible, key=lambda n: (_queue(n), n.node_id != request.origin))
            why = "every node with the resources is busy: the shortest lease queue"
        _reserve(chosen, request.hold if request.hold is not None else request.resources)
        self.decisions.append({"time": time.time(), "origin": request.origin.hex(),
                               "node": chosen.node_id.hex(), "resources": need, "why": why,
                               "spilled_because": request.why})
        return chosen, why

    def retry_pending(self, nodes: list) -> list:
        """Pending requests that a node can now serve: [(request, node, why)]."""
        placed, still = [], []
        for req in self.pending:
            node, why = self.place(nodes, req)
            (placed.append((req, node, why)) if node is not None else still.append(req))
        self.pending = still
        return placed


def _available(node) -> dict:
    return node.stats.get("resources_available", node.resources)


def _queue(node) -> int:
    return node.stats.get("lease_queue", 0)


def _has(have: dict, need: dict) -> bool:
    return all(have.get(k, 0.0) >= v for k, v in need.items() if v)


def _reserve(node, resources: dict) -> None:
    """Count the lease against the node until its next heartbeat says how things stand, so a
    burst of spills does not all land on the node that looked free."""
    avail = node.stats.get("resources_available")
    if avail is not None:
        node.stats = dict(node.stats, resources_available={
            k: avail.get(k, 0.0) - resources.get(k, 0.0) for k in set(avail) | set(resources)})


def _describe(resources: dict) -> str:
    from nbray.runtime.bundles import describe
    return describe(resources)


def _missing(nodes: list, need: dict) -> str:
    if not nodes:
        return "no node is alive"
    short = sorted(k for k, v in need.items() if v and
                   not any(n.resources.get(k, 0.0) >= v for n in nodes))
    if short:
        return (f"no node has {', '.join(f'{k}={need[k]:g}' for k in short)} (the nodes have "
                f"{'; '.join(_describe(n.resources) for n in nodes)}); it waits for a node "
                f"that has")
    return (f"no single node has {_describe(need)} at once; it waits for a node that has")
