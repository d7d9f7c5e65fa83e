"""Processing results as they finish. Tasks of uneven length are all started at once, and
``ray.wait`` with ``num_returns=1`` picks out whichever is done first, so the driver's own
post-processing of early results overlaps with the tasks still running rather than waiting
behind the slowest one. Here each finished chunk is checked and folded into a running total."""
import random
import time

import nbray as ray

ray.init(num_cpus=2)


@ray.remote
def crunch(chunk_id, seconds):
    time.sleep(seconds)
    return chunk_id, sum(range(chunk_id * 1000, (chunk_id + 1) * 1000))


rng = random.Random(7)
pending = [crunch.remote(i, rng.uniform(0.0, 0.2)) for i in range(10)]
running_total, seen = 0, []
while pending:
    ready, pending = ray.wait(pending, num_returns=1)
    chunk_id, value = ray.get(ready[0])
    running_total += value                  # driver work overlaps the remaining tasks
    seen.append(chunk_id)
print("chunks in finishing order:", seen)
assert sorted(seen) == list(range(10))
assert running_total == sum(range(10 * 1000))
