"""Memory flatness: a long stream of tasks leaves the driver's tables (and /dev/shm) as they were."""
from __future__ import annotations

import gc

import numpy as np
import psutil
import pytest

import nbray
from conftest import wait_until

pytestmark = pytest.mark.timeout(90)

TASKS = 20_000
BATCH = 1_000


@nbray.remote
def noop():
    return None


@nbray.remote
def small(i):
    return i


def _table_sizes(client):
    return len(client.objects), len(client.tasks)


def test_many_noop_tasks_are_freed(cluster):
    client = cluster.client
    base_objects, base_tasks = _table_sizes(client)
    done = 0
    for _ in range(TASKS // BATCH):
        refs = [noop.remote() for _ in range(BATCH)]
        assert nbray.get(refs, timeout=60) == [None] * BATCH
        done += len(refs)
        del refs
    assert done == TASKS
    gc.collect()
    wait_until(lambda: _table_sizes(client)[0] <= base_objects + 5, 20,
               f"the driver's object table to drain (now {len(client.objects)} entries)")
    wait_until(lambda: _table_sizes(client)[1] <= base_tasks, 20,
               f"the driver's task table to drain (now {len(client.tasks)} entries)")
    assert cluster.segments() == []


def test_driver_memory_is_flat_over_batches(cluster):
    """After a warm-up, more batches of tasks must not grow the driver's RSS much."""
    proc = psutil.Process()

    def run_batches(n):
        for b in range(n):
            refs = [small.remote(i) for i in range(BATCH)]
            assert nbray.get(refs, timeout=60)[-1] == BATCH - 1
            del refs
        gc.collect()
        wait_until(lambda: len(cluster.client.objects) <= 5, 20, "the object table to drain")

    run_batches(3)
    rss_before = proc.memory_info().rss
    run_batches(10)
    growth = proc.memory_info().rss - rss_before
    assert growth < 30 * 1024 * 1024, f"driver RSS grew by {growth / 2**20:.1f} MiB"


def test_large_results_stream_is_freed(cluster):
    @nbray.remote
    def chunk(i):
        return np.full(250_000, i, dtype=np.float64)      # 2 MB: shared memory

    for start in range(0, 40, 10):
        refs = [chunk.remote(i) for i in range(start, start + 10)]
        arrays = nbray.get(refs, timeout=60)
        assert [float(a[0]) for a in arrays] == [float(i) for i in range(start, start + 10)]
        del refs, arrays
    gc.collect()
    wait_until(lambda: not cluster.segments(), 20,
               f"result segments to be freed ({len(cluster.segments())} left)")
    wait_until(lambda: len(cluster.client.objects) <= 5, 20, "the object table to drain")
