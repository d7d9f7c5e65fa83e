"""A stateful actor. ``@ray.remote`` on a class makes each ``.remote()`` construction start
a dedicated worker process holding one instance; method calls through the handle run there
one at a time, in the order this caller made them, so the counter's replies are predictable.
The handle can also be passed to tasks, which call the same actor and see the same state."""
import nbray as ray

ray.init(num_cpus=2)


@ray.remote
class Counter:
    def __init__(self, start=0):
        self.value = start

    def add(self, n=1):
        self.value += n
        return self.value

    def read(self):
        return self.value


counter = Counter.remote(10)
replies = ray.get([counter.add.remote() for _ in range(5)])
print("replies in call order:", replies)
assert replies == [11, 12, 13, 14, 15]


@ray.remote
def bump(handle, times):
    # a task using an actor handle it was given
    return ray.get([handle.add.remote(2) for _ in range(times)])[-1]


ray.get([bump.remote(counter, 3) for _ in range(4)])
final = ray.get(counter.read.remote())
print("after the tasks:", final)
assert final == 15 + 4 * 3 * 2

# two actors of the same class hold separate state
other = Counter.remote()
assert ray.get(other.add.remote(7)) == 7
assert ray.get(counter.read.remote()) == final
