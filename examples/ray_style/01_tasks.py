"""Remote functions and futures. Decorating a plain function with ``@ray.remote`` turns it
into a task that runs in a worker process; ``.remote(...)`` starts it and hands back an
ObjectRef at once, and ``ray.get`` on a list of refs waits for all of them and returns the
values in the same order. No ``ray.init()`` here: the first remote call starts a local
cluster by itself, and nothing shuts it down by hand either -- it goes when the script ends."""
import os

import nbray as ray


@ray.remote
def cube(n):
    return n ** 3


@ray.remote
def where_am_i():
    return os.getpid()


refs = [cube.remote(i) for i in range(8)]
assert all(isinstance(r, ray.ObjectRef) for r in refs)
values = ray.get(refs)
print("cubes:", values)
assert values == [i ** 3 for i in range(8)]

# a single ref gives back a single value
assert ray.get(cube.remote(11)) == 1331

# the work happened in other processes, not in this one
pids = set(ray.get([where_am_i.remote() for _ in range(6)]))
print("worker pids:", sorted(pids))
assert os.getpid() not in pids
