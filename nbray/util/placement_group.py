"""Placement groups: resources reserved across the cluster's nodes as bundles, for tasks and
actors to run in together (a learner with its rollout workers, a stage of a pipeline per node).

    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="SPREAD")
    pg.wait(10)
    f.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0)).remote()

The head plans where the bundles go (``runtime/head/placement_groups.py``) and the nodes set
their resources aside; a task in a bundle asks for the bundle's resources by name
(``runtime/bundles.py``), so it runs where the bundle is and counts against it. A group no
node can hold waits, with a warning naming the bundle; one whose resources are busy waits for
them. A group goes when its creator does (``lifetime="detached"``: when removed), and
removing it ends the tasks and actors running in it.
"""
from __future__ import annotations

import logging
import os

from nbray.runtime import bundles as B, protocol as P
from nbray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

log = logging.getLogger("nbray")
STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


class PlacementGroupID:
    __slots__ = ("_id",)

    def __init__(self, pg_id: bytes):
        self._id = pg_id

    def binary(self) -> bytes:
        return self._id

    def hex(self) -> str:
        return self._id.hex()

    def __eq__(self, other) -> bool:
        return isinstance(other, PlacementGroupID) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __repr__(self) -> str:
        return f"PlacementGroupID({self._id.hex()})"


class PlacementGroup:
    """A handle to a placement group; it pickles, so tasks and actors can use it too."""

    def __init__(self, pg_id: bytes, bundles: list | None = None, strategy: str = "",
                 name: str = ""):
        self.id = PlacementGroupID(pg_id)
        self._bundles = bundles
        self._ready_ref = None
        self.strategy, self.name = strategy, name

    @property
    def bundle_specs(self) -> list[dict]:
        if self._bundles is None:       # a handle rebuilt from its id alone: ask the head
            row = _table_row(self.id.hex())
            self._bundles = [row["bundles"][i] for i in sorted(row["bundles"])]
            self.strategy, self.name = row["strategy"], row["name"]
        return [dict(b) for b in self._bundles]

    @property
    def bundle_count(self) -> int:
        return len(self.bundle_specs)

    @property
    def is_empty(self) -> bool:
        return self.bundle_count == 0

    def ready(self):
        """A ref whose value is this group, once its bundles are reserved (one task a handle
        waits for that, however often it is asked)."""
        from nbray.remote_function import RemoteFunction
        if self._ready_ref is None:
            marker = f"{B.MARKER}_group_{self.id.hex()}"
            self._ready_ref = RemoteFunction(_ready, {
                "num_cpus": 0, "resources": {marker: B.MARKER_SLIVER}, "max_retries": -1,
                "name": "placement_group.ready",
                "scheduling_strategy": "DEFAULT"}).remote(self)   # never in a captured group
        return self._ready_ref

    def wait(self, timeout_seconds: float = 30) -> bool:
        """Whether the group was reserved within ``timeout_seconds`` (False for a group
        that was removed)."""
        from nbray import api
        from nbray.errors import NbrayError
        ready, _ = api.wait([self.ready()], timeout=timeout_seconds)
        if not ready:
            return False
        try:
            api.get(ready[0])
        except NbrayError:
            return False
        return True

    def __eq__(self, other) -> bool:
        return isinstance(other, PlacementGroup) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __reduce__(self):
        return (PlacementGroup, (self.id.binary(), self._bundles, self.strategy, self.name))

    def __repr__(self) -> str:
        return f"PlacementGroup({self.id.hex()}" + (f", {self.name!r}" if self.name else "") + ")"


def _ready(pg):
    return pg


