"""put/get: values of every size, zero-copy large arrays in shared memory, freeing."""
from __future__ import annotations

import gc
import os
import time

import numpy as np
import pytest

import nbray
from conftest import wait_until

pytestmark = pytest.mark.timeout(60)

MB = 1024 * 1024


@nbray.remote
def array_info(a):
    return {"type": type(a).__name__, "writeable": bool(a.flags.writeable),
            "sum": float(a.sum()), "shape": a.shape, "dtype": str(a.dtype)}


@nbray.remote
def nested_sum(lst, delay=0.0):
    time.sleep(delay)
    arr = nbray.get(lst[0])
    return bool(arr.flags.writeable), float(arr.sum())


@nbray.remote
def make_array(n, fill):
    return np.full(n, fill, dtype=np.float64)


@nbray.remote
def identity(x):
    return x


def big_array(nbytes=20 * MB, seed=0):
    return np.random.default_rng(seed).random(nbytes // 8)


# ---- small values --------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [
    0, -1, 2 ** 100, 3.5, float("inf"), "text", "ünïcødé", b"bytes", None, True,
    [1, [2, [3]]], (1, "a"), {"k": {"n": [None]}}, {1, 2, 3}, frozenset({4}), range(5),
    complex(1, 2), np.float32(1.5), np.arange(10),
])
def test_put_get_small_values(any_cluster, value):
    out = nbray.get(nbray.put(value))
    if isinstance(value, np.ndarray):
        assert np.array_equal(out, value)
    else:
        assert out == value and type(out) is type(value)


def test_small_put_is_inline_not_in_shared_memory(module_cluster):
    before = set(module_cluster.segments())
    ref = nbray.put(list(range(100)))
    assert nbray.get(ref) == list(range(100))
    assert not os.path.exists(module_cluster.segment_of(ref))
    assert set(module_cluster.segments()) <= before


def test_put_returns_object_ref(module_cluster):
    ref = nbray.put(1)
    assert isinstance(ref, nbray.ObjectRef)
    assert ref.owner_address == module_cluster.client.address


# ---- large values --------------------------------------------------------------------------------
def test_put_get_large_array_round_trip(module_cluster):
    arr = big_array()
    ref = nbray.put(arr)
    path = module_cluster.segment_of(ref)
    assert os.path.exists(path)
    assert os.path.getsize(path) >= arr.nbytes
    out = nbray.get(ref)
    assert out.dtype == arr.dtype and out.shape == arr.shape
    assert np.array_equal(out, arr)
    assert not out.flags.writeable          # a view of the shared pages, not a copy
    again = nbray.get(ref)
    assert np.array_equal(again, arr)


@pytest.mark.parametrize("make", [
    lambda: np.arange(3 * MB, dtype=np.int64).reshape(3, MB),
    lambda: np.asfortranarray(np.arange(600_000, dtype=np.float32).reshape(600, 1000)),
    lambda: np.arange(3_000_000, dtype=np.int32)[::3],          # not contiguous
    lambda: np.random.default_rng(1).random((50, 100, 100)).astype(np.float16),
    lambda: np.zeros(2 * MB, dtype=bool),
    lambda: np.array([(1, 2.0)] * 200_000, dtype=[("a", "i4"), ("b", "f8")]),
    lambda: np.array([str(i) for i in range(50_000)], dtype=object),
], ids=["int64-2d", "fortran", "strided", "float16-3d", "bool", "structured", "object"])
def test_large_array_layouts_round_trip(any_cluster, make):
    arr = make()
    out = nbray.get(nbray.put(arr))
    assert out.dtype == arr.dtype and out.shape == arr.shape
    assert np.array_equal(out, arr)
    out = nbray.get(identity.remote(arr))
    assert out.dtype == arr.dtype and out.shape == arr.shape
    assert np.array_equal(out, arr)


@pytest.mark.parametrize("value", [
    b"x" * (3 * MB),
    bytearray(b"y" * (3 * MB)),
    "z" * (3 * MB),
    {"a": np.ones(200_000), "b": [np.zeros(300_000, dtype=np.int8), "tail"]},
    [np.full(100_000, i) for i in range(5)],
], ids=["bytes", "bytearray", "str", "dict-of-arrays", "list-of-arrays"])
def test_large_non_array_values_round_trip(any_cluster, value):
    def same(a, b):
        if isinstance(a, np.ndarray):
            return np.array_equal(a, b)
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, list):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        # Ray gives a bytearray back as bytes
        return a == b and (type(a) is type(b) or any_cluster.ctx.backend == "ray")

    assert same(nbray.get(nbray.put(value)), value)
    assert same(nbray.get(identity.remote(value)), value)


def test_empty_and_scalar_arrays(any_cluster):
    for arr in (np.zeros((0,)), np.zeros((0, 5)), np.array(5.0)):
        out = nbray.get(nbray.put(arr))
        assert out.shape == arr.shape and np.array_equal(out, arr)


