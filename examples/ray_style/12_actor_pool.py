"""A pool of actors and methods with several results. ``ray.util.ActorPool`` hands work to
whichever of its actors is idle: ``map`` yields results in input order, ``map_unordered`` as
they finish. ``@ray.method(num_returns=2)`` on an actor method makes each call return two
refs, one for each element of the returned tuple."""
import time

import nbray as ray
from nbray.util import ActorPool

ray.init(num_cpus=2)


@ray.remote
class Scorer:
    def score(self, x):
        time.sleep(0.02 * (x % 3))          # uneven work
        return x * x

    @ray.method(num_returns=2)
    def min_max(self, xs):
        return min(xs), max(xs)


actors = [Scorer.remote() for _ in range(3)]
pool = ActorPool(actors)

ordered = list(pool.map(lambda a, v: a.score.remote(v), range(12)))
assert ordered == [x * x for x in range(12)]

unordered = list(pool.map_unordered(lambda a, v: a.score.remote(v), range(12)))
print("map_unordered gave:", unordered)
assert sorted(unordered) == ordered

low_ref, high_ref = actors[0].min_max.remote([5, 3, 9, 1])
assert ray.get([low_ref, high_ref]) == [1, 9]
