"""Ray's cluster and runtime context calls on a real cluster: ``cluster_resources``,
``available_resources``, ``nodes``, ``get_runtime_context`` in a driver, a task, a nested
task and an actor, ``is_canceled`` in a cancelled task; logical resources in ``init``."""
from __future__ import annotations

import os
import time

import pytest

import nbray
from conftest import shutdown_and_check, wait_until

pytestmark = pytest.mark.timeout(120)


@nbray.remote
def where():
    ctx = nbray.get_runtime_context()
    return ctx.get_node_id(), ctx.get_job_id(), ctx.get_task_id(), ctx.get_actor_id()


@nbray.remote
def nested():
    return nbray.get_runtime_context().get_job_id(), nbray.get(where.remote())


@nbray.remote
class Where:
    def ids(self):
        ctx = nbray.get_runtime_context()
        return ctx.actor_id, ctx.task_id


@nbray.remote
def until_cancelled(marker):
    ctx = nbray.get_runtime_context()
    try:
        open(marker + ".started", "w").close()
        while True:
            time.sleep(0.01)
    except nbray.TaskCancelledError:
        with open(marker, "w") as f:        # it may catch the cancel and look
            f.write(str(ctx.is_canceled()))
        raise


@pytest.fixture
def gpus(no_cluster):
    nbray.init(num_cpus=4, num_gpus=2, resources={"sim": 3})    # more CPUs than cores: logical
    yield
    shutdown_and_check()


def test_resources_and_nodes(gpus):
    total = nbray.cluster_resources()
    memory = total.pop("memory")        # logical bytes, 70% of the machine's, as in Ray
    assert total == {"CPU": 4.0, "GPU": 2.0, "sim": 3.0}
    import psutil
    assert memory == float(int(psutil.virtual_memory().total * 0.7))
    (node,) = nbray.nodes()
    assert node["Alive"] and node["Resources"] == {"CPU": 4.0, "GPU": 2.0, "sim": 3.0,
                                                   "memory": memory}
    assert node["NodeID"] == nbray.get_runtime_context().get_node_id()

    @nbray.remote(num_gpus=1)
    def hold(marker):
        while not os.path.exists(marker):
            time.sleep(0.01)
    marker = f"/tmp/nbray-rc-{os.getpid()}"
    ref = hold.remote(marker)
    try:
        wait_until(lambda: nbray.available_resources().get("GPU") == 1.0, 10,
                   "a GPU to be in use")
    finally:
        open(marker, "w").close()
    nbray.get(ref)
    os.unlink(marker)
    wait_until(lambda: nbray.available_resources().get("GPU") == 2.0, 10, "the GPU back")


def test_the_context_in_a_driver_a_task_a_nested_task_and_an_actor(cluster):
    ctx = nbray.get_runtime_context()
    assert ctx.get_task_id() is None and ctx.get_actor_id() is None and not ctx.is_canceled()
    node, job, task, actor = nbray.get(where.remote())
    assert node == ctx.node_id and job == ctx.job_id and task and actor is None
    outer_job, (_, inner_job, inner_task, _) = nbray.get(nested.remote())
    assert outer_job == inner_job == ctx.job_id and inner_task != task    # the driver's job
    w = Where.remote()
    actor_id, call_task = nbray.get(w.ids.remote())
    assert actor_id == w._actor_id_hex() and call_task


def test_a_cancelled_task_sees_it(cluster, tmp_path):
    marker = tmp_path / "seen"
    ref = until_cancelled.remote(str(marker))
    wait_until(lambda: os.path.exists(f"{marker}.started"), 20, "the task to run its loop")
    nbray.cancel(ref)
    with pytest.raises(nbray.TaskCancelledError):
        nbray.get(ref, timeout=30)
    assert wait_until(lambda: marker.exists() and marker.read_text(), 10, "the marker") == "True"


def test_bad_num_gpus(no_cluster):
    with pytest.raises(ValueError, match="num_gpus must be"):
        nbray.init(num_gpus=-1)
    with pytest.raises(ValueError, match="not both"):
        nbray.init(num_gpus=1, resources={"GPU": 1})
    assert not nbray.is_initialized()


@nbray.remote
def small():
    return "ran"


def test_memory_is_a_resource(gpus):
    memory = nbray.cluster_resources()["memory"]
    assert nbray.get(small.options(memory=memory / 2).remote(), timeout=30) == "ran"
    with pytest.raises(ValueError, match="memory"):
        small.options(memory=-1)
    with pytest.raises(ValueError, match="memory"):
        small.options(resources={"memory": 1})
    with pytest.raises(Exception, match="memory"):      # more than the node has: refused
        nbray.get(small.options(memory=memory * 2).remote(), timeout=30)
