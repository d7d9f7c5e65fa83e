"""``nbray.util.queue.Queue`` (shared by drivers, tasks and actors) and
``nbray.util.multiprocessing.Pool`` (the standard library's pool on the cluster)."""
from __future__ import annotations

import asyncio
import multiprocessing
import os
import queue as stdlib_queue
import time

import pytest

import nbray
from nbray.util.multiprocessing import Pool
from nbray.util.queue import Empty, Full, Queue

pytestmark = pytest.mark.timeout(90)


# ---- Queue -----------------------------------------------------------------------------------
def test_queue_is_fifo_with_blocking_and_non_blocking_calls(module_cluster):
    q = Queue(maxsize=2)
    assert q.empty() and not q.full() and q.qsize() == 0
    q.put("a")
    q.put_nowait("b")
    assert q.full() and q.qsize() == len(q) == 2
    with pytest.raises(Full):
        q.put("c", block=False)
    with pytest.raises(stdlib_queue.Full):      # the standard library's type too
        q.put("c", timeout=0.2)
    assert q.get() == "a" and q.get_nowait() == "b"
    with pytest.raises(Empty):
        q.get(block=False)
    started = time.monotonic()
    with pytest.raises(stdlib_queue.Empty):
        q.get(timeout=0.3)
    assert time.monotonic() - started >= 0.3
    q.put_nowait_batch([1, 2])
    with pytest.raises(Full):
        q.put_nowait_batch([3])
    with pytest.raises(Empty):
        q.get_nowait_batch(3)
    assert q.get_nowait_batch(2) == [1, 2]


def test_queue_bad_arguments(module_cluster):
    with pytest.raises(ValueError, match="maxsize"):
        Queue(maxsize=-1)
    q = Queue()
    with pytest.raises(ValueError, match="timeout"):
        q.get(timeout=-1)
    with pytest.raises(ValueError, match="num_items"):
        q.get_nowait_batch(-2)


@nbray.remote
def produce(q, n):
    for i in range(n):
        q.put(i)
    q.put(None)
    return os.getpid()


@nbray.remote
def consume(q):
    out = []
    while (item := q.get(timeout=30)) is not None:
        out.append(item)
    return out


def test_queue_passes_items_between_tasks_while_a_getter_blocks(module_cluster):
    q = Queue(maxsize=5)                # the producer blocks on a full queue at times
    consumer = consume.remote(q)        # waits in get before anything is put
    producer = produce.remote(q, 50)
    assert nbray.get(consumer, timeout=60) == list(range(50))
    nbray.get(producer)


def test_queue_async_calls_and_shutdown(module_cluster):
    q = Queue()

    async def main():
        await q.put_async(1)
        await q.put_async(2, block=False)
        got = [await q.get_async(), await q.get_async(block=False)]
        with pytest.raises(Empty):
            await q.get_async(timeout=0.1)
        return got
    assert asyncio.run(main()) == [1, 2]
    q.shutdown()
    with pytest.raises(nbray.ActorDiedError):
        q.put(3)


# ---- Pool ------------------------------------------------------------------------------------
def square(x):
    return x * x


def add(a, b):
    return a + b


def fail_on(x):
    if x == 3:
        raise ValueError("three is bad")
    return x


def pid_and_seed(_):
    return os.getpid(), os.environ.get("POOL_SEED")


def seed(value):
    os.environ["POOL_SEED"] = value


def slow_square(x):
    time.sleep(0.02 * (x % 3))
    return x * x


def test_pool_has_the_standard_librarys_interface(module_cluster):
    with Pool(2) as pool:
        assert pool.map(square, range(20)) == [x * x for x in range(20)]
        assert pool.map(square, []) == []
        assert pool.map(square, range(7), chunksize=3) == [x * x for x in range(7)]
        assert pool.starmap(add, [(1, 2), (3, 4)]) == [3, 7]
        assert list(pool.imap(slow_square, range(12))) == [x * x for x in range(12)]
        assert sorted(pool.imap_unordered(slow_square, range(12), chunksize=2)) == \
            [x * x for x in range(12)]
        assert pool.apply(add, (2, 3)) == 5
        seen = []
        result = pool.apply_async(add, (4,), {"b": 5}, callback=seen.append)
        assert result.get(timeout=30) == 9 and result.successful()
        assert seen == [9]                  # the callback ran before the result was ready
        assert pool.map_async(square, range(5)).get(timeout=30) == [0, 1, 4, 9, 16]
        assert pool.starmap_async(add, [(1, 1)]).get(timeout=30) == [2]


def test_pool_imap_reads_an_endless_iterable_lazily(module_cluster):
    import itertools
    with Pool(2) as pool:
        first = list(itertools.islice(pool.imap(square, itertools.count()), 10))
    assert first == [x * x for x in range(10)]


def test_pool_initializer_runs_in_each_process(module_cluster):
    with Pool(2, initializer=seed, initargs=("s1",)) as pool:
        seen = pool.map(pid_and_seed, range(8), chunksize=1)
    assert {s for _, s in seen} == {"s1"}
    assert len({pid for pid, _ in seen}) == 2


def test_pool_errors_timeouts_and_lifecycle(module_cluster):
    pool = Pool(2)
    with pytest.raises(ValueError, match="three is bad"):
        pool.map(fail_on, range(6))
    errors = []
    r = pool.apply_async(fail_on, (3,), error_callback=errors.append)
    r.wait(30)
    assert r.ready() and not r.successful() and isinstance(errors[0], ValueError)
    slow = Pool(1)
    with pytest.raises(multiprocessing.TimeoutError):
        slow.apply_async(time.sleep, (30,)).get(timeout=0.1)
    slow.terminate()            # at once, though its process is busy
    with pytest.raises(ValueError, match="close"):
        pool.join()
    pending = pool.map_async(square, range(10))
    pool.close()
    with pytest.raises(ValueError, match="closed"):
        pool.map(square, [1])
    pool.join()
    assert pending.ready() and pending.get() == [x * x for x in range(10)]
    pool.terminate()


def test_pool_bad_arguments(module_cluster):
    with pytest.raises(ValueError, match="processes"):
        Pool(0)
    with pytest.raises(NotImplementedError, match="maxtasksperchild"):
        Pool(1, maxtasksperchild=5)
    with pytest.raises(TypeError, match="initializer"):
        Pool(1, initializer=3)
    with Pool(1) as pool:
        with pytest.raises(ValueError, match="chunksize"):
            pool.map(square, [1], chunksize=0)
