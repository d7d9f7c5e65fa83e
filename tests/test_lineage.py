"""Lineage reconstruction: a lost object is made again by re-running the tasks that made it,
its lost inputs first; what cannot be rebuilt is a clear ObjectLostError saying why.

Objects are lost for real: their shared-memory segment is unlinked under them, or the node
holding them is SIGKILLed."""
from __future__ import annotations

import os

import numpy as np
import pytest

import nbray
from nbray.runtime import object_store
from conftest import wait_until
from test_multinode import MultiNode, _kill_node, _wait_nodes, multi  # noqa: F401

pytestmark = pytest.mark.timeout(120)

N = 1_000_000          # 8 MB arrays: shared memory, not inline


@nbray.remote
def make(n, seed):
    return np.random.default_rng(seed).random(n)


@nbray.remote
def plus(a, k):
    return a + k


@nbray.remote
def total(a):
    return float(a.sum())


def _drop_segment(cluster, ref) -> None:
    path = object_store.segment_path(cluster.session, ref.binary())
    assert os.path.exists(path)
    os.unlink(path)


# ---- one node: segments that vanish --------------------------------------------------------------
def test_a_result_whose_segment_vanished_is_rebuilt_on_get(cluster):
    ref = make.remote(N, 1)
    expected = nbray.get(ref).copy()
    _drop_segment(cluster, ref)
    again = nbray.get(ref, timeout=30)
    assert np.array_equal(again, expected)
    assert cluster.client.stats["rebuilt"] == 1


def test_an_input_whose_segment_vanished_is_rebuilt_for_its_task(cluster):
    a = make.remote(N, 2)
    expected = float(nbray.get(a).sum()) + 3 * N
    _drop_segment(cluster, a)
    assert nbray.get(total.remote(plus.remote(a, 3)), timeout=30) == pytest.approx(expected)
    assert cluster.client.stats["rebuilt"] >= 1


def test_a_put_object_cannot_be_rebuilt_and_says_so(cluster):
    ref = nbray.put(np.ones(N))
    _drop_segment(cluster, ref)
    with pytest.raises(nbray.ObjectLostError, match="segment .* is gone"):
        nbray.get(ref, timeout=10)
    with pytest.raises(nbray.ObjectLostError):
        nbray.get(total.remote(ref), timeout=10)


def test_a_task_without_retries_cannot_be_rebuilt(cluster):
    ref = make.options(max_retries=0).remote(N, 3)
    nbray.wait([ref], timeout=30)
    _drop_segment(cluster, ref)
    with pytest.raises(nbray.ObjectLostError, match="no retries left"):
        nbray.get(ref, timeout=10)


def test_lineage_is_freed_with_the_objects(cluster):
    refs = [plus.remote(make.remote(1000, i), 1) for i in range(50)]
    nbray.get(refs)
    assert len(cluster.client.lineage.tasks) >= 50
    del refs
    wait_until(lambda: not cluster.client.lineage.tasks and not cluster.client.lineage.needed,
               10, "the lineage to go with the objects")


# ---- several nodes: a node dies with the only copies ---------------------------------------------
def test_a_lineage_three_levels_deep_whose_every_object_is_lost(multi):
    multi.start(num_workers=1)
    first = multi.add_node(num_workers=1, resources={"far": 1})
    nbray.init(address=multi.address)
    _wait_nodes(2)
    a = make.options(resources={"far": 1}).remote(N, 7)
    b = plus.options(resources={"far": 1}).remote(a, 1)
    c = plus.options(resources={"far": 1}).remote(b, 1)
    expected = nbray.get(c).copy()
    del a, b                          # freed: only their lineage remains, for c's sake
    client = nbray.runtime.core_client.current()
    second = multi.add_node(num_workers=1, resources={"far": 1})
    _wait_nodes(3)
    _kill_node(first)
    wait_until(lambda: nbray.state.nodes({"state": "dead"}), 15, "the node to be declared dead")
    again = nbray.get(c, timeout=60)          # c, then b and a before it, run again
    assert np.array_equal(again, expected)
    assert client.stats["rebuilt"] == 3
    where = nbray.get(make.options(resources={"far": 1}).remote(1, 0))
    assert where.shape == (1,)
    assert {n["pid"] for n in nbray.state.nodes({"state": "alive"})} >= {second}


# Regression (found by the benchmark's chain of 1,000): freeing the end of a long chain
# released its lineage recursively, past Python's recursion limit
def test_the_lineage_of_a_long_chain_is_freed(cluster):
    @nbray.remote
    def step(x):
        return x + 1

    ref = step.remote(0)
    for _ in range(2000):
        ref = step.remote(ref)
    assert nbray.get(ref, timeout=60) == 2001
    assert len(cluster.client.lineage.tasks) > 2000
    del ref
    wait_until(lambda: not cluster.client.lineage.tasks, 10, "the chain's lineage to go")


def test_a_borrower_whose_copy_vanished_has_the_owner_rebuild_it(cluster):
    @nbray.remote
    def read_nested(refs):
        return float(nbray.get(refs[0]).sum())      # a borrower of the driver's object

    a = make.remote(N, 9)
    expected = float(nbray.get(a).sum())
    _drop_segment(cluster, a)
    assert nbray.get(read_nested.remote([a]), timeout=30) == pytest.approx(expected)
    assert cluster.client.stats["rebuilt"] == 1
