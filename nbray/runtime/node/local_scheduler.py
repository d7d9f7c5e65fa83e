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
        #: placement group id -> (its bundles here [(index, resources)], committed?)
        self.groups: dict[bytes, tuple[list, bool]] = {}

    def infeasible(self, resources: dict) -> str | None:
        """Why this node can never serve the request, or None if it can."""
        for name, amount in resources.items():
            if amount < 0:
                return f"resource {name!r} asked for a negative amount ({amount})"
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

    def acquire(self, resources: dict) -> None:
        for k, v in resources.items():
            if k in self.total:         # (a removed placement group's are gone)
                self.available[k] = self.available.get(k, 0.0) - v

    def release(self, resources: dict) -> None:
        for k, v in resources.items():
            if k in self.total:         # (a removed placement group's are gone)
                self.available[k] = self.available.get(k, 0.0) + v

    # ---- placement groups' bundles -------------------------------------------------------
    def prepare(self, pg_id: bytes, bundles: list) -> str:
        """Set aside the resources of these bundles; '' or why it cannot now."""
        need: dict = {}
        for _, b in bundles:
            B.add(need, b)
        if pg_id in self.groups:
            return ""
        short = {k: v for k, v in need.items() if self.available.get(k, 0.0) < v - 1e-9}
        if short:
            return "not free here: " + ", ".join(
                f"{k}={v:g} (free {self.available.get(k, 0.0):g})" for k, v in short.items())
        self.acquire(need)
        self.groups[pg_id] = (list(bundles), False)
        return ""

    def commit(self, pg_id: bytes) -> None:
        """The group's resources exist here now."""
        entry = self.groups.get(pg_id)
        if entry is None or entry[1]:
            return
        self.groups[pg_id] = (entry[0], True)
        for i, b in entry[0]:
            extra = B.group_resources(pg_id.hex(), i, b)
            B.add(self.total, extra)
            B.add(self.available, extra)

    def release_group(self, pg_id: bytes) -> set:
        """The group's resources go, what it set aside comes back; returns the names that
        went (the workers holding some of them are the group's)."""
        entry = self.groups.pop(pg_id, None)
        if entry is None:
            return set()
        bundles, committed = entry
        gone: set = set()
        for i, b in bundles:
            if committed:
                extra = B.group_resources(pg_id.hex(), i, b)
                gone.update(extra)
                for k in extra:
                    self.total.pop(k, None)
                    self.available.pop(k, None)
            self.release(b)
        return gone

    def next_grantable(self) -> LeaseRequest | None:
        """The oldest queued request that fits what is free now (it stays queued)."""
        for req in self.queue:
            if self.fits(req.resources):
                return req
        return None

    def drop_peer(self, peer) -> None:
        self.queue = collections.deque(r for r in self.queue if r.peer != peer)
