"""How a placement group's bundles appear to the scheduler. Pure.

A committed bundle ``i`` of group ``G`` (hex id) on a node turns its resources into resources of
the group: ``{"CPU": 2}`` becomes ``CPU_group_i_G: 2`` (that bundle) and ``CPU_group_G: 2``
(any bundle of the group), plus ``bundle_group_i_G`` and ``bundle_group_G`` (1000 each), the
marker a task with no resources of its own asks a sliver of. The node set the bundle's own
resources aside when it was prepared. A task placed in the group asks for the group's names
instead of its own, so the schedulers, which know nothing of groups, put it on the node that
holds its bundle and count it against the bundle, never against the node's free resources.
"""
from __future__ import annotations

MARKER = "bundle"
MARKER_AMOUNT = 1000.0
MARKER_SLIVER = 0.001


def group_resources(pg_hex: str, index: int, bundle: dict) -> dict:
    """What committing bundle ``index`` of group ``pg_hex`` adds to its node."""
    out = {}
    for name, amount in {**bundle, MARKER: MARKER_AMOUNT}.items():
        out[f"{name}_group_{index}_{pg_hex}"] = float(amount)
        out[f"{name}_group_{pg_hex}"] = float(amount)
    return out


def task_resources(resources: dict, pg_hex: str, index: int) -> dict:
    """What a task (or an actor) of ``resources`` asks for in bundle ``index`` of the group
    (``-1``: any bundle)."""
    suffix = f"_group_{pg_hex}" if index < 0 else f"_group_{index}_{pg_hex}"
    out = {f"{name}{suffix}": float(v) for name, v in resources.items() if v}
    out[f"{MARKER}{suffix}"] = MARKER_SLIVER
    return out


#: each node has one of its own, which no other has: what a task with hard node affinity
#: asks a sliver of (never shown: ``visible``)
NODE_PREFIX = "node:"
NODE_AMOUNT = 1e9


def node_resource(node_id_hex: str) -> str:
    return NODE_PREFIX + node_id_hex


def visible(resources: dict) -> dict:
    """The resources to show a user: not the nodes' own."""
    return {k: v for k, v in resources.items() if not k.startswith(NODE_PREFIX)}


def describe(resources: dict) -> str:
    """``CPU=2, memory=16.5GB`` for messages: the nodes' own resources left out."""
    return ", ".join(f"{k}={v / 2**30:.1f}GB" if k == "memory" else f"{k}={v:g}"
                     for k, v in sorted(visible(resources).items()) if v) or "nothing"


def is_group_resource(name: str) -> bool:
    """A resource that exists once a placement group's bundle is committed."""
    return "_group_" in name


def group_of(name: str) -> str:
    """The placement group (hex id) a group resource belongs to."""
    return name.rsplit("_", 1)[1]


def add(total: dict, extra: dict, sign: float = 1.0) -> None:
    for k, v in extra.items():
        total[k] = total.get(k, 0.0) + sign * v
        if sign < 0 and total[k] <= 1e-9 and is_group_resource(k):
            del total[k]
