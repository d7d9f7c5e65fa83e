"""Pattern: feeding consumers from a streaming producer. The producer task reads its input a
batch at a time and yields each batch as soon as it is ready; the driver launches a consumer
task on every batch ref the moment the generator hands it over, instead of waiting for the
producer to finish and only then fanning out. The timestamps show consumers starting while
the producer is still reading, and the combined result matches a plain serial computation."""
import time

import nbray as ray

ray.init(num_cpus=2)
BATCHES, PER_BATCH = 6, 50


@ray.remote
def read_batches(n, size):
    for b in range(n):
        time.sleep(0.15)                     # reading the next batch from somewhere slow
        yield [b * size + i for i in range(size)]
    yield time.time()                        # lastly: when reading finished


@ray.remote
def score(batch):
    started = time.time()
    time.sleep(0.05)
    return started, sum(x * x for x in batch)


consumers, finished_reading = [], None
start = time.monotonic()
for ref in read_batches.remote(BATCHES, PER_BATCH):
    if len(consumers) < BATCHES:
        consumers.append(score.remote(ref))  # starts work on this batch right away
    else:
        finished_reading = ray.get(ref)
results = ray.get(consumers)
elapsed = time.monotonic() - start
early = sum(started < finished_reading for started, _ in results)
total = sum(part for _, part in results)
print(f"{early} of {BATCHES} consumers started before the reading ended; {elapsed:.2f} s")
assert total == sum(x * x for x in range(BATCHES * PER_BATCH))
assert early >= 1, (early, results, finished_reading)   # a fan-out after the producer: 0
ray.shutdown()
