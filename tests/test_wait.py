"""nbray.wait: ready / not-ready split, num_returns, timeout, order."""
from __future__ import annotations

import time

import pytest

import nbray

pytestmark = pytest.mark.timeout(60)


@nbray.remote
def value(x):
    return x


@nbray.remote
def slow(seconds, x=None):
    time.sleep(seconds)
    return x


@nbray.remote
def fail():
    raise ValueError("failed task")


def _ready_all(refs):
    nbray.get(refs)
    return refs


@pytest.mark.timeout(150)
def test_wait_splits_ready_and_not_ready_in_order(any_cluster):
    on_ray = any_cluster.ctx.backend == "ray"
    fast = _ready_all([value.remote(i) for i in range(3)])
    slow_refs = [slow.remote(300) for _ in range(2)]    # never done before the cancel below
    refs = [slow_refs[0], fast[0], fast[1], slow_refs[1], fast[2]]
    try:
        ready, not_ready = nbray.wait(refs, num_returns=3, timeout=10)
        assert ready == fast
        assert not_ready == slow_refs
        # at most num_returns are reported ready, in the order of the input
        ready, not_ready = nbray.wait(refs, num_returns=2, timeout=10)
        assert ready == fast[:2]
        assert not_ready == [slow_refs[0], slow_refs[1], fast[2]]
    finally:
        # on Ray a cancel without force may leave a task in time.sleep running (Ray's issue
        # 32954), so there it is forced
        for r in slow_refs:
            nbray.cancel(r, force=on_ray)
    for r in slow_refs:
        # Ray can drop a cancel that comes while it hands the task to a worker (seen on a
        # loaded machine: the task then ran to its end), so there it is asked again
        deadline = time.monotonic() + 40
        while on_ray and not nbray.wait([r], timeout=2)[0] and time.monotonic() < deadline:
            nbray.cancel(r, force=True)
        with pytest.raises(nbray.TaskCancelledError):
            nbray.get(r, timeout=15)        # (Ray's forced cancel: its worker's death is seen)


def test_wait_respects_timeout(any_cluster):
    fast = _ready_all([value.remote(1)])[0]
    pending = slow.remote(30)
    try:
        t0 = time.monotonic()
        ready, not_ready = nbray.wait([pending, fast], num_returns=2, timeout=0.3)
        elapsed = time.monotonic() - t0
        assert 0.25 <= elapsed < 2.0, elapsed
        assert ready == [fast]
        assert not_ready == [pending]
        t0 = time.monotonic()
        ready, not_ready = nbray.wait([pending], timeout=0)
        assert time.monotonic() - t0 < 0.5
        assert ready == [] and not_ready == [pending]
    finally:
        nbray.cancel(pending)


def test_wait_default_num_returns_is_one(any_cluster):
    refs = [value.remote(i) for i in range(5)]
    ready, not_ready = nbray.wait(refs)
    assert len(ready) == 1 and len(not_ready) == 4
    assert ready[0] in refs
    assert set(ready) | set(not_ready) == set(refs)
    # the two lists keep the order of refs
    assert [r for r in refs if r in not_ready] == not_ready


def test_wait_all(any_cluster):
    refs = [slow.remote(0.05, i) for i in range(8)]
    ready, not_ready = nbray.wait(refs, num_returns=len(refs))
    assert ready == refs and not_ready == []
    assert nbray.get(ready) == list(range(8))


def test_wait_counts_failed_tasks_as_ready(any_cluster):
    bad = fail.remote()
    ready, not_ready = nbray.wait([bad], timeout=10)
    assert ready == [bad] and not_ready == []
    with pytest.raises(ValueError):
        nbray.get(bad)


def test_wait_num_returns_zero_and_empty(any_cluster):
    refs = [value.remote(1)]
    assert nbray.wait(refs, num_returns=0) == ([], refs)
    assert nbray.wait([], num_returns=0) == ([], [])


def test_wait_on_put_objects(any_cluster):
    refs = [nbray.put(i) for i in range(4)]
    ready, not_ready = nbray.wait(refs, num_returns=4, timeout=5)
    assert ready == refs and not_ready == []


def test_wait_accepts_tuple(any_cluster):
    refs = (value.remote(1), value.remote(2))
    ready, not_ready = nbray.wait(refs, num_returns=2, timeout=10)
    assert list(ready) == list(refs) and not_ready == []


def test_wait_loop_collects_everything(any_cluster):
    """The usual as-completed loop: wait for one at a time until nothing is left."""
    pending = [slow.remote(0.01 * (i % 4), i) for i in range(12)]
    seen = []
    while pending:
        ready, pending = nbray.wait(pending, num_returns=1, timeout=20)
        assert len(ready) == 1
        seen.extend(nbray.get(ready))
    assert sorted(seen) == list(range(12))
