"""Group scheduling's plan: which node each task of a group (and each reducer actor) should run
on. Pure: no sockets; the cluster is a list of ``(node id hex, CPUs)``.

- A group with no placed input (a ``Broadcast``, or a ``Map`` over plain refs) is spread over
  the cluster's CPUs in blocks: output ``i`` of ``n`` goes to CPU slot ``i * slots // n``, so
  neighbouring outputs share a node and every node gets its share of the work.
- A one-to-one group edge (a ``Map`` over a ``Map`` or a ``Broadcast``): task ``i`` runs where
  its input ``i`` was made, so its bytes do not move.
- An all-to-all edge (a shuffle into reducers): reducer ``r`` reads part ``r`` of every input;
  it goes to the node making most of those parts (by count; ties spread the reducers in blocks).
- Reducers whose inputs are spread (input ``i`` to reducer ``i % R``) go to the node making most
  of their inputs.
"""
from __future__ import annotations

import collections


def slots(nodes: list[tuple[str, float]]) -> list[str]:
    """One entry per CPU of each node (at least one per node), nodes in a stable order."""
    out: list[str] = []
    for node_id, cpus in sorted(nodes):
        out += [node_id] * max(1, int(cpus))
    return out


def spread(n: int, nodes: list[tuple[str, float]]) -> list[str]:
    """Nodes for ``n`` tasks with nothing to follow: blocks over the CPU slots."""
    s = slots(nodes)
    if not s:
        return [""] * n
    return [s[i * len(s) // n] for i in range(n)] if n else []


def follow(upstream: list[str]) -> list[str]:
    """A one-to-one edge: each task where its input was made."""
    return list(upstream)


def reducers_for_shuffle(num_reducers: int, upstream: list[str],
                         nodes: list[tuple[str, float]]) -> list[str]:
    """Reducer ``r`` reads part ``r`` of every input, made on ``upstream[i]``: the node
    making the most inputs; where several tie, the reducers are spread over them in blocks."""
    counts = collections.Counter(u for u in upstream if u)
    if not counts:
        return spread(num_reducers, nodes)
    top = max(counts.values())
    best = sorted(n for n, c in counts.items() if c == top)
    if len(best) == 1:
        return best * num_reducers
    tied = [(n, c) for n, c in nodes if n in best] or [(n, 1.0) for n in best]
    return spread(num_reducers, tied)


def reducers_for_spread(num_reducers: int, upstream: list[str],
                        nodes: list[tuple[str, float]]) -> list[str]:
    """Input ``i`` goes to reducer ``i % R``: each reducer where most of its inputs are made."""
    fallback = spread(num_reducers, nodes)
    out = []
    for r in range(num_reducers):
        mine = collections.Counter(u for i, u in enumerate(upstream)
                                   if i % num_reducers == r and u)
        out.append(max(sorted(mine), key=lambda n: mine[n]) if mine else fallback[r])
    return out