def test_large_array_passed_by_ref_arrives_read_only(any_cluster):
    arr = big_array(seed=2)
    ref = nbray.put(arr)
    info = nbray.get(array_info.remote(ref))
    assert info["type"] == "ndarray"
    assert info["writeable"] is False            # mapped from shared memory: zero copy
    assert info["shape"] == arr.shape and info["dtype"] == "float64"
    assert info["sum"] == pytest.approx(float(arr.sum()), rel=1e-12)


def test_large_array_nested_ref_arrives_read_only(any_cluster):
    arr = big_array(4 * MB, seed=3)
    writeable, total = nbray.get(nested_sum.remote([nbray.put(arr)]))
    assert writeable is False
    assert total == pytest.approx(float(arr.sum()), rel=1e-12)


# Regression (found by this suite in 3bb027a): a large array passed by value to .remote() is
# pickled inline into the task message (copied through the socket, ~25x slower than put) instead
# of going to shared memory; it arrives writeable
def test_large_array_passed_by_value_is_zero_copy(any_cluster):
    arr = big_array(seed=4)
    info = nbray.get(array_info.remote(arr))
    assert info["sum"] == pytest.approx(float(arr.sum()), rel=1e-12)
    assert info["writeable"] is False


def test_large_array_passed_by_value_is_correct(any_cluster):
    arr = big_array(seed=4)
    info = nbray.get(array_info.remote(arr))
    assert info["shape"] == arr.shape
    assert info["sum"] == pytest.approx(float(arr.sum()), rel=1e-12)


def test_task_returning_large_array(module_cluster):
    n = 20 * MB // 8
    ref = make_array.remote(n, 1.5)
    out = nbray.get(ref)
    assert out.shape == (n,) and out.dtype == np.float64
    assert not out.flags.writeable
    assert np.all(out == 1.5)
    assert os.path.exists(module_cluster.segment_of(ref))
    # and it feeds another task without a copy
    info = nbray.get(array_info.remote(ref))
    assert info["writeable"] is False and info["sum"] == 1.5 * n


# ---- freeing -------------------------------------------------------------------------------------
def test_deleting_put_ref_frees_segment(module_cluster):
    ref = nbray.put(big_array(seed=5))
    path = module_cluster.segment_of(ref)
    assert os.path.exists(path)
    del ref
    gc.collect()
    wait_until(lambda: not os.path.exists(path), 10, f"segment {path} to be unlinked")


def test_deleting_task_result_frees_segment(module_cluster):
    ref = make_array.remote(4 * MB // 8, 2.0)
    nbray.wait([ref], timeout=20)
    path = module_cluster.segment_of(ref)
    assert os.path.exists(path)
    del ref
    gc.collect()
    wait_until(lambda: not os.path.exists(path), 10, f"segment {path} to be unlinked")


def test_value_outlives_its_freed_segment(module_cluster):
    arr = big_array(8 * MB, seed=6)
    ref = nbray.put(arr)
    path = module_cluster.segment_of(ref)
    out = nbray.get(ref)
    del ref
    gc.collect()
    wait_until(lambda: not os.path.exists(path), 10, f"segment {path} to be unlinked")
    assert np.array_equal(out, arr)       # the mapping stays valid after unlink


def test_segment_kept_while_a_task_uses_it(module_cluster):
    arr = big_array(4 * MB, seed=7)
    ref = nbray.put(arr)
    path = module_cluster.segment_of(ref)
    out = nested_sum.remote([ref], 0.5)
    del ref                               # the pending task still holds it
    gc.collect()
    writeable, total = nbray.get(out)
    assert total == pytest.approx(float(arr.sum()), rel=1e-12)
    del out
    gc.collect()
    wait_until(lambda: not os.path.exists(path), 10, f"segment {path} to be unlinked")


def test_worker_owned_object_freed_when_driver_drops_it(module_cluster):
    @nbray.remote
    def make_inner():
        return [nbray.put(np.full(500_000, 7.0))]

    outer = make_inner.remote()
    inner = nbray.get(outer)[0]
    assert inner.owner_address != module_cluster.client.address    # a worker owns it
    path = module_cluster.segment_of(inner)
    assert os.path.exists(path)
    assert float(nbray.get(inner).sum()) == 3_500_000.0
    del outer, inner
    gc.collect()
    wait_until(lambda: not os.path.exists(path), 10, f"worker-owned segment {path} to be freed")


def test_repeated_large_puts_stay_flat(module_cluster):
    start = set(module_cluster.segments())
    for i in range(30):
        ref = nbray.put(np.full(MB // 4, i, dtype=np.float64))     # 2 MB each
        assert nbray.get(ref)[0] == i
        del ref
    gc.collect()
    wait_until(lambda: set(module_cluster.segments()) <= start, 10,
               "segments of deleted puts to be unlinked")
