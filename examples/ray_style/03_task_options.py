"""Several return values and per-call options. ``num_returns=2`` makes a task give back two
refs, one per element of the tuple it returns, so each half can be passed on or fetched on
its own. ``.options(...)`` changes a remote function's settings for one call only -- here the
CPUs a task asks for and the name it is known by -- and leaves the function itself as it was."""
import nbray as ray

ray.init(num_cpus=2)


@ray.remote(num_returns=2)
def split_even_odd(xs):
    return [x for x in xs if x % 2 == 0], [x for x in xs if x % 2 == 1]


@ray.remote
def count(xs):
    return len(xs)


evens_ref, odds_ref = split_even_odd.remote(list(range(11)))
assert ray.get(evens_ref) == [0, 2, 4, 6, 8, 10]
assert ray.get(odds_ref) == [1, 3, 5, 7, 9]
# one of the two outputs can feed another task directly
assert ray.get(count.remote(odds_ref)) == 5


@ray.remote
def heavy(x):
    return x + 1


# this call reserves both CPUs and carries its own name; other calls keep the defaults
big = heavy.options(num_cpus=2, name="heavy-two-cpus").remote(41)
small = [heavy.remote(i) for i in range(4)]
print("with options:", ray.get(big), "without:", ray.get(small))
assert ray.get(big) == 42
assert ray.get(small) == [1, 2, 3, 4]


ray.shutdown()
