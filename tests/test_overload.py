"""Admission control and a full object store, on a real cluster: each overload policy (block,
raise, block with a timeout) for a driver, a function and an actor's calls; that a refused
submission submits nothing and an admitted one completes; a store that cannot hold a value
refuses it with ObjectStoreFullError, frees what it can first, and the cluster goes on."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import nbray
from conftest import shutdown_and_check, wait_until

pytestmark = pytest.mark.timeout(120)


@nbray.remote
def wait_for(marker, value=None):
    while not os.path.exists(marker):
        time.sleep(0.01)
    return value


@nbray.remote
def quick(x):
    return x


@nbray.remote
class Gate:
    def wait(self, marker, value):
        while not os.path.exists(marker):
            time.sleep(0.01)
        return value


@nbray.remote
def nested(marker, n):
    inner = wait_for.options(max_pending=1)
    refs = [inner.remote(marker, i) for i in range(n)]      # blocks for room, in a worker
    return nbray.get(refs)


@pytest.fixture
def limited(no_cluster):
    nbray.init(num_workers=2, max_pending=3, on_overload="raise")
    yield
    shutdown_and_check()


def _records(name):
    return [r for r in nbray.state.tasks(pending=False) if r["name"] == name]


def test_a_driver_over_its_limit_is_refused_and_nothing_is_submitted(limited, tmp_path):
    marker = str(tmp_path / "go")
    held = [wait_for.remote(marker, i) for i in range(3)]
    with pytest.raises(nbray.OverloadedError, match="this driver already has 3 unfinished"):
        quick.remote("refused")
    assert len(nbray.state.tasks(finished=False)) == 3           # the refused one is not there
    Path(marker).touch()
    assert nbray.get(held) == [0, 1, 2]
    assert nbray.get(quick.remote("room again")) == "room again"
    assert nbray.get(quick.options(max_pending=-1).remote(1)) == 1   # no limit at all


def test_block_waits_for_room_then_submits(cluster, tmp_path):
    marker = str(tmp_path / "go")
    f = wait_for.options(max_pending=2)                         # on_overload="block"
    first = [f.remote(marker, i) for i in range(2)]
    out, started = [], threading.Event()

    def third():
        started.set()
        out.append(f.remote(marker, 2))
    t = threading.Thread(target=third)
    t.start()
    started.wait(10)
    t.join(0.5)
    assert t.is_alive() and not out                             # still waiting for room
    Path(marker).touch()
    t.join(30)
    assert not t.is_alive()
    assert nbray.get(first + out) == [0, 1, 2]


def test_block_with_a_timeout_raises_when_it_runs_out(cluster, tmp_path):
    marker = str(tmp_path / "go")
    f = wait_for.options(max_pending=1, overload_timeout=0.2)
    held = f.remote(marker, 1)
    t0 = time.monotonic()
    with pytest.raises(nbray.OverloadedError, match="after waiting for 0.2s"):
        f.remote(marker, 2)
    assert time.monotonic() - t0 >= 0.2
    Path(marker).touch()
    assert nbray.get(held) == 1


def test_an_actors_calls_are_bounded_per_handle(cluster, tmp_path):
    marker = str(tmp_path / "go")
    gate = Gate.options(max_pending_calls=2, on_overload="raise").remote()
    calls = [gate.wait.remote(marker, i) for i in range(2)]
    with pytest.raises(nbray.OverloadedError, match="actor Gate already has 2 unfinished "
                                                    "calls"):
        gate.wait.remote(marker, 3)
    Path(marker).touch()
    assert nbray.get(calls) == [0, 1]
    assert nbray.get(gate.wait.remote(marker, 4)) == 4


def test_a_task_that_blocks_for_room_in_a_worker_does_not_deadlock(cluster, tmp_path):
    marker = tmp_path / "go"
    marker.touch()
    assert nbray.get(nested.remote(str(marker), 5), timeout=60) == [0, 1, 2, 3, 4]


def test_bad_admission_options_are_clear_errors(cluster):
    with pytest.raises(ValueError, match="max_pending must be a positive integer"):
        quick.options(max_pending=0)
    with pytest.raises(ValueError, match="on_overload must be one of"):
        quick.options(max_pending=2, on_overload="drop")
    with pytest.raises(ValueError, match="overload_timeout"):
        quick.options(max_pending=2, overload_timeout=-1)
    with pytest.raises(ValueError, match="max_pending_calls"):
        Gate.options(max_pending_calls=0)


# ---- the bounds of the queues ----------------------------------------------------------------
@nbray.remote
def knobs():
    from nbray.config import CONFIG
    from nbray.runtime import core_client
    assert core_client.current().default_limit.max_pending == CONFIG.max_pending
    return CONFIG.max_pending, CONFIG.node_queue_max, CONFIG.max_tasks_in_flight


@nbray.remote
def fan_out(marker, n):
    refs = [wait_for.remote(marker, i) for i in range(n)]   # the process bound: 3 at a time
    return nbray.get(refs)


def _node_stats():
    from nbray import api
    from nbray.runtime import cluster, protocol as P
    record = api._driver.record
    return cluster.ask(record, record.node_address, P.NodeInfoRequest(), 10).info


def test_every_process_of_a_cluster_has_the_bounds_init_sets(no_cluster, tmp_path):
    from nbray.config import CONFIG
    nbray.init(num_workers=2, _system_config={"max_pending": 3, "node_queue_max": 50,
                                              "max_tasks_in_flight": 8})
    try:
        assert nbray.get(knobs.remote()) == (3, 50, 8)              # in the workers too
        assert _node_stats()["lease_queue_max"] == 50               # and in the node
        client = nbray.runtime.core_client.current()
        assert client.default_limit.max_pending == 3
        marker = tmp_path / "go"
        marker.touch()
        # a task submitting more than its bound waits for room, and all of it runs
        assert nbray.get(fan_out.remote(str(marker), 10), timeout=60) == list(range(10))
        held = [wait_for.remote(str(tmp_path / "later"), i) for i in range(3)]
        t = threading.Thread(target=lambda: held.append(quick.remote("fourth")))
        t.start()
        t.join(0.5)
        assert t.is_alive() and len(held) == 3                      # the driver's bound
        (tmp_path / "later").touch()
        t.join(30)
        assert nbray.get(held, timeout=30) == [0, 1, 2, "fourth"]
    finally:
        shutdown_and_check()
    assert (CONFIG.max_pending, CONFIG.node_queue_max) == (100_000, 10_000)    # as before
    assert "NBRAY_MAX_PENDING" not in os.environ


def test_by_default_a_process_has_a_bound(cluster):
    client = nbray.runtime.core_client.current()
    assert client.default_limit.max_pending == 100_000 and client.default_limit.policy == "block"
    assert nbray.get(knobs.remote())[0] == 100_000


def test_a_full_node_queue_answers_busy_and_every_task_still_runs(no_cluster, tmp_path):
    nbray.init(num_workers=2, resources={"slot": 10}, _system_config={"node_queue_max": 1})
    try:
        marker = str(tmp_path / "go")
        held = [wait_for.remote(marker, i) for i in range(2)]       # both CPUs taken
        wait_until(lambda: _node_stats()["resources_available"]["CPU"] == 0, 20,
                   "both workers leased")
        # five task shapes ask for leases the node cannot grant yet: one request waits in
        # its queue, the others are answered busy and asked again until there is room
        shapes = [quick.options(resources={"slot": (k + 1) / 10}) for k in range(5)]
        refs = [f.remote(k * 10 + i) for k, f in enumerate(shapes) for i in range(4)]
        client = nbray.runtime.core_client.current()
        wait_until(lambda: client.stats["leases_busy"] >= 2, 20, "busy answers")
        stats = _node_stats()
        assert stats["lease_queue"] <= 1 and stats["leases_busy"] >= 2
        Path(marker).touch()
        assert nbray.get(refs, timeout=60) == [k * 10 + i for k in range(5) for i in range(4)]
        assert nbray.get(held) == [0, 1]
    finally:
        shutdown_and_check()


def test_a_full_node_queue_still_grants_what_fits_now(no_cluster, tmp_path):
    nbray.init(num_workers=2, resources={"slot": 1}, _system_config={"node_queue_max": 1})
    try:
        marker = str(tmp_path / "go")
        slot = wait_for.options(resources={"slot": 1})
        held = [slot.remote(marker, i) for i in range(2)]   # one runs, one waits: queue full
        wait_until(lambda: _node_stats()["lease_queue"] == 1, 20, "a request queued")
        assert nbray.get(quick.remote("a CPU is free"), timeout=20) == "a CPU is free"
        Path(marker).touch()
        assert nbray.get(held, timeout=30) == [0, 1]
    finally:
        shutdown_and_check()


def test_a_group_larger_than_the_process_bound_is_submitted_whole(no_cluster):
    nbray.init(num_workers=2, _system_config={"max_pending": 3})
    try:
        with nbray.util.group():
            refs = [quick.remote(i) for i in range(10)]     # held: room never comes
            bounded = quick.options(max_pending=2)
            refs += [bounded.remote(i) for i in range(10, 12)]
            with pytest.raises(nbray.OverloadedError, match="inside nbray.util.group"):
                bounded.remote("a third, past its own bound")
        assert nbray.get(refs, timeout=30) == list(range(12))
    finally:
        shutdown_and_check()


def test_bad_system_config_is_a_clear_error(no_cluster):
    with pytest.raises(ValueError, match="unknown system config 'max_pendin'"):
        nbray.init(num_workers=1, _system_config={"max_pendin": 3})
    with pytest.raises(ValueError, match="node_queue_max takes a int"):
        nbray.init(num_workers=1, _system_config={"node_queue_max": "many"})
    with pytest.raises(ValueError, match="must be >= 1"):
        nbray.init(num_workers=1, _system_config={"node_queue_max": 0})
    with pytest.raises(ValueError, match="actor_inflight_max must be >= 1"):
        nbray.init(num_workers=1, _system_config={"actor_inflight_max": 0})
    with pytest.raises(ValueError, match=r"max_pending must be >= 1 \(or -1"):
        nbray.init(num_workers=1, _system_config={"max_pending": 0})
    with pytest.raises(ValueError, match="must be >= 0"):
        nbray.init(num_workers=1, _system_config={"heartbeat_s": -1.0})
    with pytest.raises(ValueError, match="node_queue_max configures a new cluster"):
        nbray.init(address="127.0.0.1:1", _system_config={"node_queue_max": 5})
    assert not nbray.is_initialized()


# ---- the object store --------------------------------------------------------------------------
@nbray.remote
def make_array(n):
    return np.ones(n)


def test_a_full_store_refuses_with_a_clear_error_and_frees_what_it_can(no_cluster):
    nbray.init(num_workers=1, object_store_memory=50_000_000)
    try:
        a = nbray.put(np.ones(2_000_000))                       # 16 MB each
        b = nbray.put(np.ones(2_000_000))
        with pytest.raises(nbray.ObjectStoreFullError, match="object_store_memory"):
            nbray.put(np.ones(4_000_000))                       # 32 MB more: refused
        del a                                                   # freed before refusing
        c = nbray.put(np.ones(3_000_000))
        with pytest.raises(nbray.ObjectStoreFullError):         # a result too big for it
            nbray.get(make_array.remote(5_000_000))
        assert nbray.get(make_array.remote(10)).sum() == 10     # the cluster goes on
        assert nbray.get(b).sum() == 2_000_000 and nbray.get(c).sum() == 3_000_000
    finally:
        shutdown_and_check()
    assert "NBRAY_OBJECT_STORE_MEMORY" not in os.environ       # back as it was
    wait_until(lambda: not nbray.is_initialized(), 5, "shutdown")


def test_an_actors_mailbox_holds_a_bounded_number_of_calls(cluster, tmp_path, monkeypatch):
    from nbray.config import CONFIG
    monkeypatch.setattr(CONFIG, "actor_inflight_max", 5)
    marker = str(tmp_path / "go")
    gate = Gate.remote()
    calls = [gate.wait.remote(marker, i) for i in range(40)]
    client = nbray.runtime.core_client.current()
    actor = client.actors.actors[gate._actor_id]
    wait_until(lambda: len(actor.inflight) == 5, 10, "five calls pushed to the actor")
    assert len(actor.pending) == 35                 # the rest wait with the caller
    Path(marker).touch()
    assert nbray.get(calls, timeout=60) == list(range(40))     # in order, none lost


FLOOD = """
import sys, time, nbray
nbray.init(address=sys.argv[1])

