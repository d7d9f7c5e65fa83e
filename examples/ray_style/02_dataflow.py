"""Dataflow and nested tasks. An ObjectRef can be handed straight to another task: the
second task waits until the value exists and receives the value itself, not the ref, so a
chain of tasks forms a graph without the driver fetching anything in between. A task may also
launch tasks of its own and wait for them; here ``fan_out`` splits its work into children,
and the worker that waits lends its CPU so the children still get to run."""
import nbray as ray

ray.init(num_cpus=2)


@ray.remote
def load(n):
    return list(range(n))


@ray.remote
def scale(xs, k):
    return [k * x for x in xs]


@ray.remote
def total(xs):
    return sum(xs)


# load -> scale -> total, linked by refs; only the final value comes back to the driver
data = load.remote(10)
scaled = scale.remote(data, 3)
result = total.remote(scaled)
print("sum of 3*x for x < 10:", ray.get(result))
assert ray.get(result) == 3 * 45


@ray.remote
def square(x):
    return x * x


@ray.remote
def fan_out(n):
    # a task that submits tasks and collects their results
    children = [square.remote(i) for i in range(n)]
    return sum(ray.get(children))


outer = [fan_out.remote(n) for n in (4, 6)]
sums = ray.get(outer)
print("sums of squares:", sums)
assert sums == [sum(i * i for i in range(n)) for n in (4, 6)]

ray.shutdown()
