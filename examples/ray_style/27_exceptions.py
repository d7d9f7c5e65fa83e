"""Ray's exception names. ``nbray.exceptions`` offers ``RayTaskError``, ``RayActorError``,
``GetTimeoutError`` and ``TaskCancelledError``. An error raised in a task can be caught as
``RayTaskError`` (its ``.cause`` is the exception the task raised) or directly as its own
type, since the error ``get`` raises is an instance of both. Calls to an actor after
``ray.kill`` raise ``RayActorError``. Finally an ``ObjectRef`` can be rebuilt from its id:
``ray.ObjectRef(bytes.fromhex(ref.hex()))`` names the same object as ``ref``."""
import time

import nbray as ray
from nbray.exceptions import GetTimeoutError, RayActorError, RayTaskError, TaskCancelledError

ray.init(num_cpus=2)


class OutOfStock(Exception):
    def __init__(self, item, wanted):
        super().__init__(item, wanted)      # all the arguments, so that it unpickles
        self.item, self.wanted = item, wanted

    def __str__(self):
        return f"no {self.item} left, {self.wanted} wanted"


@ray.remote
def reserve(item, wanted):
    if item == "widgets":
        raise OutOfStock(item, wanted)
    return f"{wanted} {item} reserved"


assert ray.get(reserve.remote("gears", 2)) == "2 gears reserved"
try:
    ray.get(reserve.remote("widgets", 5))
except RayTaskError as e:
    assert isinstance(e.cause, OutOfStock) and e.cause.wanted == 5
    assert isinstance(e, OutOfStock)          # the same error, under its own type
    print("as RayTaskError, caused by:", repr(e.cause))
else:
    raise AssertionError("expected RayTaskError")
try:
    ray.get(reserve.remote("widgets", 1))
except OutOfStock as e:
    assert e.item == "widgets"
else:
    raise AssertionError("expected OutOfStock")


@ray.remote
def stall():
    while True:
        time.sleep(0.05)


hung = stall.remote()
try:
    ray.get(hung, timeout=0.2)
except GetTimeoutError:
    pass
else:
    raise AssertionError("expected GetTimeoutError")
ray.cancel(hung)
try:
    ray.get(hung, timeout=20)
except TaskCancelledError:
    pass
else:
    raise AssertionError("expected TaskCancelledError")


@ray.remote
class Clerk:
    def greet(self):
        return "hello"


clerk = Clerk.remote()
assert ray.get(clerk.greet.remote()) == "hello"
ray.kill(clerk)
try:
    ray.get(clerk.greet.remote(), timeout=20)
except RayActorError as e:
    print("after kill:", type(e).__name__)
else:
    raise AssertionError("expected RayActorError")

original = ray.put({"sku": 42})
rebuilt = ray.ObjectRef(bytes.fromhex(original.hex()))
assert rebuilt == original and rebuilt.hex() == original.hex()
assert ray.get(rebuilt) == {"sku": 42}
task_ref = reserve.remote("bolts", 3)
assert ray.get(ray.ObjectRef(bytes.fromhex(task_ref.hex()))) == "3 bolts reserved"
ray.shutdown()
