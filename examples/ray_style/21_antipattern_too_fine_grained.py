"""Anti-pattern: tasks too small to pay for themselves. A task that does microseconds of
work spends far longer being scheduled and returning its result than computing; launching
one per item is slower than doing the loop locally. Grouping items so that each task does a
meaningful amount of work fixes it. Both give the same answer; the timings are printed only."""
import time

import nbray as ray

ray.init(num_cpus=2)


def collatz_steps(n):
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


@ray.remote
def one(n):
    return collatz_steps(n)


@ray.remote
def many(lo, hi):
    return [collatz_steps(n) for n in range(lo, hi)]


N = 2000
ray.get([one.remote(1), many.remote(1, 2)])         # the workers are up

start = time.perf_counter()
tiny = ray.get([one.remote(n) for n in range(1, N + 1)])     # 2000 tasks
tiny_s = time.perf_counter() - start

start = time.perf_counter()
chunk = N // 4
parts = ray.get([many.remote(lo, lo + chunk) for lo in range(1, N + 1, chunk)])
grouped = [s for part in parts for s in part]                 # 4 tasks
grouped_s = time.perf_counter() - start

print(f"one task per item: {tiny_s:.2f} s; four tasks: {grouped_s:.2f} s")
assert tiny == grouped == [collatz_steps(n) for n in range(1, N + 1)]
ray.shutdown()
