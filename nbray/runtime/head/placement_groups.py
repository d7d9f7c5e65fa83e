"""The head's placement groups: their table and where their bundles go. Pure: no sockets.

A group is ``pending`` until a plan puts every bundle on a node with the resources free (by
the nodes' last heartbeats), then ``preparing`` while those nodes set the resources aside,
then ``created`` when all said yes (they are told to commit); if one said no, the others give
theirs back and the group waits for the next try. ``removed`` is the end. A group whose node
died is planned again (``rescheduling``), its other bundles given back first.

Strategies, as in Ray: PACK (as few nodes as it can), SPREAD (as many as it can), STRICT_PACK
(one node, or it waits), STRICT_SPREAD (a node per bundle, or it waits).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
#: removed groups kept in the table (for placement_group_table)
REMOVED_KEPT = 1000


@dataclass(eq=False)
class Group:
    pg_id: bytes
    name: str
    bundles: list
    strategy: str
    owner: str
    detached: bool
    state: str = "pending"
    nodes: list = field(default_factory=list)       # node id per bundle (None: not placed)
    waiting_on: set = field(default_factory=set)    # nodes yet to say prepared
    preparing: list = field(default_factory=list)   # the bundles they prepare
    lost: list = field(default_factory=list)        # bundles whose node died: placed again
    failed: bool = False
    reason: str = ""                                # why it waits
    created_at: float = field(default_factory=time.time)

    def row(self) -> dict:
        return {"placement_group_id": self.pg_id.hex(), "name": self.name,
                "bundles": {i: dict(b) for i, b in enumerate(self.bundles)},
                "bundles_to_node_id": {i: n.hex() for i, n in enumerate(self.nodes) if n},
                "strategy": self.strategy, "state": self.state.upper(),
                "stats": {"reason": self.reason}, "owner": self.owner,
                "lifetime": "detached" if self.detached else "non_detached",
                "created_at": self.created_at}

    def on(self, node_id: bytes, among=None) -> list:
        """[(index, bundle)] of the bundles planned on ``node_id`` (of ``among``, if given)."""
        return [(i, b) for i, (b, n) in enumerate(zip(self.bundles, self.nodes))
                if n == node_id and (among is None or i in among)]


class GroupTable:
    def __init__(self):
        self.groups: dict[bytes, Group] = {}
        self._removed: list[bytes] = []

    def add(self, group: Group) -> str:
        """'' or why it cannot be added (a name taken by a live group)."""
        if group.name and any(g.name == group.name and g.state != "removed"
                              for g in self.groups.values()):
            return f"a placement group named {group.name!r} already exists"
        self.groups[group.pg_id] = group
        return ""

    def waiting(self) -> list[Group]:
        return [g for g in self.groups.values() if g.state in ("pending", "rescheduling")]

    def removed(self, group: Group) -> None:
        group.state = "removed"
        self._removed.append(group.pg_id)
        while len(self._removed) > REMOVED_KEPT:
            self.groups.pop(self._removed.pop(0), None)

    def by_name(self, name: str) -> Group | None:
        return next((g for g in self.groups.values() if g.name == name and
                     g.state != "removed"), None)


def plan(bundles: list, strategy: str, nodes: list) -> tuple[list | None, str]:
    """(a node id per bundle, "") or (None, why not now). ``nodes``: [(node id, total,
    available)] of the live nodes."""
    for i, b in enumerate(bundles):
        if not any(_fits(total, b) for _, total, _ in nodes):
            return None, (f"bundle {i} ({_describe(b)}) fits on no node (the nodes have "
                          f"{'; '.join(_describe(t) for _, t, _ in nodes) or 'nothing'}); "
                          f"it waits for a node that has")
    free = {nid: dict(avail) for nid, _, avail in nodes}
    order = sorted(range(len(bundles)), key=lambda i: -sum(bundles[i].values()))
    chosen: list = [None] * len(bundles)
    if strategy == "STRICT_PACK":
        need = _sum(bundles)
        fit = [nid for nid, _, avail in nodes if _fits(avail, need)]
        if not fit:
            return None, f"no node has {_describe(need)} free at once (STRICT_PACK)"
        best = max(fit, key=lambda nid: free[nid].get("CPU", 0.0))
        return [best] * len(bundles), ""
    used: dict = {}
    for i in order:
        b = bundles[i]
        fit = [nid for nid, _, _ in nodes if _fits(free[nid], b)]
        if strategy == "STRICT_SPREAD":
            fit = [nid for nid in fit if nid not in used]
        if not fit:
            return None, (f"bundle {i} ({_describe(b)}) has no node "
                          f"{'of its own ' if strategy == 'STRICT_SPREAD' else ''}with the "
                          f"resources free")
        if strategy == "PACK":      # where bundles already are, then the roomiest
            nid = max(fit, key=lambda n: (used.get(n, 0) > 0, free[n].get("CPU", 0.0)))
        else:                       # SPREAD, STRICT_SPREAD: the node with the fewest
            nid = min(fit, key=lambda n: (used.get(n, 0), -free[n].get("CPU", 0.0)))
        chosen[i] = nid
        used[nid] = used.get(nid, 0) + 1
        for k, v in b.items():
            free[nid][k] = free[nid].get(k, 0.0) - v
    return chosen, ""


def _fits(have: dict, need: dict) -> bool:
    return all(have.get(k, 0.0) >= v - 1e-9 for k, v in need.items() if v)


def _sum(bundles: list) -> dict:
    out: dict = {}
    for b in bundles:
        for k, v in b.items():
            out[k] = out.get(k, 0.0) + v
    return out


def _describe(resources: dict) -> str:
    from nbray.runtime.bundles import describe
    return describe(resources)
