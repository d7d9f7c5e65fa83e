"""Resource accounting and lease decisions of one node. Pure: no sockets, no processes.

A lease hands one worker, with the resources a task shape asks for, to one client until it gives
the worker back. Requests are served first come, first served among those that fit; a request for
more than the node has at all is infeasible and said so at once.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass

from nbray.runtime import bundles as B


@dataclass(eq=False)
class LeaseRequest:
    peer: tuple
    request_id: int
    resources: dict             # must be free to grant it
    actor: bool = False
    hold: dict | None = None    # held while the lease lasts (None: ``resources``)
    client_node: bytes = b""    # the node of the client that asks
    placed: str = ""            # why the global scheduler sent it here ("": it was kept)

    @property
    def held(self) -> dict:
        return self.resources if self.hold is None else self.hold


class LocalScheduler:
    def __init__(self, resources: dict):
        self.total = {k: float(v) for k, v in resources.items()}
        self.available = dict(self.total)
        self.queue: collections.deque[LeaseRequest] = collections.deque()
        #: placement group id -> {bundle index: (its resources, committed?)} of those here
        self.groups: dict[bytes, dict] = {}
        self.removed_groups: set[str] = set()      # hex ids: what asks for them fails

    def removed(self, resources: dict) -> str | None:
        """Why no node will ever serve it (a placement group it asks for was removed)."""
        if self.removed_groups:
            for name in resources:
                if B.is_group_resource(name) and B.group_of(name) in self.removed_groups:
                    return f"placement group {B.group_of(name)} was removed"
        return None

    def infeasible(self, resources: dict) -> str | None:
        """Why this node can never serve the request, or None if it can."""
        for name, amount in resources.items():
            if amount < 0:
                return f"resource {name!r} asked for a negative amount ({amount})"
            if name.startswith(B.NODE_PREFIX) and name not in self.total:
                return (f"it must run on node {name[len(B.NODE_PREFIX):]} (hard node "
                        f"affinity), which is not this one")
            if amount > self.total.get(name, 0.0) and not B.is_group_resource(name):
                # (a placement group's resources exist once it is created: the request
                # waits for that)
                have = self.total.get(name, 0.0)
                return (f"no node can provide {name}={amount:g} (this node has {have:g}); "
                        f"the task cannot be scheduled")
        return None

    def fits(self, resources: dict) -> bool:
        return all(self.available.get(k, 0.0) >= v for k, v in resources.items())

    def fits_behind_queue(self, resources: dict) -> bool:
        """Whether it would fit once the requests already queued are granted."""
        avail = dict(self.available)
        for req in self.queue:
            for k, v in req.resources.items():
                avail[k] = avail.get(k, 0.0) - v
        return all(avail.get(k, 0.0) >= v for k, v in resources.items())

    def grantable_together(self) -> int:
        """How many of the queued requests what is free now serves at once, oldest first (each
        that fits takes its share: two waiting for one free CPU count as one)."""
        avail, n = dict(self.available), 0
        for req in self.queue:
            if all(avail.get(k, 0.0) >= v for k, v in req.resources.items()):
                n += 1
                for k, v in req.resources.items():
                    avail[k] = avail.get(k, 0.0) - v
        return n

    def acquire(self, resources: dict) -> None:
        for k, v in resources.items():
            if k in self.total:         # (a removed placement group's are gone)
                self.available[k] = self.available.get(k, 0.0) - v

    def release(self, resources: dict) -> None:
        for k, v in resources.items():
            if k in self.total:         # (a removed placement group's are gone)
                self.available[k] = self.available.get(k, 0.0) + v

    def next_grantable(self) -> LeaseRequest | None:
        """The oldest queued request that fits what is free now (it stays queued)."""
        for req in self.queue:
            if self.fits(req.resources):
                return req
        return None

    def drop_peer(self, peer) -> None:
        self.queue = collections.deque(r for r in self.queue if r.peer != peer)

    # ---- placement groups' bundles -------------------------------------------------------
    def prepare(self, pg_id: bytes, bundles: list) -> str:
        """Set aside the resources of these bundles; '' or why it cannot now."""
        have = self.groups.setdefault(pg_id, {})
        new = [(i, b) for i, b in bundles if i not in have]
        need: dict = {}
        for _, b in new:
            B.add(need, b)
        short = {k: v for k, v in need.items() if self.available.get(k, 0.0) < v - 1e-9}
        if short:
            if not have:
                del self.groups[pg_id]
            return "not free here: " + ", ".join(
                f"{k}={v:g} (free {self.available.get(k, 0.0):g})" for k, v in short.items())
        self.acquire(need)
        for i, b in new:
            have[i] = (b, False)
        return ""

    def commit(self, pg_id: bytes) -> None:
        """The group's prepared bundles' resources exist here now."""
        for i, (b, committed) in list(self.groups.get(pg_id, {}).items()):
            if not committed:
                self.groups[pg_id][i] = (b, True)
                extra = B.group_resources(pg_id.hex(), i, b)
                B.add(self.total, extra)
                B.add(self.available, extra)

    def release_group(self, pg_id: bytes, indices: tuple = ()) -> set:
        """The group's bundles here (those of ``indices``, if any) go: their resources go,
        what they set aside comes back. Returns the names that went (a worker holding one
        ran in the group)."""
        have = self.groups.get(pg_id, {})
        gone: set = set()
        for i in [i for i in have if not indices or i in indices]:
            b, committed = have.pop(i)
            if committed:
                extra = B.group_resources(pg_id.hex(), i, b)
                gone.update(k for k in extra if f"_group_{i}_" in k)
                B.add(self.total, extra, -1.0)      # the group-wide names: its share
                B.add(self.available, extra, -1.0)
            self.release(b)
        if not have:
            self.groups.pop(pg_id, None)
        return gone
