"""Placement groups: reserve resources as bundles before the work that needs them starts.
A learner and its rollout workers want their CPUs together, or none of them at all; a group
of bundles is reserved as a unit (``pg.ready()`` / ``pg.wait()``), and tasks and actors are
placed in a bundle with ``PlacementGroupSchedulingStrategy``. While the group holds every CPU,
work outside it waits; removing the group gives the CPUs back. A group no node can hold waits
(with a warning) instead of failing."""
import os

import nbray as ray
from nbray.util.placement_group import (placement_group, placement_group_table,
                                        remove_placement_group)
from nbray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

ray.init(num_cpus=2)


@ray.remote(num_cpus=1)
def rollout(seed):
    return seed * seed, os.getpid()


@ray.remote(num_cpus=1)
class Learner:
    def __init__(self):
        self.seen = []

    def learn(self, results):
        self.seen.extend(results)
        return sum(self.seen)


pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="PACK", name="experiment")
assert pg.wait(timeout_seconds=30), "the group should fit on this 2-CPU node"
print("reserved:", placement_group_table(pg)["bundles"])

learner = Learner.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0)).remote()
in_bundle_1 = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=1)
results = ray.get([rollout.options(scheduling_strategy=in_bundle_1).remote(s)
                   for s in range(6)])
squares = [r for r, _ in results]
assert squares == [s * s for s in range(6)]
assert len({pid for _, pid in results}) == 1        # one bundle, one CPU: one worker
assert ray.get(learner.learn.remote(squares)) == sum(squares)

outside = rollout.remote(7)                         # the group holds both CPUs
ready, _ = ray.wait([outside], timeout=0.5)
assert ready == [], "a task outside the group should wait for a CPU"
remove_placement_group(pg)                          # ends the learner, frees the CPUs
assert ray.get(outside, timeout=30)[0] == 49

too_big = placement_group([{"CPU": 8}])             # more than any node has: it waits
assert not too_big.wait(timeout_seconds=0.5)
assert placement_group_table(too_big)["state"] == "PENDING"
remove_placement_group(too_big)
print("placement groups: ok")
