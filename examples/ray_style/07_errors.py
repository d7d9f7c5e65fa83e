"""What failures look like from the driver. An exception raised inside a task comes back
from ``ray.get`` as that same exception type, so an ordinary ``except ValueError`` catches it
(and tasks that consumed the failed result fail the same way). ``ray.get(..., timeout=)``
gives up with ``GetTimeoutError`` when the value is not there in time, and ``ray.cancel``
stops a running task, after which getting its result raises ``TaskCancelledError``."""
import time

import nbray as ray

ray.init(num_cpus=2)


@ray.remote
def parse_age(text):
    age = int(text)
    if age < 0:
        raise ValueError(f"age must not be negative: {age}")
    return age


@ray.remote
def plus_one(x):
    return x + 1


@ray.remote
def takes_forever():
    while True:
        time.sleep(0.05)


assert ray.get(parse_age.remote("42")) == 42
bad = parse_age.remote("-3")
for ref in (bad, plus_one.remote(bad)):       # the error travels downstream too
    try:
        ray.get(ref)
    except ValueError as e:
        print("caught:", str(e).splitlines()[0])
    else:
        raise AssertionError("expected a ValueError")

stuck = takes_forever.remote()
try:
    ray.get(stuck, timeout=0.3)
except ray.GetTimeoutError:
    print("gave up waiting after 0.3 s")
else:
    raise AssertionError("expected GetTimeoutError")

ray.cancel(stuck)
try:
    ray.get(stuck, timeout=10)
except ray.TaskCancelledError:
    print("the endless task was cancelled")
else:
    raise AssertionError("expected TaskCancelledError")
ray.shutdown()
