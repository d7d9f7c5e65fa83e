"""Limiting the number of tasks in flight. Submitting an unbounded stream of work at once
can pile up queued tasks and their arguments; instead the driver keeps at most
``MAX_IN_FLIGHT`` unfinished and, when it reaches that, uses ``ray.wait`` to block until one
finishes before submitting the next. The peak count shows the bound was respected."""
import time

import nbray as ray

ray.init(num_cpus=2)
MAX_IN_FLIGHT = 4


@ray.remote
def handle(item):
    time.sleep(0.02)
    return item % 7


in_flight, results, peak = [], [], 0
for item in range(40):
    if len(in_flight) >= MAX_IN_FLIGHT:
        done, in_flight = ray.wait(in_flight, num_returns=1)
        results.extend(ray.get(done))
    in_flight.append(handle.remote(item))
    peak = max(peak, len(in_flight))
results.extend(ray.get(in_flight))
print(f"40 items, never more than {peak} in flight")
assert peak == MAX_IN_FLIGHT
assert sorted(results) == sorted(i % 7 for i in range(40))
ray.shutdown()
