"""Tree reduction and divide and conquer. Instead of folding many partial results one after
another, pairs of refs are combined by tasks, level by level, so the combining work itself
runs in parallel and takes log2(n) rounds. The second half sorts a list by splitting it,
sorting the halves in child tasks and merging them, recursing until the pieces are small."""
import random

import nbray as ray

ray.init(num_cpus=2)


@ray.remote
def histogram(seed, bins=8):
    rng = random.Random(seed)
    counts = [0] * bins
    for _ in range(2000):
        counts[rng.randrange(bins)] += 1
    return counts


@ray.remote
def combine(a, b):
    return [x + y for x, y in zip(a, b)]


level = [histogram.remote(s) for s in range(16)]
rounds = 0
while len(level) > 1:
    pairs = zip(level[0::2], level[1::2])
    level = [combine.remote(a, b) for a, b in pairs] + (level[-1:] if len(level) % 2 else [])
    rounds += 1
merged = ray.get(level[0])
print(f"merged 16 histograms in {rounds} rounds: {merged}")
assert rounds == 4 and sum(merged) == 16 * 2000


@ray.remote
def merge_sort(xs, cutoff=500):
    if len(xs) <= cutoff:
        return sorted(xs)
    mid = len(xs) // 2
    left, right = ray.get([merge_sort.remote(xs[:mid]), merge_sort.remote(xs[mid:])])
    out, i, j = [], 0, 0
    while i < len(left) and j < len(right):
        if left[i] <= right[j]:
            out.append(left[i]); i += 1
        else:
            out.append(right[j]); j += 1
    return out + left[i:] + right[j:]


data = [random.randrange(10_000) for _ in range(2000)]
assert ray.get(merge_sort.remote(data)) == sorted(data)
print("divide-and-conquer sort agrees with sorted()")
