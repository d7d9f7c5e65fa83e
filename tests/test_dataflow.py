"""Dataflow: refs as arguments (top-level and nested), chains, and tasks that submit tasks."""
from __future__ import annotations

import gc
import os
import time

import numpy as np
import pytest

import nbray

pytestmark = pytest.mark.timeout(60)


@nbray.remote
def kind_and_value(x):
    return type(x).__name__, x


@nbray.remote
def inc(x):
    return x + 1


@nbray.remote
def add(a, b):
    return a + b


@nbray.remote
def slow_value(seconds, value):
    time.sleep(seconds)
    return value


@nbray.remote
def get_nested(container):
    """Return what arrived and the values of the refs inside ``container``."""
    if isinstance(container, dict):
        refs = list(container.values())
    else:
        refs = list(container)
    kinds = [type(r).__name__ for r in refs]
    return kinds, nbray.get(refs)


@nbray.remote
def leaf(i):
    time.sleep(0.02)
    return i


@nbray.remote
def parent(i, k):
    children = [leaf.remote(i * 100 + j) for j in range(k)]
    return sum(nbray.get(children))


@nbray.remote
def tree(depth, fanout):
    if depth == 0:
        return 1
    return sum(nbray.get([tree.remote(depth - 1, fanout) for _ in range(fanout)]))


# ---- refs as arguments ---------------------------------------------------------------------------
def test_top_level_ref_is_resolved_to_its_value(any_cluster):
    assert nbray.get(kind_and_value.remote(nbray.put(41))) == ("int", 41)
    assert nbray.get(kind_and_value.remote(inc.remote(41))) == ("int", 42)


def test_top_level_ref_in_kwargs_is_resolved(any_cluster):
    a, b = nbray.put(1), inc.remote(1)
    assert nbray.get(add.remote(a=a, b=b)) == 3
    assert nbray.get(add.remote(a, b=b)) == 3


def test_same_ref_twice_as_argument(any_cluster):
    r = inc.remote(4)
    assert nbray.get(add.remote(r, r)) == 10


def test_ref_nested_in_list_arrives_as_object_ref(any_cluster):
    refs = [nbray.put("a"), inc.remote(1), slow_value.remote(0.2, "late")]
    kinds, values = nbray.get(get_nested.remote(refs))
    assert kinds == ["ObjectRef"] * 3
    assert values == ["a", 2, "late"]


def test_ref_nested_in_dict_and_tuple(any_cluster):
    d = {"x": nbray.put(1), "y": inc.remote(2)}
    assert nbray.get(get_nested.remote(d)) == (["ObjectRef", "ObjectRef"], [1, 3])
    t = (nbray.put(5),)
    assert nbray.get(get_nested.remote(t)) == (["ObjectRef"], [5])


def test_nested_ref_outlives_the_drivers_ref(any_cluster):
    """The driver drops its ref right after submitting: the task still gets the value."""
    inner = nbray.put(np.arange(300_000))          # large: lives in shared memory
    out = get_nested.remote([inner, slow_value.remote(0.3, 0)])
    del inner
    gc.collect()
    kinds, values = nbray.get(out)
    assert kinds == ["ObjectRef", "ObjectRef"]
    assert np.array_equal(values[0], np.arange(300_000))


def test_top_level_large_ref_resolved(any_cluster):
    arr = np.arange(1_000_000, dtype=np.int64)
    ref = nbray.put(arr)

    @nbray.remote
    def total(a):
        return type(a).__name__, int(a.sum())

    assert nbray.get(total.remote(ref)) == ("ndarray", int(arr.sum()))


def test_ref_returned_inside_a_value(any_cluster):
    @nbray.remote
    def make_refs(n):
        return [nbray.put(i * 10) for i in range(n)] + [nbray.put(np.full(200_000, 3.0))]

    refs = nbray.get(make_refs.remote(3))
    assert all(isinstance(r, nbray.ObjectRef) for r in refs)
    values = nbray.get(refs)
    assert values[:3] == [0, 10, 20]
    assert float(values[3].sum()) == 600_000.0
    # a worker-owned ref handed to another task
    assert nbray.get(get_nested.remote(refs[:3])) == (["ObjectRef"] * 3, [0, 10, 20])
    assert nbray.get(inc.remote(refs[1])) == 11


def test_ref_forwarded_through_two_tasks(any_cluster):
    @nbray.remote
    def forward(container):
        return nbray.get(get_nested.remote(container))

    r = slow_value.remote(0.1, "deep")
    assert nbray.get(forward.remote([r])) == (["ObjectRef"], ["deep"])


# ---- chains --------------------------------------------------------------------------------------
def test_chain_of_dependent_tasks(any_cluster):
    ref = nbray.put(0)
    for _ in range(50):
        ref = inc.remote(ref)
    assert nbray.get(ref) == 50


def test_diamond_and_fan_in(any_cluster):
    root = inc.remote(0)                           # 1
    left, right = inc.remote(root), add.remote(root, 10)
    assert nbray.get(add.remote(left, right)) == 2 + 11

    @nbray.remote
    def total(*xs):
        return sum(xs)

    parts = [inc.remote(i) for i in range(20)]
    assert nbray.get(total.remote(*parts)) == sum(range(1, 21))


def test_chain_waits_for_slow_input(any_cluster):
    first = slow_value.remote(0.3, 5)
    t0 = time.monotonic()
    last = inc.remote(inc.remote(first))
    assert time.monotonic() - t0 < 0.3
    assert nbray.get(last) == 7


# ---- tasks that submit tasks ---------------------------------------------------------------------
def test_task_submits_and_gets_subtasks(any_cluster):
    assert nbray.get(parent.remote(1, 3)) == 100 + 101 + 102


@pytest.mark.timeout(150)
def test_dynamic_nested_tree(any_cluster):
    # 7 of its 15 tasks wait for their children: on Ray each of them has a new worker started
    # for it, a few seconds each when the machine is loaded
    assert nbray.get(tree.remote(3, 2), timeout=120) == 8


def test_dynamic_nested_chain_inside_task(any_cluster):
    @nbray.remote
    def chain_in_task(n):
        r = nbray.put(0)
        for _ in range(n):
            r = inc.remote(r)
        return nbray.get(r)

    assert nbray.get(chain_in_task.remote(20), timeout=30) == 20


def test_more_nested_tasks_than_workers_do_not_deadlock(any_cluster):
    """4 parents each waiting on 4 children, with 2 workers: blocked parents lend their CPUs."""
    refs = [parent.remote(i, 4) for i in range(4)]
    expected = [sum(i * 100 + j for j in range(4)) for i in range(4)]
    assert nbray.get(refs, timeout=45) == expected


def test_nested_tasks_then_flat_tasks(any_cluster):
    """After nested work the cluster still serves plain tasks on its workers."""
    assert nbray.get([parent.remote(i, 2) for i in range(3)], timeout=45) == \
        [sum(i * 100 + j for j in range(2)) for i in range(3)]
    pids = nbray.get([nbray.remote(os.getpid).remote() for _ in range(4)])
    assert all(isinstance(p, int) for p in pids)
