"""Anti-pattern: calling ``ray.get`` right after each ``.remote()``. Fetching every result
inside the submitting loop makes the driver wait for each task before it starts the next, so
nothing runs in parallel. The fix is to submit everything first and fetch the whole list of
refs with one ``ray.get``. Both give the same answer; the timings are printed, not checked."""
import time

import nbray as ray

ray.init(num_cpus=2)


@ray.remote
def work(x):
    time.sleep(0.04)
    return x * 3


work.remote(0)                  # warm the workers so both versions start alike
ray.get([work.remote(0) for _ in range(2)])

start = time.perf_counter()
serial = []
for i in range(12):
    serial.append(ray.get(work.remote(i)))          # bad: waits on every iteration
bad_s = time.perf_counter() - start

start = time.perf_counter()
refs = [work.remote(i) for i in range(12)]          # good: submit all, then wait once
parallel = ray.get(refs)
good_s = time.perf_counter() - start

print(f"get inside the loop: {bad_s:.2f} s; one get at the end: {good_s:.2f} s")
assert serial == parallel == [i * 3 for i in range(12)]