def placement_group(bundles, strategy: str = "PACK", name: str = "",
                    lifetime: str | None = None) -> PlacementGroup:
    """Reserve ``bundles`` (a list of ``{resource: amount}``) by ``strategy``: ``"PACK"`` (as
    few nodes as possible), ``"SPREAD"`` (as many), ``"STRICT_PACK"`` (one node),
    ``"STRICT_SPREAD"`` (a node each). Returns at once; ``pg.ready()``/``pg.wait()`` tell
    when it is reserved."""
    from nbray import api
    bundles = _check_bundles(bundles)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {name!r}")
    if lifetime not in (None, "detached"):
        raise ValueError(f"lifetime must be None or 'detached', got {lifetime!r}")
    client = api._client()
    pg_id = os.urandom(14)
    answer = _request(client, lambda r: P.CreatePlacementGroup(
        r, pg_id, bundles, strategy, name, client.address, lifetime == "detached"))
    if "fits on no node" in (answer.get("reason") or ""):
        log.warning("nbray: placement group %s cannot be reserved yet: %s",
                    name or pg_id.hex(), answer["reason"])
    return PlacementGroup(pg_id, bundles, strategy, name)


def _check_bundles(bundles) -> list[dict]:
    if not isinstance(bundles, (list, tuple)) or not bundles:
        raise ValueError("bundles must be a non-empty list of {resource: amount} dicts")
    out = []
    for i, b in enumerate(bundles):
        if not isinstance(b, dict) or not b:
            raise ValueError(f"bundle {i} must be a non-empty dict of resource -> amount, "
                             f"got {b!r}")
        for k, v in b.items():
            if not isinstance(k, str) or isinstance(v, bool) or \
                    not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"bundle {i}: {k!r} must map to an amount >= 0, got {v!r}")
            if B.is_group_resource(k):
                raise ValueError(f"bundle {i}: {k!r} names a placement group's resource")
        if not any(b.values()):
            raise ValueError(f"bundle {i} asks for nothing: {b!r}")
        out.append({k: float(v) for k, v in b.items() if v})
    return out


def remove_placement_group(placement_group: PlacementGroup) -> None:
    """Give the group's resources back; the tasks and actors running in it are ended."""
    from nbray import api
    if not isinstance(placement_group, PlacementGroup):
        raise TypeError(f"remove_placement_group takes a PlacementGroup, got "
                        f"{type(placement_group).__name__}")
    _request(api._client(), lambda r: P.RemovePlacementGroup(r, placement_group.id.binary()))


def get_placement_group(placement_group_name: str) -> PlacementGroup:
    """The live group of that name; ``ValueError`` if there is none."""
    from nbray import api
    if not isinstance(placement_group_name, str) or not placement_group_name:
        raise TypeError(f"get_placement_group takes a group's name, got "
                        f"{placement_group_name!r}")
    rows = _request(api._client(), lambda r: P.ListPlacementGroups(r, placement_group_name))
    if not rows:
        raise ValueError(f"no placement group named {placement_group_name!r} exists")
    row = rows[0]
    return PlacementGroup(bytes.fromhex(row["placement_group_id"]),
                          [row["bundles"][i] for i in sorted(row["bundles"])],
                          row["strategy"], row["name"])


def placement_group_table(placement_group: PlacementGroup | None = None) -> dict:
    """Every group (or the one given): id -> its id, name, bundles, the node of each bundle,
    strategy and state (``PENDING``, ``CREATED``, ``RESCHEDULING``, ``REMOVED``)."""
    from nbray import api
    rows = _request(api._client(), lambda r: P.ListPlacementGroups(r))
    table = {row["placement_group_id"]: row for row in rows}
    if placement_group is not None:
        return table.get(placement_group.id.hex(), {})
    return table


def get_current_placement_group() -> PlacementGroup | None:
    """The group the calling task or actor runs in, when it captures its child tasks."""
    from nbray.runtime import core_client
    client = core_client.current()
    group = getattr(client, "capture_pg", None)
    return PlacementGroup(bytes.fromhex(group[0])) if group else None


def _table_row(pg_hex: str) -> dict:
    row = placement_group_table().get(pg_hex)
    if row is None:
        raise ValueError(f"no placement group {pg_hex}")
    return row


def _request(client, make):
    from nbray.errors import ClusterError
    try:
        return client.request(client.head_address, make)
    except ClusterError as e:
        if "already exists" in str(e) or "no placement group" in str(e):
            raise ValueError(str(e)) from None
        raise


__all__ = ["PlacementGroup", "PlacementGroupID", "placement_group", "remove_placement_group",
           "get_placement_group", "placement_group_table", "get_current_placement_group",
           "PlacementGroupSchedulingStrategy"]
