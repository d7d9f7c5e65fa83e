"""Finding actors by name. An actor created with ``.options(name=...)`` can be looked up
from anywhere in the job with ``ray.get_actor(name)``, here from inside a task that was never
given the handle. ``get_if_exists=True`` makes creation idempotent: the first call creates
the actor and later ones with the same name return a handle to that same one."""
import nbray as ray

ray.init(num_cpus=2)


@ray.remote
class Registry:
    def __init__(self):
        self.items = {}

    def put(self, key, value):
        self.items[key] = value

    def get_all(self):
        return dict(self.items)


registry = Registry.options(name="registry").remote()
ray.get(registry.put.remote("driver", 1))


@ray.remote
def register(key):
    reg = ray.get_actor("registry")         # no handle was passed in
    ray.get(reg.put.remote(key, len(key)))
    return key


ray.get([register.remote(k) for k in ("alpha", "be", "gamma")])
items = ray.get(ray.get_actor("registry").get_all.remote())
print("registry holds:", items)
assert items == {"driver": 1, "alpha": 5, "be": 2, "gamma": 5}

# asking for an unknown name is a ValueError
try:
    ray.get_actor("no-such-actor")
except ValueError:
    pass
else:
    raise AssertionError("expected ValueError")

first = Registry.options(name="shared", get_if_exists=True).remote()
ray.get(first.put.remote("k", "v"))
again = Registry.options(name="shared", get_if_exists=True).remote()
assert ray.get(again.get_all.remote()) == {"k": "v"}    # the same actor, not a new one
ray.shutdown()
