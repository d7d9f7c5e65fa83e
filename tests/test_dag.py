"""The lazy DAG API (``nbray.dag``): ``bind``, ``InputNode``, ``MultiOutputNode``,
``execute``."""
from __future__ import annotations

import pytest

import nbray
from nbray.dag import InputNode, MultiOutputNode

pytestmark = pytest.mark.timeout(60)

calls = []


@nbray.remote
def double(x):
    return 2 * x


@nbray.remote
def combine(a, b, scale=1):
    return (a + b) * scale


@nbray.remote
def total(values):
    # nodes inside a list arrive as refs, not values (as refs nested in arguments do)
    return sum(nbray.get(v) if isinstance(v, nbray.ObjectRef) else v for v in values)


@nbray.remote
def pid():
    import os
    return os.getpid()


@nbray.remote
class Counter:
    def __init__(self, start):
        self.value = start

    def add(self, x):
        self.value += x
        return self.value

    def read(self):
        return self.value

    @nbray.method(num_returns=2)
    def pair(self):
        return self.value, -self.value


def test_function_dag_with_an_input_runs_once_per_execute(any_cluster):
    with InputNode() as x:
        dag = combine.bind(double.bind(x), double.bind(x), scale=10)
    ref = dag.execute(3)
    assert isinstance(ref, nbray.ObjectRef)
    assert nbray.get(ref) == 120
    assert nbray.get(dag.execute(5)) == 200           # the same graph, again
    assert nbray.get(double.bind(4).execute()) == 8   # no InputNode: no arguments


def test_input_node_is_indexable_by_position_and_keyword(any_cluster):
    x = InputNode()
    dag = combine.bind(x[0], x[1], scale=x.scale)
    assert nbray.get(dag.execute(1, 2, scale=3)) == 9
    dag2 = combine.bind(x["a"], x["b"])
    assert nbray.get(dag2.execute(a=4, b=5)) == 9


def test_nodes_inside_containers_and_shared_nodes(any_cluster):
    with InputNode() as x:
        shared = pid.bind()
        dag = MultiOutputNode([total.bind([double.bind(x), double.bind(1), 5]), shared,
                               total.bind([shared, shared]),
                               combine.bind(**{"a": {"k": double.bind(x)}["k"], "b": 1})])
    a, b, c, d = dag.execute(2)
    assert nbray.get(a) == 4 + 2 + 5 and nbray.get(d) == 5
    assert nbray.get(c) == 2 * nbray.get(b)            # one task for the shared node


def test_actor_dag_makes_a_new_actor_each_execution_and_calls_in_order(any_cluster):
    with InputNode() as x:
        counter = Counter.bind(x)
        first = counter.add.bind(1)
        second = counter.add.bind(first)                 # value 1 + start, then doubled
        dag = MultiOutputNode([first, second, counter.read.bind(), counter.pair.bind()])
    a, b, read, (p, n) = dag.execute(10)
    assert nbray.get([a, b, read, p, n]) == [11, 22, 22, 22, -22]
    a, *_ = dag.execute(100)
    assert nbray.get(a) == 101                           # a fresh actor
    handle = Counter.bind(7).execute()
    assert isinstance(handle, nbray.ActorHandle) and nbray.get(handle.read.remote()) == 7


# nbray only: on Ray a live handle is Ray's own, and its .bind makes a node of Ray's DAG API
def test_bind_on_a_live_actor_handle(module_cluster):
    live = Counter.remote(0)
    with InputNode() as x:
        dag = live.add.bind(double.bind(x))
    assert nbray.get(dag.execute(1)) == 2
    assert nbray.get(dag.execute(2)) == 6                # the same actor, its state kept


def test_dag_bad_inputs(any_cluster):
    with pytest.raises(ValueError, match="at most one InputNode"):
        combine.bind(InputNode(), InputNode()).execute(1)
    with pytest.raises(TypeError, match="no InputNode"):
        double.bind(1).execute(5)
    with InputNode() as x:
        dag = double.bind(x)
    with pytest.raises(ValueError, match="exactly one argument"):
        dag.execute(1, 2)
    with pytest.raises(ValueError, match="keyword argument 'k'"):
        double.bind(x.k).execute(j=1)
    with pytest.raises(TypeError, match="position or a keyword"):
        x[1.5]
    with pytest.raises(TypeError, match="non-empty list"):
        MultiOutputNode([])
    with pytest.raises(TypeError, match="cannot be sent"):
        nbray.get(double.remote(double.bind(1)))


def test_dag_runs_with_group_scheduling_off(any_cluster):
    from nbray import dataflow
    dataflow.set_group_scheduling(False)
    try:
        with InputNode() as x:
            dag = combine.bind(double.bind(x), 1)
        assert nbray.get(dag.execute(4)) == 9
    finally:
        dataflow.set_group_scheduling(True)
