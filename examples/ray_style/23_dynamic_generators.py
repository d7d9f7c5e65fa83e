"""Dynamic returns. With ``num_returns="dynamic"`` a generator task gives back a single ref,
and that ref's value, once the task has finished, is a ``ray.DynamicObjectRefGenerator``: the
refs of however many items it yielded, a count nobody had to know in advance (here the length
of a Collatz sequence). Each item is still its own object, so the refs can be handed on to
other tasks, and the single ref can be passed whole as a task argument. Actor methods can
yield too: ``@ray.method(num_returns="dynamic")`` marks one, and a method that just yields
streams like a remote function."""
import nbray as ray

ray.init(num_cpus=2)


@ray.remote(num_returns="dynamic")
def collatz(n):
    while n != 1:
        yield n
        n = n // 2 if n % 2 == 0 else 3 * n + 1
    yield 1


@ray.remote
def doubled(x):
    return 2 * x


@ray.remote
def longest_run(dyn):
    values = ray.get(list(dyn))             # arrives as the generator of refs itself
    return max(values), len(values)


ref = collatz.remote(6)
assert isinstance(ref, ray.ObjectRef)
steps = ray.get(ref)
assert isinstance(steps, ray.DynamicObjectRefGenerator)
print(f"collatz(6) took {len(steps)} values")
assert ray.get(list(steps)) == [6, 3, 10, 5, 16, 8, 4, 2, 1]
assert ray.get([doubled.remote(r) for r in steps])[:3] == [12, 6, 20]
assert ray.get(longest_run.remote(collatz.remote(7))) == (52, 17)


@ray.remote
def evens(limit):
    yield from range(0, limit, 2)


as_dynamic = evens.options(num_returns="dynamic").remote(7)   # same function, other mode
assert ray.get(list(ray.get(as_dynamic))) == [0, 2, 4, 6]


@ray.remote
class Inventory:
    def __init__(self):
        self.stock = {"apples": 3, "pears": 0, "plums": 5}

    @ray.method(num_returns="dynamic")
    def in_stock(self):
        for name, count in sorted(self.stock.items()):
            if count:
                yield name

    def restock(self, name, count):
        self.stock[name] += count
        yield from (f"{name} #{i}" for i in range(1, count + 1))   # streams


shop = Inventory.remote()
assert ray.get(list(ray.get(shop.in_stock.remote()))) == ["apples", "plums"]
labels = [ray.get(r) for r in shop.restock.remote("pears", 2)]
assert labels == ["pears #1", "pears #2"]
assert ray.get(list(ray.get(shop.in_stock.remote()))) == ["apples", "pears", "plums"]
ray.shutdown()
