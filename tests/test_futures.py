"""``await ref``, ``asyncio.gather`` of refs and ``ref.future()``, in a driver and in an async
actor; a task's error comes back through the future; many awaited refs cost one thread."""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import pytest

import nbray

pytestmark = pytest.mark.timeout(120)


@nbray.remote
def square(x):
    return x * x


@nbray.remote
def fails():
    raise ValueError("no")


@nbray.remote
class Gatherer:
    async def total(self, n):
        refs = [square.remote(i) for i in range(n)]
        return sum(await asyncio.gather(*refs))


def test_await_and_gather_in_a_driver(cluster):
    async def main():
        one = await square.remote(3)
        many = await asyncio.gather(*[square.remote(i) for i in range(200)])
        return one, many
    before = threading.active_count()
    one, many = asyncio.run(main())
    assert one == 9 and many == [i * i for i in range(200)]
    assert threading.active_count() <= before + 1      # one resolver thread, not 200


def test_a_future_carries_the_value_or_the_error(cluster):
    fut = square.remote(5).future()
    assert isinstance(fut, concurrent.futures.Future) and fut.result(timeout=30) == 25
    with pytest.raises(ValueError, match="no"):
        fails.remote().future().result(timeout=30)

    async def awaited():
        return await fails.remote()
    with pytest.raises(ValueError, match="no"):
        asyncio.run(awaited())


def test_gather_in_an_async_actor(cluster):
    g = Gatherer.remote()
    assert nbray.get(g.total.remote(50), timeout=60) == sum(i * i for i in range(50))
