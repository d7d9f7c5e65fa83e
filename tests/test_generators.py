"""Tasks and actor methods that yield: ``num_returns="streaming"`` (an ObjectRefGenerator the
caller iterates while the task runs) and ``"dynamic"`` (one ref to a generator of refs)."""
from __future__ import annotations

import asyncio
import gc
import os
import threading

import numpy as np
import pytest

import nbray
from nbray.util.queue import Queue
from conftest import wait_until

pytestmark = pytest.mark.timeout(90)


@nbray.remote
def count(n, fail_at=None):
    for i in range(n):
        if i == fail_at:
            raise ValueError(f"failed at {i}")
        yield i * 10


@nbray.remote
def gated(q, n):
    """Yields one item, then waits for the caller's word before the rest: the caller can
    only get the word out if it saw the first item while this task still ran."""
    yield "first"
    assert q.get(timeout=30) == "go"
    for i in range(n):
        yield i


@nbray.remote
def big_items(n):
    for i in range(n):
        yield np.full(200_000, i, dtype=np.int64)       # 1.6 MB: shared memory


@nbray.remote
def not_a_generator():
    return 5


@nbray.remote(max_retries=0)
def yield_then_hang(q):
    yield os.getpid()
    yield "second"
    q.get(timeout=60)           # until killed or cancelled
    yield "never"


def test_streaming_items_arrive_while_the_task_runs(module_cluster):
    q = Queue()
    gen = gated.remote(q, 3)
    assert isinstance(gen, nbray.ObjectRefGenerator)
    assert nbray.get(next(gen)) == "first"
    assert not gen.is_finished()
    q.put("go")
    assert [nbray.get(r) for r in gen] == [0, 1, 2]
    assert gen.is_finished()
    assert nbray.get(gen.completed()) == 4          # the item count
    with pytest.raises(StopIteration):
        next(gen)


def test_generator_functions_stream_by_default_and_large_items_use_shared_memory(module_cluster):
    refs = list(count.remote(4))
    assert nbray.get(refs) == [0, 10, 20, 30]
    values = [nbray.get(r) for r in big_items.remote(3)]
    assert [int(v[0]) for v in values] == [0, 1, 2] and values[2].shape == (200_000,)


def test_an_exception_mid_stream_surfaces_at_its_item(module_cluster):
    gen = count.remote(5, fail_at=2)
    refs = list(gen)
    assert len(refs) == 3                           # two items, then the error
    assert nbray.get(refs[:2]) == [0, 10]           # what was yielded stays readable
    with pytest.raises(ValueError, match="failed at 2"):
        nbray.get(refs[2])
    with pytest.raises(ValueError, match="failed at 2"):
        nbray.get(gen.completed())


def test_dynamic_returns_one_ref_to_a_generator_of_refs(module_cluster):
    ref = count.options(num_returns="dynamic").remote(4)
    assert isinstance(ref, nbray.ObjectRef)
    gen = nbray.get(ref)
    assert isinstance(gen, nbray.DynamicObjectRefGenerator) and len(gen) == 4
    assert nbray.get(list(gen)) == [0, 10, 20, 30]
    refs = list(nbray.get(count.options(num_returns="dynamic").remote(4, fail_at=1)))
    assert nbray.get(refs[0]) == 0
    with pytest.raises(ValueError, match="failed at 1"):
        nbray.get(refs[1])


@nbray.remote
def reads_a_dynamic_generator(ref):
    return [nbray.get(r) for r in ref]          # the generator itself: a top-level argument


def test_a_dynamic_generator_passed_to_a_task(module_cluster):
    ref = count.options(num_returns="dynamic").remote(3)
    assert nbray.get(reads_a_dynamic_generator.remote(ref)) == [0, 10, 20]


def test_async_for_and_gather_over_a_stream(module_cluster):
    async def main():
        refs = [r async for r in count.remote(4)]
        return await asyncio.gather(*refs)
    assert asyncio.run(main()) == [0, 10, 20, 30]


def test_wait_takes_generators(module_cluster):
    q = Queue()
    gen = gated.remote(q, 1)
    plain = count.options(num_returns="dynamic").remote(1)
    ready, not_ready = nbray.wait([gen, plain], num_returns=2, timeout=30)
    assert ready == [gen, plain] and not_ready == []
    assert nbray.get(next(gen)) == "first"
    ready, not_ready = nbray.wait([gen], timeout=0.2)      # waits for the word now
    assert ready == [] and not_ready == [gen]
    q.put("go")
    assert nbray.get(next(gen)) == 0
    ready, _ = nbray.wait([gen], timeout=30)                # the end is ready too
    assert ready == [gen]
    assert list(gen) == [] and gen.is_finished()


@nbray.remote
def consume_stream(n):
    return sum(nbray.get(r) for r in count.remote(n))


def test_a_task_iterates_a_stream_of_its_own(module_cluster):
    assert nbray.get(consume_stream.remote(5)) == 100


