"""ObjectRefs in asyncio code. A ref is awaitable, so a driver written with ``async def`` and
``asyncio.run`` can ``await ref`` for one result or ``await asyncio.gather(*refs)`` for many,
while its event loop keeps serving other coroutines. ``ref.future()`` turns a ref into a
``concurrent.futures.Future`` for code built on that interface."""
import asyncio
import concurrent.futures

import nbray as ray

ray.init(num_cpus=2)


@ray.remote
def slow_double(x):
    import time
    time.sleep(0.1)
    return 2 * x


async def heartbeat(stop, ticks):
    while not stop.is_set():
        ticks.append(1)
        await asyncio.sleep(0.02)


async def main():
    stop, ticks = asyncio.Event(), []
    beat = asyncio.create_task(heartbeat(stop, ticks))
    one = await slow_double.remote(21)
    many = await asyncio.gather(*[slow_double.remote(i) for i in range(6)])
    stop.set()
    await beat
    return one, many, len(ticks)


one, many, ticks = asyncio.run(main())
print(f"awaited {one} and {many}; the loop ticked {ticks} times meanwhile")
assert one == 42 and many == [0, 2, 4, 6, 8, 10]
assert ticks > 2, "the event loop should not have been blocked"

fut = slow_double.remote(5).future()
assert isinstance(fut, concurrent.futures.Future)
assert fut.result(timeout=10) == 10
futs = [slow_double.remote(i).future() for i in range(3)]
done = [f.result() for f in concurrent.futures.as_completed(futs, timeout=10)]
assert sorted(done) == [0, 2, 4]
ray.shutdown()
