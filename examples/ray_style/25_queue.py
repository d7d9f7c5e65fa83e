"""A queue shared between tasks. ``nbray.util.queue.Queue`` keeps its items in an actor, and
the queue object itself can be passed to tasks, so a producer task and a consumer task can
talk through it while both run. With ``maxsize`` set the producer's ``put`` waits whenever
the consumer falls behind, so at most that many items are ever waiting. ``get`` with a timeout
gives up with ``Empty``, and ``put_nowait`` on a full queue raises ``Full``; both are the
standard library's ``queue.Empty``/``queue.Full`` too."""
import queue
import time

import nbray as ray
from nbray.util.queue import Empty, Full, Queue

ray.init(num_cpus=2)
DONE = "no more work"


@ray.remote
def produce(q, orders):
    for order in orders:
        q.put(order)                        # waits while the queue holds 2 already
    q.put(DONE)
    return len(orders)


@ray.remote
def consume(q):
    packed, most_waiting = [], 0
    while True:
        most_waiting = max(most_waiting, q.qsize())
        order = q.get(timeout=20)
        if order == DONE:
            return packed, most_waiting
        time.sleep(0.02)                    # slower than the producer
        packed.append(order.upper())


q = Queue(maxsize=2)
orders = [f"order-{i}" for i in range(8)]
consumer = consume.remote(q)
assert ray.get(produce.remote(q, orders)) == 8
packed, most_waiting = ray.get(consumer)
print(f"packed {len(packed)} orders; never more than {most_waiting} waiting")
assert packed == [o.upper() for o in orders]
assert most_waiting <= 2
assert q.empty()

start = time.monotonic()
try:
    q.get(timeout=0.2)
except Empty as e:
    assert isinstance(e, queue.Empty)
    assert time.monotonic() - start >= 0.2
else:
    raise AssertionError("expected Empty from an empty queue")

q.put_nowait("a")
q.put_nowait("b")
assert q.full() and q.qsize() == 2
try:
    q.put_nowait("c")
except Full as e:
    assert isinstance(e, queue.Full)
else:
    raise AssertionError("expected Full from a full queue")
assert [q.get_nowait(), q.get_nowait()] == ["a", "b"]
ray.shutdown()