@nbray.remote
class Producer:
    def __init__(self):
        self.calls = 0

    def numbers(self, n):
        self.calls += 1
        for i in range(n):
            yield i

    @nbray.method(num_returns="dynamic")
    def batch(self, n):
        return [i * i for i in range(n)]        # any iterable will do

    def calls_made(self):
        return self.calls


@nbray.remote
class AsyncProducer:
    async def ticks(self, n):
        for i in range(n):
            await asyncio.sleep(0)
            yield -i


@nbray.remote(max_concurrency=2)
class ThreadedProducer:
    def numbers(self, n):
        for i in range(n):
            yield threading.current_thread().name.startswith("nbray-actor") and i


def test_actor_methods_that_yield(module_cluster):
    p = Producer.remote()
    assert [nbray.get(r) for r in p.numbers.remote(3)] == [0, 1, 2]
    assert nbray.get(list(nbray.get(p.batch.remote(4)))) == [0, 1, 4, 9]
    assert nbray.get(p.calls_made.remote()) == 1
    a = AsyncProducer.remote()
    assert [nbray.get(r) for r in a.ticks.remote(3)] == [0, -1, -2]
    t = ThreadedProducer.remote()
    assert [nbray.get(r) for r in t.numbers.remote(3)] == [False, 1, 2]   # 0 is falsy


def test_a_cancelled_producer_ends_its_stream_with_an_error(module_cluster):
    q = Queue()
    gen = yield_then_hang.remote(q)
    next(gen), next(gen)
    nbray.cancel(gen)
    rest = list(gen)            # ends: never a hang
    assert len(rest) == 1
    with pytest.raises(nbray.TaskCancelledError):
        nbray.get(rest[0])


def test_a_killed_producer_ends_its_stream_with_an_error(module_cluster):
    q = Queue()
    gen = yield_then_hang.remote(q)
    first = next(gen)
    assert nbray.get(next(gen)) == "second"
    nbray.chaos.kill_worker(running=gen.completed())
    rest = list(gen)
    assert len(rest) == 1
    with pytest.raises(nbray.WorkerCrashedError):
        nbray.get(rest[0])
    assert isinstance(nbray.get(first), int)        # what was yielded stays readable


@nbray.remote(max_retries=2)
def dies_once(marker, n):
    for i in range(n):
        if i == 3 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)             # the worker dies mid-stream, once
        yield i


def test_a_retried_producer_streams_each_item_once(module_cluster, tmp_path):
    assert [nbray.get(r) for r in dies_once.remote(str(tmp_path / "died"), 6)] == \
        list(range(6))


def test_a_killed_actor_ends_its_stream(module_cluster):
    @nbray.remote
    class Slow:
        def stream(self, q):
            yield 1
            q.get(timeout=60)
            yield 2
    q = Queue()
    s = Slow.remote()
    gen = s.stream.remote(q)
    assert nbray.get(next(gen)) == 1
    nbray.kill(s)
    (last,) = list(gen)
    with pytest.raises(nbray.ActorDiedError):
        nbray.get(last)


def test_dropping_a_generator_frees_its_items(module_cluster):
    client = nbray.api._client()
    gen = big_items.remote(3)
    first = next(gen)
    nbray.get(gen.completed())
    task_id = gen.completed().task_id()
    held = lambda: [oid for oid in list(client.objects) if oid[:16] == task_id]   # noqa: E731
    assert len(held()) == 4                         # three items and the task's result
    del gen
    gc.collect()
    wait_until(lambda: len(held()) == 1 or None, 10, f"the untaken items to be freed: {held()}")
    assert int(nbray.get(first)[0]) == 0            # the one taken lives on
    del first
    gc.collect()
    wait_until(lambda: not held() or None, 10, "the rest to be freed")


def test_generator_bad_inputs(module_cluster):
    with pytest.raises(ValueError, match="streaming"):
        count.options(num_returns="bogus")
    with pytest.raises(ValueError, match="streaming"):
        nbray.method(num_returns="many")
    refs = list(not_a_generator.options(num_returns="streaming").remote())
    with pytest.raises(TypeError, match="must\\s+yield"):
        nbray.get(refs[0])
    gen = count.remote(1)
    with pytest.raises(TypeError, match="cannot be sent"):
        nbray.put(gen)
    with pytest.raises(TypeError):
        nbray.get(gen)
    with pytest.raises(nbray.GetTimeoutError):
        q = Queue()
        g = gated.remote(q, 1)
        next(g)
        g._next_sync(timeout_s=0.1)


def test_wait_on_generators_at_its_timeout_and_inside_a_group(module_cluster):
    q = Queue()
    gen = gated.remote(q, 1)
    slow = gated.options(num_returns="dynamic").remote(q, 1)     # waits for the word
    ready, not_ready = nbray.wait([gen, slow], num_returns=2, timeout=0.5)
    assert ready == [gen] and not_ready == [slow]          # what is ready, however few
    with nbray.util.group():
        with pytest.raises(RuntimeError, match="group"):
            nbray.wait([gen], timeout=5)
    q.put("go")
    q.put("go")
    assert nbray.get(next(gen)) == "first" and len(nbray.get(slow, timeout=30)) == 2
