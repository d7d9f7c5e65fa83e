"""Sharing one large array with many tasks. ``ray.put`` stores the array once in the
object store and returns a ref; passing that ref to every task lets each read the same
stored copy (on one machine, a read-only view of shared memory) instead of serialising the
array anew for each call. The tasks each compute a partial statistic over a slice."""
import numpy as np

import nbray as ray

ray.init(num_cpus=2)

matrix = np.arange(2_000_000, dtype=np.float64).reshape(1000, 2000)   # 16 MB
matrix_ref = ray.put(matrix)


@ray.remote
def row_block_sum(m, start, stop):
    # m arrives as the array itself, not as a ref
    assert isinstance(m, np.ndarray) and not m.flags.writeable
    return float(m[start:stop].sum())


blocks = [(i, i + 100) for i in range(0, 1000, 100)]
partial = ray.get([row_block_sum.remote(matrix_ref, a, b) for a, b in blocks])
print(f"{len(partial)} tasks read one stored copy; total = {sum(partial):.0f}")
assert sum(partial) == float(matrix.sum())

# getting the ref back in the driver gives an equal array
assert np.array_equal(ray.get(matrix_ref), matrix)
ray.shutdown()