@nbray.remote
def work():
    time.sleep(0.005)

refs = [work.remote() for _ in range(20000)]        # far more than the cluster does in 30 s
print("FLOODING", flush=True)
nbray.get(refs, progress=False)
"""


def test_a_flooded_cluster_still_answers_status_and_another_drivers_tasks(tmp_path,
                                                                         monkeypatch,
                                                                         no_cluster):
    import subprocess
    import sys
    from test_multinode import MultiNode
    from nbray.config import CONFIG
    root = str(tmp_path / "run")
    monkeypatch.setattr(CONFIG, "run_root", root)
    m = MultiNode(root)
    m.start(num_workers=2)
    script = tmp_path / "flood.py"
    script.write_text(FLOOD)
    env = dict(os.environ, NBRAY_RUN_ROOT=root)
    flood = subprocess.Popen([sys.executable, str(script), m.address], env=env,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert flood.stdout.readline().strip() == "FLOODING"
        status = subprocess.run([sys.executable, "-m", "nbray.cli", "status"], env=env,
                                capture_output=True, text=True, timeout=30)
        assert status.returncode == 0 and "1 node" in status.stdout
        nbray.init(address=m.address)
        # another driver's small tasks get workers within seconds, not after the flood
        assert nbray.get([quick.remote(i) for i in range(10)], timeout=20) == list(range(10))
        assert flood.poll() is None                 # the flood goes on meanwhile
    finally:
        flood.kill()
        flood.wait()
        flood.stdout.close()
        m.stop()
