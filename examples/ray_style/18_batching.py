"""Batching small pieces of work. Each task has a fixed cost to schedule and to ship its
arguments and result, so thousands of tiny items are better grouped into a few batches, one
task per batch, each processing its items in a plain loop. The batched run gives exactly the
same answers, in the same order, as processing the items one by one locally."""
import nbray as ray


def normalise(word):
    return word.strip().lower()[::-1]


@ray.remote
def normalise_batch(words):
    return [normalise(w) for w in words]


words = [f"  Word{i}  " for i in range(5000)]
BATCH = 1000
batches = [words[i:i + BATCH] for i in range(0, len(words), BATCH)]
out = [w for part in ray.get([normalise_batch.remote(b) for b in batches]) for w in part]
print(f"{len(words)} items in {len(batches)} tasks; first: {out[0]!r}")
assert out == [normalise(w) for w in words]
