"""Waiting for some results, not all. ``ray.wait`` returns as soon as ``num_returns`` of
the given refs are ready (or ``timeout`` seconds pass) and splits them into ready and not
ready, so a driver can handle each result as it comes in rather than in submission order."""
import time

import nbray as ray


@ray.remote
def sleepy(seconds):
    time.sleep(seconds)
    return seconds


# nothing is ready within a very short timeout
slow = sleepy.remote(0.5)
ready, not_ready = ray.wait([slow], timeout=0.05)
assert ready == [] and not_ready == [slow]
assert ray.get(slow) == 0.5

# handle results one by one as they finish: the short sleeps come back first
pending = [sleepy.remote(s) for s in (0.6, 0.1, 0.3, 0.0)]
order = []
while pending:
    done, pending = ray.wait(pending, num_returns=1)
    order.append(ray.get(done[0]))
print("finished in this order:", order)
assert sorted(order) == [0.0, 0.1, 0.3, 0.6]

# wait for two of three
refs = [sleepy.remote(s) for s in (0.0, 0.0, 1.5)]
done, rest = ray.wait(refs, num_returns=2, timeout=10)
assert len(done) == 2 and len(rest) == 1
assert ray.get(done) == [0.0, 0.0]
ray.shutdown()                          # the 1.5 s task is still running: shutdown ends it
