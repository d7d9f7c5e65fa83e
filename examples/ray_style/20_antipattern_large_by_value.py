"""Anti-pattern: passing a large value by value to many tasks. Handing the same big array to
each of many ``.remote()`` calls stores one more copy of it for every call. Putting it in the
object store once with ``ray.put`` and passing the ref lets every task read the single
stored copy. Both give the same answer; the timings are printed, not checked."""
import time

import numpy as np

import nbray as ray

ray.init(num_cpus=2)
weights = np.random.default_rng(0).random((500, 500))    # 2 MB


@ray.remote
def score(w, row):
    return float(w[row].sum())


ray.get(score.remote(np.ones((1, 1)), 0))                  # the workers are up

start = time.perf_counter()
bad = ray.get([score.remote(weights, r) for r in range(40)])       # 40 copies of 2 MB
bad_s = time.perf_counter() - start

start = time.perf_counter()
weights_ref = ray.put(weights)                                     # one copy
good = ray.get([score.remote(weights_ref, r) for r in range(40)])
good_s = time.perf_counter() - start

print(f"by value: {bad_s:.2f} s; ray.put once: {good_s:.2f} s")
assert bad == good
assert np.allclose(good, weights[:40].sum(axis=1))
