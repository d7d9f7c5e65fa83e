"""``nbray.cluster_utils.Cluster``: several real node processes on this machine as one
cluster, driven from this process; a node removed with SIGKILL is found dead, and the cluster
leaves nothing behind."""
from __future__ import annotations

import os

import pytest

import nbray
from nbray.cluster_utils import Cluster
from conftest import pid_alive, wait_until

pytestmark = pytest.mark.timeout(120)


@nbray.remote
def node_pid():
    return os.getppid()


@pytest.fixture
def run_root(tmp_path, monkeypatch, no_cluster):
    from nbray.config import CONFIG
    root = str(tmp_path / "run")
    monkeypatch.setattr(CONFIG, "run_root", root)
    return root


def test_nodes_join_run_tasks_die_and_leave_nothing(run_root):
    c = Cluster(head_node_args={"num_cpus": 1, "_system_config": {"node_timeout_s": 1.5}})
    assert "NBRAY_NODE_TIMEOUT_S" not in os.environ         # the head has it, not we
    try:
        gpu = c.add_node(num_cpus=1, num_gpus=1)
        other = c.add_node(num_cpus=1, resources={"sim": 2})
        assert len({n.node_id for n in c.list_all_nodes()}) == 3 and gpu.node_id
        c.connect()
        assert nbray.get(node_pid.options(num_gpus=1).remote(), timeout=60) == gpu.pid
        assert nbray.get(node_pid.options(resources={"sim": 1}).remote(),
                         timeout=60) == other.pid
        pids = {n.pid for n in c.list_all_nodes()}
        c.remove_node(gpu, allow_graceful=False)            # as if the machine were lost
        assert not pid_alive(gpu.pid)
        wait_until(lambda: [n["state"] for n in nbray.state.nodes()
                            if n["node_id"] == gpu.node_id] == ["dead"], 20,
                   "the head to declare the killed node dead")
        assert nbray.get(node_pid.remote(), timeout=60) in pids - {gpu.pid}
    finally:
        c.shutdown()
    assert not nbray.is_initialized()
    wait_until(lambda: not [p for p in pids if pid_alive(p)], 15, "every node to exit")
    wait_until(lambda: not os.listdir(run_root), 10, "the run root to be empty")


def test_a_cluster_that_cannot_connect_is_stopped(run_root):
    nbray.init(num_workers=1)               # this process drives another cluster already
    try:
        with pytest.raises(RuntimeError, match="already called"):
            Cluster(connect=True)
        mine = nbray.api._driver.record.session
        # its head, node and record are gone; only the embedded cluster's remain
        assert sorted(os.listdir(run_root)) == [mine, f"{mine}.json"]
    finally:
        nbray.shutdown()


def test_misuse_is_a_clear_error(run_root):
    with pytest.raises(ValueError, match="needs initialize_head"):
        Cluster(initialize_head=False, connect=True)
    with Cluster() as c:
        with pytest.raises(ValueError, match="call shutdown"):
            c.remove_node(c.head_node)
    assert c.head_node is None
