"""Tasks: ``@nbray.remote``, ``.remote()``, ``.options()``, return values, option checking."""
from __future__ import annotations

import os
import time

import pytest

import nbray
from nbray.remote_function import RemoteFunction

pytestmark = pytest.mark.timeout(60)


@nbray.remote
def square(x):
    return x * x


@nbray.remote
def add(a, b=10, *, c=100):
    return a + b + c


@nbray.remote
def sleepy(seconds, value=None):
    time.sleep(seconds)
    return value


@nbray.remote(num_returns=2)
def divmod_task(a, b):
    return a // b, a % b


@nbray.remote
def pid():
    return os.getpid()


@nbray.remote
def echo(*args, **kwargs):
    return args, kwargs


# ---- submitting and getting ----------------------------------------------------------------------
def test_remote_returns_object_ref_immediately(any_cluster):
    t0 = time.monotonic()
    ref = sleepy.remote(1.0, "done")
    elapsed = time.monotonic() - t0
    assert isinstance(ref, nbray.ObjectRef)
    assert elapsed < 0.5, f".remote() blocked for {elapsed:.2f}s"
    ready, not_ready = nbray.wait([ref], timeout=0)
    assert ready == [] and not_ready == [ref]
    assert nbray.get(ref) == "done"


def test_remote_with_pending_dependency_returns_immediately(any_cluster):
    slow = sleepy.remote(1.0, 3)
    t0 = time.monotonic()
    ref = square.remote(slow)
    assert time.monotonic() - t0 < 0.5
    assert isinstance(ref, nbray.ObjectRef)
    assert nbray.get(ref) == 9


def test_get_single_ref(any_cluster):
    assert nbray.get(square.remote(7)) == 49


def test_get_list_of_refs_keeps_order(any_cluster):
    refs = [square.remote(i) for i in range(50)]
    assert nbray.get(refs) == [i * i for i in range(50)]


def test_get_tuple_and_empty_list(any_cluster):
    refs = (square.remote(2), square.remote(3))
    assert nbray.get(refs) == [4, 9]
    assert nbray.get([]) == []


def test_get_same_ref_again(any_cluster):
    ref = square.remote(5)
    assert nbray.get(ref) == 25
    assert nbray.get(ref) == 25          # getting again gives the value again
    assert nbray.get([ref]) == [25]


# Regression (found by this suite in 3bb027a): get() of a list holding the same ref twice never
# returns: _wait_values counts distinct ready ids against len(refs)
def test_get_same_ref_twice_in_list(any_cluster):
    ref = square.remote(5)
    assert nbray.get(ref) == 25                    # the value is there
    assert nbray.get([ref, ref], timeout=1) == [25, 25]


def test_refs_are_distinct_and_hashable(module_cluster):
    refs = [square.remote(1) for _ in range(10)]
    assert len(set(refs)) == 10
    assert all(len(r.binary()) == 20 and r.hex() == r.binary().hex() for r in refs)
    assert nbray.get(refs) == [1] * 10


def test_many_tasks_run_on_both_workers(module_cluster):
    @nbray.remote
    def slow_pid():
        time.sleep(0.2)
        return os.getpid()

    pids = set(nbray.get([slow_pid.remote() for _ in range(6)]))
    assert pids <= module_cluster.worker_pids()
    assert len(pids) == 2, f"expected both workers to run tasks, got pids {pids}"


def test_kwargs_and_defaults(any_cluster):
    assert nbray.get(add.remote(1)) == 111
    assert nbray.get(add.remote(1, 2)) == 103
    assert nbray.get(add.remote(1, b=2, c=3)) == 6
    assert nbray.get(add.remote(a=5, c=0)) == 15


def test_varargs_and_various_values(any_cluster):
    args = (1, "two", 3.0, None, [4, {"five": (6,)}], b"\x00seven", {8, 9})
    kwargs = {"k": {"nested": [1, 2, 3]}, "empty": ()}
    assert nbray.get(echo.remote(*args, **kwargs)) == (args, kwargs)
    assert nbray.get(echo.remote()) == ((), {})


def test_wrong_call_signature_is_a_type_error(any_cluster):
    with pytest.raises(TypeError) as info:
        nbray.get(square.remote(1, 2))      # Ray checks the signature at submit, nbray remotely
    assert any_cluster.ctx.backend == "ray" or isinstance(info.value, nbray.RemoteError)


