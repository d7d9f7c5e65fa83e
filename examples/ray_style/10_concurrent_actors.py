"""Actors that run several calls at once. An actor whose methods are ``async def`` runs them
on an event loop, so calls that await overlap (up to ``max_concurrency`` at a time); a plain
actor given ``max_concurrency > 1`` runs its methods on that many threads instead. Each actor
records the most calls it had in progress together, which shows the overlap; the elapsed time
of four 0.3 s calls (well under the 1.2 s they would take one after another) is printed."""
import asyncio
import threading
import time

import nbray as ray

ray.init(num_cpus=2)


@ray.remote(max_concurrency=4)
class AsyncFetcher:
    def __init__(self):
        self.active = self.peak = 0

    async def fetch(self, i):
        self.active += 1                    # one event loop: no lock needed
        self.peak = max(self.peak, self.active)
        await asyncio.sleep(0.3)            # stands in for waiting on I/O
        self.active -= 1
        return i

    async def peak_seen(self):
        return self.peak


@ray.remote(max_concurrency=4)
class ThreadedWorker:
    def __init__(self):
        self.lock = threading.Lock()
        self.active = self.peak = 0

    def fetch(self, i):
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(0.3)                     # a blocking call, on one of the actor's threads
        with self.lock:
            self.active -= 1
        return i

    def peak_seen(self):
        return self.peak


for label, cls in (("async", AsyncFetcher), ("threaded", ThreadedWorker)):
    actor = cls.remote()
    ray.get(actor.peak_seen.remote())       # the actor is up
    start = time.perf_counter()
    out = ray.get([actor.fetch.remote(i) for i in range(4)])
    elapsed = time.perf_counter() - start
    peak = ray.get(actor.peak_seen.remote())
    print(f"{label} actor: 4 calls of 0.3 s took {elapsed:.2f} s, {peak} at once")
    assert out == [0, 1, 2, 3]
    assert 1 < peak <= 4, "the calls should have overlapped, at most 4 at a time"
