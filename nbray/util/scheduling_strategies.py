"""Where a task or an actor should run, as Ray names it: ``f.options(scheduling_strategy=
NodeAffinitySchedulingStrategy(node_id, soft=True))``."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NodeAffinitySchedulingStrategy:
    """Run on the node ``node_id`` (hex, as ``nbray.state.nodes()`` gives it). ``soft=True``:
    there if that node can take it, else where the scheduler would put it anyway (the node is
    full, dead, or lacks the resources). Only soft affinity is supported."""
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
        if not self.soft:
            raise NotImplementedError("nbray supports soft node affinity only (soft=True): "
                                      "the task runs elsewhere when that node cannot take it")


def node_of(strategy) -> bytes:
    """The node a ``scheduling_strategy`` option asks for (b"" for none); raises for a
    strategy nbray does not know."""
    if strategy is None or strategy == "DEFAULT":
        return b""
    if isinstance(strategy, NodeAffinitySchedulingStrategy):
        return bytes.fromhex(strategy.node_id)
    raise ValueError(f"scheduling_strategy must be None, 'DEFAULT' or a "
                     f"NodeAffinitySchedulingStrategy, got {strategy!r}")
