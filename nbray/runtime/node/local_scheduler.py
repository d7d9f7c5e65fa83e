"""Resource accounting and lease decisions of one node. Pure: no sockets, no processes.

A lease hands one worker, with the resources a task shape asks for, to one client until it gives
the worker back. Requests are served first come, first served among those that fit; a request for
more than the node has at all is infeasible and said so at once.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass


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

    def infeasible(self, resources: dict) -> str | None:
        """Why this node can never serve the request, or None if it can."""
        for name, amount in resources.items():
            if amount < 0:
                return f"resource {name!r} asked for a negative amount ({amount})"
            if amount > self.total.get(name, 0.0):
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
            self.available[k] = self.available.get(k, 0.0) - v

    def release(self, resources: dict) -> None:
        for k, v in resources.items():
            self.available[k] = self.available.get(k, 0.0) + v

    def next_grantable(self) -> LeaseRequest | None:
        """The oldest queued request that fits what is free now (it stays queued)."""
        for req in self.queue:
            if self.fits(req.resources):
                return req
        return None

    def drop_peer(self, peer) -> None:
        self.queue = collections.deque(r for r in self.queue if r.peer != peer)
