"""``nbray demo``: a short, real workload on an embedded cluster.

It exercises the parts of the core API one meets first:

* many independent tasks: a Monte Carlo estimate of pi, one numpy sampler per task;
* a dependent task: ``combine`` takes the samplers' refs as arguments and runs once they are done;
* one large array ``put`` once and read by many tasks straight from shared memory (no copies);
* a task that submits sub-tasks of its own and waits for them (nested tasks);
* ``nbray.wait`` driving a progress bar as results arrive.

Run it with ``nbray demo`` or ``python -m nbray.demo``.
"""
from __future__ import annotations

import math
import os
import sys
import time

import numpy as np
from tqdm import tqdm

import nbray

SAMPLES_PER_TASK = 1_000_000
SHARED_ARRAY_MB = 64


@nbray.remote
def sample_pi(seed: int, n: int) -> int:
    """Points of the unit square that fall inside the quarter circle, out of ``n``."""
    rng = np.random.default_rng(seed)
    inside = 0
    left = n
    while left:                     # in chunks, so a task's memory stays small
        k = min(left, 250_000)
        x = rng.random(k)
        y = rng.random(k)
        inside += int(np.count_nonzero(x * x + y * y <= 1.0))
        left -= k
    return inside


@nbray.remote
def combine(*counts: int) -> int:
    """The reduce step: its arguments are refs, so it runs when every sampler has finished."""
    return int(sum(counts))


@nbray.remote
def nested_pi(first_seed: int, parts: int, n: int) -> int:
    """A task that fans out sub-tasks of its own and gathers them."""
    refs = [sample_pi.remote(first_seed + i, n) for i in range(parts)]
    return int(sum(nbray.get(refs)))


@nbray.remote
def chunk_stats(data: np.ndarray, start: int, stop: int) -> tuple:
    """Statistics of a slice of the shared array; ``data`` is a read-only view of shared pages."""
    part = data[start:stop]
    return float(part.sum()), float((part * part).sum()), int(part.size), \
        bool(data.flags.writeable)


def _n(k: int, word: str) -> str:
    return f"{k} {word}{'' if k == 1 else 's'}"


def _drain(refs: list, bar: tqdm) -> None:
    """Advance the bar as results arrive, using nbray.wait (which returns refs in order)."""
    pending = list(refs)
    while pending:
        ready, pending = nbray.wait(pending, num_returns=len(pending), timeout=0.1)
        if ready:
            bar.update(len(ready))


def main(num_tasks: int = 200, num_workers: int | None = None) -> int:
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be at least 1, got {num_tasks}")
    t0 = time.perf_counter()
    ctx = nbray.init(num_workers=num_workers)
    try:
        return _run(ctx, num_tasks, t0)
    finally:
        nbray.shutdown()


def _run(ctx, num_tasks: int, t0: float) -> int:
    started = time.perf_counter() - t0
    print(f"nbray demo: embedded cluster {ctx.session} with {ctx.num_workers} workers "
          f"(started in {started:.2f}s)")
    n = SAMPLES_PER_TASK
    num_chunks = max(4, num_tasks // 4)
    nested_parts = max(2, min(16, num_tasks // 10))

    # a large array, put once: every chunk_stats task maps the same shared-memory segment
    rng = np.random.default_rng(2024)
    data = rng.standard_normal(SHARED_ARRAY_MB * 1024 * 1024 // 8)
    t_put = time.perf_counter()
    data_ref = nbray.put(data)
    put_s = time.perf_counter() - t_put

    t_work = time.perf_counter()
    samplers = [sample_pi.remote(seed, n) for seed in range(num_tasks)]
    total_ref = combine.remote(*samplers)                 # dependent: runs after all samplers
    nested_ref = nested_pi.remote(10_000_000, nested_parts, n)
    bounds = np.linspace(0, data.size, num_chunks + 1).astype(int)
    stats = [chunk_stats.remote(data_ref, int(a), int(b)) for a, b in zip(bounds, bounds[1:])]

    everything = [*samplers, total_ref, nested_ref, *stats]
    with tqdm(total=len(everything), desc="results", unit="result", file=sys.stderr,
              dynamic_ncols=True, leave=True) as bar:
        _drain(everything, bar)

    inside = nbray.get(total_ref)
    nested_inside = nbray.get(nested_ref)
    chunk_results = nbray.get(stats)
    wall = time.perf_counter() - t_work

    samples = num_tasks * n + nested_parts * n
    pi = 4.0 * (inside + nested_inside) / samples
    s1 = sum(c[0] for c in chunk_results)
    s2 = sum(c[1] for c in chunk_results)
    count = sum(c[2] for c in chunk_results)
    shared_ok = count == data.size and not any(c[3] for c in chunk_results) \
        and math.isclose(s1, float(data.sum()), rel_tol=1e-9, abs_tol=1e-6)
    mean = s1 / count
    std = math.sqrt(max(0.0, s2 / count - mean * mean))
    # every task: the samplers, combine, nested_pi and its sub-tasks, and the chunk tasks
    num_run = num_tasks + 1 + 1 + nested_parts + num_chunks

    print()
    print("Summary")
    print(f"  cluster:         {ctx.num_workers} workers, resources "
          + ", ".join(f"{k} {v:g}" for k, v in sorted(ctx.resources.items())))
    print(f"  tasks run:       {num_run}  ({_n(num_tasks, 'sampler')}, 1 reduce, 1 nested task "
          f"with {nested_parts} sub-tasks, {num_chunks} shared-array tasks)")
    print(f"  wall time:       {wall:.2f}s  ({num_run / wall:,.0f} tasks/s; cluster start "
          f"{started:.2f}s)")
    print(f"  pi estimate:     {pi:.6f} from {samples / 1e6:,.0f}M samples "
          f"(error {abs(pi - math.pi):.1e}; {samples / wall / 1e6:,.0f}M samples/s)")
    print(f"  shared array:    {data.nbytes / 2**20:.0f} MB put once in {put_s:.2f}s, read by "
          f"{num_chunks} tasks without copies: mean {mean:+.5f}, std {std:.5f} "
          f"({'matches' if shared_ok else 'DOES NOT MATCH'} the local result)")
    return 0 if shared_ok else 1


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 200))
