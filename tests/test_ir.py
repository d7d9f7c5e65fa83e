"""The dataflow IR (``nbray.dataflow``) on a real cluster: what each node type computes,
semi-lazy evaluation, that every reducer receives exactly its partition of a shuffle, equal
results with and without group scheduling, and where group scheduling puts tasks and actors on
several nodes."""
from __future__ import annotations

import os

import pytest

import nbray
from nbray import dataflow as df
from nbray.dataflow import placement
from nbray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from conftest import wait_until

pytestmark = pytest.mark.timeout(120)


def make(size, tag=0):
    return [tag] * size


def numbered(i):
    return i


def tag_parts(x, parts):
    """Input x split into ``parts`` parts, each saying where it came from."""
    return [(x, p) for p in range(parts)]


def plus(x, k):
    return x + k


class Collector:
    def __init__(self, base=0):
        self.base = base
        self.seen = []

    def take(self, *parts):
        self.seen.extend(parts)
        return sorted(parts)

    def pid(self):
        return os.getpid()


@pytest.fixture(autouse=True)
def groups_on():
    df.set_group_scheduling(True)
    yield
    df.set_group_scheduling(True)


def test_broadcast_map_and_their_arguments(any_cluster):
    b = df.Broadcast(make, 3, 2, 7)
    assert nbray.get(b.eval()) == [[7, 7]] * 3
    m = df.Map(plus, df.Broadcast(numbered, 4, 5), args=[(i,) for i in range(4)])
    assert nbray.get(m.eval()) == [5, 6, 7, 8]
    assert m.edge == "one-to-one"
    plain = df.Map(plus, [nbray.put(1), nbray.put(2)], args=[10, 20])
    assert nbray.get(plain.eval()) == [11, 22]
    parts = df.Map(tag_parts, df.Broadcast(numbered, 2, 9), args=[(3,), (3,)], num_returns=3)
    out = parts.eval()
    assert len(out) == 2 and all(len(o) == 3 for o in out)
    assert nbray.get(out[1]) == [(9, 0), (9, 1), (9, 2)]


def test_bad_graphs_are_clear_errors(any_cluster):
    with pytest.raises(ValueError, match="at least one output"):
        df.Broadcast(make, 0, 1)
    with pytest.raises(ValueError, match="one entry per input"):
        df.Map(plus, df.Broadcast(numbered, 3, 1), args=[1, 2])
    with pytest.raises(ValueError, match="one entry per actor"):
        df.InitActors(Collector, 2, [(1,)])
    with pytest.raises(ValueError, match="split in 3 parts"):
        df.ReduceActors("take", df.InitActors(Collector, 3),
                        df.Map(tag_parts, df.Broadcast(numbered, 2, 1), args=[(2,)] * 2,
                               num_returns=2))
    with pytest.raises(TypeError, match="needs a class"):
        df.InitActors(len, 1)


def test_init_actors_takes_plain_and_remote_classes(any_cluster):
    plain = df.InitActors(Collector, 2, [(1,), (2,)]).eval()
    remote = df.InitActors(nbray.remote(Collector), 1).eval()
    assert len(plain) == 2 and len(remote) == 1
    assert nbray.get([h.take.remote(0) for h in plain + remote]) == [[0], [0], [0]]


@pytest.mark.parametrize("groups", [True, False])
def test_every_reducer_receives_exactly_its_partition(any_cluster, groups):
    n, r = 6, 3
    src = df.Broadcast(numbered, n, 0)
    ids = df.Map(plus, src, args=[(i,) for i in range(n)])          # 0 .. n-1
    parts = df.Map(tag_parts, ids, args=[(r,)] * n, num_returns=r)
    reducers = df.InitActors(Collector, r)
    out = df.ReduceActors("take", reducers, parts)
    assert out.edge == "all-to-all"
    got = nbray.get(out.eval(group_scheduling=groups))
    for k in range(r):
        assert got[k] == [(i, k) for i in range(n)]     # part k of every input, once each


def test_spread_inputs_go_round_robin(any_cluster):
    out = df.ReduceActors("take", df.InitActors(Collector, 2),
                          df.Map(plus, df.Broadcast(numbered, 5, 0), args=list(range(5))))
    assert out.edge == "spread"
    assert nbray.get(out.eval()) == [[0, 2, 4], [1, 3]]


