"""Backends (``nbray/backends/``): choosing one, and what the Ray backend adds to Ray.

The tests that hold on every backend live in their own modules (``any_cluster``); these are
about the seam itself. Those marked ``ray`` run on the session's local Ray cluster (a head and
one more node): ``pytest -m ray``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import nbray
from nbray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

pytestmark = pytest.mark.timeout(120)


# ---- choosing a backend (no engine needed) --------------------------------------------------
def test_unknown_backend_is_a_clear_error(no_cluster):
    with pytest.raises(ValueError, match="unknown backend 'dask'.*'ray'"):
        nbray.init(backend="dask")
    assert not nbray.is_initialized()


def test_another_engines_options_are_refused_by_nbrays_runtime(no_cluster):
    with pytest.raises(TypeError, match="include_dashboard"):
        nbray.init(include_dashboard=False)
    assert not nbray.is_initialized()


def test_a_missing_ray_says_how_to_install_it():
    """NBRAY_BACKEND=ray chooses Ray for init(); without Ray installed nbray still imports,
    init() says how to install Ray, and the API used before init() says to call it."""
    code = ("import sys; sys.modules['ray'] = None\n"      # as if Ray were not installed
            "import nbray\n"
            "try:\n"
            "    nbray.init()\n"
            "except ImportError as e:\n"
            "    print('INIT', e)\n"
            "try:\n"
            "    nbray.put(1)\n"
            "except nbray.errors.NotInitializedError as e:\n"
            "    print('PUT', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "NBRAY_BACKEND": "ray"})
    assert 'INIT the ray backend needs Ray: pip install "nbray[ray]"' in out.stdout, \
        out.stdout + out.stderr
    assert "PUT NBRAY_BACKEND=ray: call nbray.init() first" in out.stdout, out.stdout
    assert not out.stderr.strip(), out.stderr


# ---- the Ray backend --------------------------------------------------------------------------
@nbray.remote
def square(x):
    return x * x


@nbray.remote
def fan_out(n):
    """nbray's API inside a task on Ray: the same Ray cluster (the refs are Ray's)."""
    import ray
    refs = [square.remote(i) for i in range(n)]
    return sum(nbray.get(refs)), all(type(r) is ray.ObjectRef for r in refs)


@nbray.remote
def where():
    return nbray.get_runtime_context().get_node_id()


@nbray.remote(max_retries=0)
def crash():
    os._exit(3)


@nbray.remote
def sleeper(seconds):
    time.sleep(seconds)
    return seconds


@nbray.remote
class Holder:
    def __init__(self):
        self.items = []

    def add(self, x):
        self.items.append(x)
        return len(self.items)

    def squares(self, n):
        return nbray.get([square.remote(i) for i in range(n)])

    def die(self):
        os._exit(4)


@pytest.mark.ray
def test_refs_and_handles_are_rays_own_with_no_copy(ray_driver):
    import ray
    ref = square.remote(4)
    assert type(ref) is ray.ObjectRef and isinstance(ref, nbray.ObjectRef)
    assert ray.get(ref) == 16 == nbray.get(ref)
    array = np.arange(1_000_000, dtype=np.float64)
    stored = nbray.put(array)
    assert type(stored) is ray.ObjectRef
    back = nbray.get(stored)
    # read straight from Ray's shared-memory store: Ray maps it read-only, nbray adds no copy
    assert np.array_equal(back, array) and not back.flags.writeable
    h = Holder.remote()
    assert type(h) is ray.actor.ActorHandle and isinstance(h, nbray.ActorHandle)
    assert ray.get(h.add.remote(1)) == 1


@pytest.mark.ray
def test_the_api_inside_tasks_and_actors_speaks_to_the_same_cluster(ray_driver):
    assert nbray.get(fan_out.remote(10)) == (sum(i * i for i in range(10)), True)
    assert nbray.get(Holder.remote().squares.remote(5)) == [0, 1, 4, 9, 16]


@pytest.mark.ray
def test_options_only_nbrays_runtime_has_are_a_clear_error(ray_driver):
    with pytest.raises(NotImplementedError, match="max_pending.*ray backend"):
        square.options(max_pending=2).remote(1)
    with pytest.raises(NotImplementedError, match="on_overload.*ray backend"):
        Holder.options(on_overload="raise").remote()
    with pytest.raises(NotImplementedError, match="max_pending_calls.*ray backend"):
        Holder.options(max_pending_calls=3).remote()
    with pytest.raises(TypeError, match="refs are its own"):
        nbray.ObjectRef(b"\0" * 20)


@pytest.mark.ray
def test_rays_errors_arrive_as_nbrays(ray_driver):
    with pytest.raises(nbray.WorkerCrashedError):
        nbray.get(crash.remote(), timeout=60)
    slow = sleeper.remote(60)
    with pytest.raises(nbray.GetTimeoutError):
        nbray.get(slow, timeout=0.2)
    nbray.cancel(slow, force=True)
    with pytest.raises(nbray.TaskCancelledError):
        nbray.get(slow, timeout=60)
    h = Holder.remote()
    assert nbray.get(h.add.remote(1)) == 1
    with pytest.raises(nbray.ActorDiedError):
        nbray.get(h.die.remote(), timeout=60)
    with pytest.raises(nbray.ActorDiedError):
        nbray.get(h.add.remote(2), timeout=60)
    assert nbray.get(square.remote(3)) == 9          # the cluster works on


@pytest.mark.ray
def test_node_affinity_places_a_task_on_the_node_asked_for(ray_driver):
    nodes = [n for n in nbray.nodes() if n["Alive"]]
    assert len(nodes) == 2
    for node in nodes:
        strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        assert nbray.get(where.options(scheduling_strategy=strategy).remote()) == \
            node["NodeID"]
    assert nbray.cluster_resources()["CPU"] == 4


@pytest.mark.ray
def test_what_only_nbrays_runtime_has_is_a_clear_error_naming_it(ray_driver):
    with pytest.raises(NotImplementedError, match="ray backend"):
        nbray.util.placement_group.placement_group([{"CPU": 1}])


@pytest.mark.ray
def test_rays_own_placement_groups_and_strategies_pass_through(ray_driver):
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    pg = placement_group([{"CPU": 1}], strategy="STRICT_PACK")
    nbray.get(pg.ready(), timeout=60)
    try:
        inside = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)
        assert nbray.get(square.options(scheduling_strategy=inside).remote(5)) == 25
        h = Holder.options(scheduling_strategy=inside, num_cpus=1).remote()
        assert nbray.get(h.add.remote(1)) == 1
        nbray.kill(h)
    finally:
        remove_placement_group(pg)


@nbray.remote(max_retries=2)
def marks_then_sleeps(marker):
    with open(marker, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(3)
    return 42


@pytest.mark.ray
def test_chaos_kills_a_ray_worker_and_an_actor_and_nothing_is_lost(ray_driver, tmp_path):
    from conftest import pid_alive, wait_until
    marker = str(tmp_path / "pids")
    ref = marks_then_sleeps.remote(marker)
    pids = lambda: Path(marker).read_text().split() if os.path.exists(marker) else []  # noqa
    first = int(wait_until(pids, 30, "the task to start")[0])
    killed = nbray.chaos.kill_worker(pid=first)
    assert killed["pid"] == first
    wait_until(lambda: not pid_alive(first), 10, "the worker to die")
    assert nbray.get(ref, timeout=60) == 42                 # retried on another worker
    assert len(pids()) == 2
    h = Holder.options(max_restarts=1, max_task_retries=1).remote()
    assert nbray.get([h.add.remote(i) for i in range(3)]) == [1, 2, 3]
    nbray.chaos.kill_actor(h)       # as a crash: it restarts, empty (Ray kills it a little later)
    wait_until(lambda: _add_once(h) == 1, 60, "the restarted actor to answer afresh")
    with pytest.raises(NotImplementedError, match="running=.*ray backend"):
        nbray.chaos.kill_worker(running=ref)


@nbray.remote(max_retries=3)
def marks_then_waits(marker, gate):
    with open(marker, "a") as f:
        f.write(f"{nbray.get_runtime_context().get_node_id()}\n")
    while not os.path.exists(gate):     # until its node is killed (or, retried, at once)
        time.sleep(0.05)
    return os.getpid()


@pytest.mark.ray
def test_chaos_kills_a_ray_node_and_its_tasks_run_again_elsewhere(ray_cluster, ray_driver,
                                                                   tmp_path):
    from conftest import pid_alive, wait_until
    node = ray_cluster.add_node(num_cpus=2)
    try:
        ray_cluster.wait_for_nodes()
        doomed = node.node_id
        marker, gate = str(tmp_path / "nodes"), str(tmp_path / "gate")
        there = NodeAffinitySchedulingStrategy(doomed, soft=True)
        refs = [marks_then_waits.options(scheduling_strategy=there).remote(marker, gate)
                for _ in range(2)]

        def started():
            return Path(marker).read_text().split() if os.path.exists(marker) else []
        assert wait_until(lambda: len(started()) == 2 and started(), 60,
                          "both tasks to start on the new node") == [doomed] * 2
        killed = nbray.chaos.kill_node(doomed)
        assert killed["node_id"] == doomed
        wait_until(lambda: not pid_alive(killed["pid"]), 10, "the raylet to die")
        open(gate, "w").close()
        assert len(nbray.get(refs, timeout=120)) == 2      # retried on the nodes alive
        again = started()[2:]
        assert len(again) == 2 and doomed not in again
        wait_until(lambda: doomed not in {n["NodeID"] for n in nbray.nodes() if n["Alive"]},
                   60, "Ray to take the node for dead")
        with pytest.raises(LookupError, match="no node of this Ray cluster"):
            nbray.chaos.kill_node(doomed)
    finally:
        ray_cluster.remove_node(node, allow_graceful=False)     # reaps what was killed


def _add_once(h):
    try:
        return nbray.get(h.add.remote(0), timeout=10)
    except nbray.ActorDiedError:
        return None


@pytest.mark.ray
def test_init_again_and_the_context(ray_driver):
    with pytest.raises(RuntimeError, match="already called"):
        nbray.init(backend="ray")
    assert nbray.init(backend="ray", ignore_reinit_error=True) is ray_driver.ctx
    assert ray_driver.ctx.backend == "ray" and "ray" in repr(ray_driver.ctx)
    assert nbray.is_initialized()
    ctx = nbray.get_runtime_context()
    assert ctx.get_node_id() in {n["NodeID"] for n in nbray.nodes()}
