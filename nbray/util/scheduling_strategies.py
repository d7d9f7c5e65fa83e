"""Where a task or an actor should run, as Ray names it, through
``.options(scheduling_strategy=...)``:

- ``"DEFAULT"`` (or None): the hybrid scheduler decides;
- ``"SPREAD"``: this process's tasks of that function go to the live nodes in turn (soft: a
  node that cannot take one leaves it to the scheduler);
- ``NodeAffinitySchedulingStrategy(node_id, soft=True)``: that node if it can take it;
- ``PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=-1,
  placement_group_capture_child_tasks=None)``: in a bundle of a placement group
  (``nbray.util.placement_group``), which holds the resources it runs with.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True)
class NodeAffinitySchedulingStrategy:
    """Run on the node ``node_id`` (hex, as ``nbray.state.nodes()`` gives it). ``soft=True``:
    there if that node can take it, else where the scheduler would put it anyway (the node is
    full, dead, or lacks the resources). ``soft=False``: there only; while that node is busy
    it waits, and if the node is gone it waits with a warning (``get`` with a timeout raises
    ``GetTimeoutError``)."""
    node_id: str
    soft: bool = True

    def __post_init__(self):
        try:
            node = bytes.fromhex(self.node_id)
        except (TypeError, ValueError):
            raise ValueError(f"node_id must be a node id in hex (nbray.state.nodes()), got "
                             f"{self.node_id!r}") from None
        if not node:
            raise ValueError("node_id must not be empty")
        if not isinstance(self.soft, bool):
            raise TypeError(f"soft must be True or False, got {self.soft!r}")


@dataclass(frozen=True)
class PlacementGroupSchedulingStrategy:
    """Run in bundle ``placement_group_bundle_index`` of ``placement_group`` (-1: any of its
    bundles), with that bundle's resources. ``placement_group_capture_child_tasks=True``: the
    tasks it submits (and, for an actor, its methods submit) run in the group too, unless
    they say otherwise."""
    placement_group: object
    placement_group_bundle_index: int = -1
    placement_group_capture_child_tasks: bool | None = None

    def __post_init__(self):
        from nbray.util.placement_group import PlacementGroup
        pg = self.placement_group
        if not isinstance(pg, PlacementGroup):
            raise TypeError(f"placement_group must be a PlacementGroup "
                            f"(nbray.util.placement_group(...)), got {type(pg).__name__}")
        i = self.placement_group_bundle_index
        if isinstance(i, bool) or not isinstance(i, int) or not -1 <= i < pg.bundle_count:
            raise ValueError(f"placement_group_bundle_index must be -1 (any bundle) or a "
                             f"bundle's index, 0 to {pg.bundle_count - 1}, got {i!r}")


class Placement(NamedTuple):
    """What a strategy asks of the scheduler: a node to prefer (b"": none), the placement
    group bundle (pg id hex, index) to run in, whether to capture child tasks, spread, the
    resources it must ask for besides its own (hard node affinity)."""
    node: bytes = b""
    group: tuple | None = None
    capture: bool = False
    spread: bool = False
    extra: dict | None = None

    def resources(self, resources: dict, group: tuple | None = None) -> dict:
        """What a task (or an actor) of ``resources`` asks for under this placement, in
        ``group`` (default: its own)."""
        from nbray.runtime import bundles
        if self.extra:
            resources = {**resources, **self.extra}
        group = group or self.group
        return bundles.task_resources(resources, *group) if group else resources


NONE = Placement()


def resolve(strategy) -> Placement:
    """What ``scheduling_strategy`` asks for; raises for a strategy nbray does not know."""
    if strategy is None or strategy == "DEFAULT":
        return NONE
    if strategy == "SPREAD":
        return Placement(spread=True)
    if isinstance(strategy, NodeAffinitySchedulingStrategy):
        if strategy.soft:
            return Placement(node=bytes.fromhex(strategy.node_id))
        from nbray.runtime import bundles
        return Placement(extra={bundles.node_resource(strategy.node_id.lower()):
                                bundles.MARKER_SLIVER})
    if isinstance(strategy, PlacementGroupSchedulingStrategy):
        return Placement(group=(strategy.placement_group.id.hex(),
                                strategy.placement_group_bundle_index),
                         capture=bool(strategy.placement_group_capture_child_tasks))
    from nbray import backends
    if backends.engine is not None and type(strategy).__module__.startswith(
            f"{backends.engine.name}."):
        return NONE         # the engine's own strategy: its backend passes it on
    raise ValueError(f"scheduling_strategy must be None, 'DEFAULT', 'SPREAD', a "
                     f"NodeAffinitySchedulingStrategy or a PlacementGroupSchedulingStrategy, "
                     f"got {strategy!r}")

