"""Group scheduling of the dataflow IR on several nodes (each its own process): where its
tasks and reducer actors run, and node affinity of single tasks."""
from __future__ import annotations

import psutil
import pytest

import nbray
from nbray import dataflow as df
from nbray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from conftest import wait_until
from test_multinode import MultiNode, _wait_nodes, multi  # noqa: F401

pytestmark = pytest.mark.timeout(120)


@nbray.remote
def node_pid():
    import os
    return os.getppid()


def make(size, tag=0):
    return [tag] * size


def plus(x, k):
    return x + k


class Collector:
    def take(self, *parts):
        return sorted(parts)

    def pid(self):
        import os
        return os.getpid()


def test_group_scheduling_places_tasks_and_reducers_by_their_inputs(multi):
    multi.start(num_workers=2)
    other = multi.add_node(num_workers=2)
    nbray.init(address=multi.address)
    _wait_nodes(2)
    nodes = {n["pid"]: n["node_id"] for n in nbray.state.nodes()}
    pinned = node_pid.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        nodes[other]))
    # soft affinity: until the driver's node has heard of the other node, it runs at home
    wait_until(lambda: nbray.get(pinned.remote()) == other, 10,
               "a task pinned to the other node to run there")

    src = df.Broadcast(make, 4, 1000, 1)
    maps = df.Map(plus, src, args=[([i],) for i in range(4)])
    parts = df.Map(lambda xs: [xs[::2], xs[1::2]], maps, num_returns=2)
    actors = df.InitActors(Collector, 2)
    out = df.ReduceActors("take", actors, parts)
    results = nbray.get(out.eval())
    assert [len(r) for r in results] == [4, 4]
    assert sorted(src.nodes) == sorted([nodes[multi.head_node_pid]] * 2 + [nodes[other]] * 2)
    assert maps.nodes == src.nodes and parts.nodes == src.nodes     # one-to-one: followed
    assert sorted(actors.nodes) == sorted(set(src.nodes))           # reducers spread

    def ran_where_planned():
        rows = {t["task_id"]: t["node_id"] for t in nbray.state.tasks(pending=False)}
        want = {ref.hex()[:32]: node for node_list, refs in
                ((src.nodes, src.eval()), (maps.nodes, maps.eval()))
                for ref, node in zip(refs, node_list)}
        return all(rows.get(t) == n for t, n in want.items())
    wait_until(ran_where_planned, 10, "every task to have run on its planned node")
    pids = nbray.get([h.pid.remote() for h in actors.eval()])
    parents = {psutil.Process(p).ppid() for p in pids}
    assert parents == {multi.head_node_pid, other}