class Point:
    """A class of this module, which the workers cannot import: it must travel by value."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def norm2(self):
        return self.x * self.x + self.y * self.y


@nbray.remote
def shifted(p):
    return Point(p.x + 1, p.y + 1)


# Regression: plain pickle, tried first, named such a class by reference even though its module
# is registered to go by value (as the test suite registers its modules), and the worker failed
# to import it
def test_instances_of_a_by_value_module_travel_both_ways(any_cluster):
    out = nbray.get(shifted.remote(Point(2, 3)))
    assert type(out).__name__ == "Point" and (out.x, out.y) == (3, 4)
    assert out.norm2() == 25


def test_lambda_and_closure_remote_functions(any_cluster):
    offset = 42
    plus = nbray.remote(lambda x: x + offset)
    assert nbray.get(plus.remote(1)) == 43

    def make(k):
        @nbray.remote
        def times(x):
            return x * k
        return times

    assert nbray.get([make(2).remote(5), make(3).remote(5)]) == [10, 15]


def test_remote_function_is_a_remote_function_object(any_cluster):
    assert isinstance(square, RemoteFunction)
    assert square.__name__ == "square"
    assert "square" in repr(square)


# ---- multiple returns ----------------------------------------------------------------------------
def test_num_returns_decorator(any_cluster):
    refs = divmod_task.remote(17, 5)
    assert isinstance(refs, list) and len(refs) == 2
    assert all(isinstance(r, nbray.ObjectRef) for r in refs)
    q, r = refs
    assert nbray.get(q) == 3
    assert nbray.get(r) == 2
    assert nbray.get(refs) == [3, 2]


def test_num_returns_refs_feed_other_tasks(any_cluster):
    q, r = divmod_task.remote(100, 7)
    assert nbray.get(add.remote(q, r, c=0)) == 14 + 2


def test_num_returns_mismatch_is_an_error(any_cluster):
    refs = divmod_task.options(num_returns=3).remote(9, 2)
    assert len(refs) == 3
    for ref in refs:
        with pytest.raises(ValueError, match="num_returns=3"):
            nbray.get(ref)


def test_num_returns_one_returns_tuple_as_one_value(any_cluster):
    ref = divmod_task.options(num_returns=1).remote(9, 2)
    assert isinstance(ref, nbray.ObjectRef)
    assert nbray.get(ref) == (4, 1)


# ---- options -------------------------------------------------------------------------------------
def test_options_num_returns(any_cluster):
    @nbray.remote
    def three():
        return "a", "b", "c"

    refs = three.options(num_returns=3).remote()
    assert nbray.get(refs) == ["a", "b", "c"]
    # options() returns a copy: the original is unchanged
    assert nbray.get(three.remote()) == ("a", "b", "c")


def test_options_num_cpus(any_cluster):
    # a task asking for both CPUs of the node runs (alone)
    assert nbray.get(square.options(num_cpus=2).remote(6)) == 36
    assert nbray.get(square.options(num_cpus=0.5).remote(6)) == 36
    assert nbray.get(square.options(num_cpus=0).remote(6)) == 36


def test_options_chain_and_name(any_cluster):
    f = add.options(num_cpus=1).options(max_retries=0, name="my_add")
    assert nbray.get(f.remote(1, 1, c=1)) == 3
    assert "my_add" in repr(f)


def test_infeasible_num_cpus_fails_get(module_cluster):
    ref = square.options(num_cpus=3).remote(2)        # the node has 2 CPUs
    with pytest.raises(nbray.RemoteError, match="CPU"):
        nbray.get(ref, timeout=10)
    assert nbray.get(square.remote(3)) == 9           # the cluster still works


def test_infeasible_custom_resource_fails_get(module_cluster):
    ref = square.options(resources={"unicorn": 1}).remote(2)
    with pytest.raises(nbray.RemoteError, match="unicorn"):
        nbray.get(ref, timeout=10)
    ref = square.options(num_gpus=1).remote(2)
    with pytest.raises(nbray.RemoteError, match="GPU"):
        nbray.get(ref, timeout=10)


def test_calling_remote_function_directly_raises_type_error():
    with pytest.raises(TypeError, match=r"square\.remote"):
        square(3)
    with pytest.raises(TypeError):
        divmod_task(3, 2)


@pytest.mark.parametrize("options, error", [
    ({"bogus": 1}, ValueError),
    ({"num_cpu": 1}, ValueError),
    ({"num_cpus": -1}, ValueError),
    ({"num_cpus": "1"}, ValueError),
    ({"num_cpus": True}, ValueError),
    ({"num_gpus": -0.5}, ValueError),
    ({"num_returns": 0}, ValueError),
    ({"num_returns": -1}, ValueError),
    ({"num_returns": 1.5}, ValueError),
    ({"num_returns": True}, ValueError),
    ({"max_retries": -2}, ValueError),
    ({"max_retries": 1.0}, ValueError),
    ({"resources": "CPU"}, TypeError),
    ({"resources": [("x", 1)]}, TypeError),
    ({"resources": {"CPU": 1}}, ValueError),
    ({"resources": {"GPU": 1}}, ValueError),
    ({"resources": {"x": -1}}, ValueError),
    ({"resources": {"x": "1"}}, ValueError),
])
def test_invalid_options_raise(options, error):
    # checked when the function is decorated and when options() is called, before any task
    with pytest.raises(error):
        nbray.remote(**options)(lambda: None)
    with pytest.raises(error):
        square.options(**options)


def test_valid_options_accepted():
    f = square.options(num_cpus=1, num_gpus=0, resources={"x": 0.5}, num_returns=1,
                       max_retries=-1, name="n")
    assert isinstance(f, RemoteFunction)


def test_remote_decorator_misuse():
    with pytest.raises(TypeError):
        nbray.remote(3)
    with pytest.raises(TypeError):
        nbray.remote(lambda: 1, lambda: 2)
    with pytest.raises(TypeError):
        nbray.remote(num_cpus=1)(42)