# nbray only, for now: it counts the tasks in nbray.state.tasks()
def test_evaluation_is_semi_lazy_and_never_resubmits(module_cluster):
    src = df.Broadcast(numbered, 2, 1)
    m = df.Map(plus, src, args=[1, 2])
    assert not src.evaluated and not m.evaluated
    first = src.eval()
    assert src.evaluated and not m.evaluated            # only the subtree asked for
    out = m.eval()
    assert m.eval() is out and src.eval() is first      # evaluating again submits nothing
    assert nbray.get(out) == [2, 3]
    red = df.ReduceActors("take", df.InitActors(Collector, 1), m)
    assert nbray.get(red.eval()) == [[2, 3]]
    ids = {r.hex()[:32] for r in first + out}
    mine = wait_until(lambda: (lambda r: r if len(r) >= 4 else None)(
        [t for t in nbray.state.tasks(pending=False) if t["task_id"] in ids]), 10,
        "the records of the 4 tasks")
    assert len(mine) == 4                               # 2 sources and 2 maps, once each


@pytest.mark.parametrize("groups", [True, False])
def test_the_same_program_gives_the_same_results_either_way(any_cluster, groups):
    def program():
        src = df.Broadcast(make, 4, 3, 1)
        doubled = df.Map(lambda xs, k: [x * 2 + k for x in xs], src, args=[(i,) for i in
                                                                          range(4)])
        parts = df.Map(lambda xs: [xs[:1], xs[1:]], doubled, num_returns=2)
        return df.ReduceActors("take", df.InitActors(Collector, 2), parts)
    got = nbray.get(program().eval(group_scheduling=groups))
    assert got == [sorted([[2 + i] for i in range(4)]), sorted([[2 + i, 2 + i]
                                                                for i in range(4)])]


# nbray only: on Ray a group is no unit (each task leaves as it is submitted), so a get in it
# is allowed
def test_a_group_is_dispatched_when_it_ends(module_cluster):
    ok = nbray.remote(numbered)
    with nbray.util.group():
        refs = [ok.remote(i) for i in range(20)]
        with pytest.raises(RuntimeError, match="inside nbray.util.group"):
            nbray.get(refs[0])
        with pytest.raises(RuntimeError, match="inside nbray.util.group"):
            nbray.wait(refs)
    assert nbray.get(refs) == list(range(20))


def test_scheduling_strategy_options_are_checked(module_cluster):
    with pytest.raises(TypeError, match="soft"):
        NodeAffinitySchedulingStrategy(module_cluster.client.node_id.hex(), soft="no")
    with pytest.raises(ValueError, match="hex"):
        NodeAffinitySchedulingStrategy("not hex")
    with pytest.raises(ValueError, match="scheduling_strategy"):
        nbray.remote(numbered).options(scheduling_strategy="NEAREST")
    f = nbray.remote(numbered)
    for soft in (True, False):
        here = NodeAffinitySchedulingStrategy(module_cluster.client.node_id.hex(), soft=soft)
        assert nbray.get(f.options(scheduling_strategy=here).remote(3)) == 3
    assert nbray.get(f.options(scheduling_strategy="SPREAD").remote(4)) == 4
    assert "node:" not in "".join(nbray.cluster_resources())     # a node's own: not shown


def test_the_plan(any_cluster):
    nodes = [("b", 2.0), ("a", 2.0)]
    assert placement.slots(nodes) == ["a", "a", "b", "b"]
    assert placement.spread(4, nodes) == ["a", "a", "b", "b"]
    assert placement.spread(2, nodes) == ["a", "b"]
    assert placement.follow(["a", "b"]) == ["a", "b"]
    assert placement.reducers_for_shuffle(2, ["a", "a", "b", "b"], nodes) == ["a", "b"]
    assert placement.reducers_for_shuffle(2, ["a", "a", "a", "b"], nodes) == ["a", "a"]
    assert placement.reducers_for_spread(2, ["a", "b", "a", "b"], nodes) == ["a", "b"]
