"""When an actor goes away. ``ray.kill`` ends an actor at once; calls made to it afterwards
raise ``ActorDiedError``. An actor created with ``max_restarts=2`` is instead brought back in
a fresh process after its worker dies -- here it crashes on purpose with ``os._exit`` -- and
answers calls again from the new process, until its restarts are used up: after the third
crash it stays dead and calls fail with ``ActorDiedError``."""
import os

import nbray as ray

ray.init(num_cpus=2)


@ray.remote
class Service:
    def pid(self):
        return os.getpid()

    def crash(self):
        os._exit(1)


doomed = Service.remote()
assert ray.get(doomed.pid.remote()) > 0
ray.kill(doomed)
try:
    ray.get(doomed.pid.remote(), timeout=20)
except ray.ActorDiedError as e:
    print("after kill:", type(e).__name__)
else:
    raise AssertionError("expected ActorDiedError")

phoenix = Service.options(max_restarts=2).remote()
pids = [ray.get(phoenix.pid.remote())]
for _ in range(2):
    try:
        ray.get(phoenix.crash.remote(), timeout=20)   # the crashing call itself fails
    except ray.ActorDiedError:
        pass
    pids.append(ray.get(phoenix.pid.remote(), timeout=20))
print("the actor's processes:", pids)
assert len(set(pids)) == 3

try:
    ray.get(phoenix.crash.remote(), timeout=20)       # a third crash: no restarts left
except ray.ActorDiedError:
    pass
try:
    ray.get(phoenix.pid.remote(), timeout=20)
except ray.ActorDiedError as e:
    print("restarts used up:", str(e).splitlines()[0])
else:
    raise AssertionError("expected ActorDiedError once max_restarts is spent")
ray.shutdown()
