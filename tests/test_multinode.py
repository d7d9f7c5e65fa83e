"""Several nodes on one machine, each its own process with its own resources and TCP ports,
forming one cluster: where the hybrid scheduler puts tasks and actors, what waits for a node
that does not exist yet, and what the head sees per task.

The fixture starts a head and its node (``nbray start --head`` in Python), joins more nodes
(``nbray start --address``), and at teardown stops them all and checks that no process, record,
directory or shared-memory segment of them is left.
"""
from __future__ import annotations

import glob
import logging
import os
import re
import time

import pytest

import nbray
from nbray.runtime import cluster, object_store, protocol as P
from conftest import pid_alive, wait_until

pytestmark = pytest.mark.timeout(120)


class MultiNode:
    def __init__(self, root: str):
        self.root = root
        self.head = None            # (record, procs)
        self.nodes: list = []       # (record, procs) of joined nodes

    def start(self, num_workers: int = 1, resources: dict | None = None) -> None:
        record, procs = cluster.start(num_workers=num_workers, resources=resources,
                                      host="127.0.0.1", detach=True)
        record.save()
        self.head = (record, procs)

    @property
    def address(self) -> str:
        return self.head[0].tcp_address

    def add_node(self, num_workers: int = 1, resources: dict | None = None) -> int:
        """Join a node; returns its pid."""
        record, procs = cluster.join(self.address, bytes.fromhex(self.head[0].key),
                                     num_workers=num_workers, resources=resources)
        self.nodes.append((record, procs))
        return procs["node"].pid

    def node_pid(self, i: int = -1) -> int:
        return self.nodes[i][1]["node"].pid

    @property
    def head_node_pid(self) -> int:
        return self.head[1]["node"].pid

    def all_pids(self) -> set:
        pids = set()
        for record, procs in [self.head, *self.nodes] if self.head else self.nodes:
            for p in procs.values():
                pids.add(p.pid)
                try:
                    import psutil
                    pids |= {c.pid for c in psutil.Process(p.pid).children(recursive=True)}
                except Exception:
                    pass
        return pids

    def stop(self) -> None:
        if nbray.is_initialized():
            nbray.shutdown()
        pids = self.all_pids()
        names = [r.name for r, _ in ([self.head] if self.head else []) + self.nodes]
        for record, procs in reversed(self.nodes):
            cluster.stop(record, procs)
        if self.head:
            cluster.stop(*self.head)
        wait_until(lambda: not [p for p in pids if pid_alive(p)], 15,
                   "the cluster's processes to exit")
        for name in names:
            wait_until(lambda: not glob.glob(os.path.join(
                object_store.store_dir(), f"{object_store.PREFIX}{name}_*")), 10,
                f"the segments of {name} to go")
        wait_until(lambda: not os.path.isdir(self.root) or not os.listdir(self.root), 10,
                   "the run root to be empty")


@pytest.fixture
def multi(tmp_path, monkeypatch, no_cluster):
    from nbray.config import CONFIG
    root = str(tmp_path / "run")
    monkeypatch.setattr(CONFIG, "run_root", root)
    m = MultiNode(root)
    try:
        yield m
    finally:
        m.stop()


@nbray.remote
def node_of_task(seconds: float = 0.0):
    time.sleep(seconds)
    return os.getppid()


@nbray.remote
class Where:
    def node(self):
        return os.getppid()


def _wait_nodes(n: int) -> None:
    wait_until(lambda: len(nbray.state.nodes({"state": "alive"})) == n, 10, f"{n} live nodes")


def _placements(node_pid: int, kind: str, count: int):
    """The SchedulerView's plot once it shows ``count`` tasks of placement ``kind`` on the
    node of pid ``node_pid``."""
    from nbray.dashboard import data
    from nbray.dashboard.plots import SchedulerPlot
    plot = SchedulerPlot()

    def shown():
        snap = data.Snapshot.take()
        plot.update(snap)
        node = next(n["node_id"][:8] for n in snap.nodes if n["pid"] == node_pid)
        cols = plot.per_node.data
        rows = [i for i, name in enumerate(cols["node"]) if name.startswith(node)]
        return plot if rows and cols[kind][rows[0]] >= count else None
    return wait_until(shown, 10, f"{count} tasks {kind} on node pid {node_pid}")


# ---- placement -----------------------------------------------------------------------------------
def test_a_gpu_task_lands_on_the_gpu_node(multi):
    multi.start(num_workers=1)
    multi.add_node(num_workers=1)
    gpu_node = multi.add_node(num_workers=1, resources={"GPU": 1})
    nbray.init(address=multi.address)
    _wait_nodes(3)
    assert nbray.get(node_of_task.remote()) == multi.head_node_pid      # local first
    on = nbray.get([node_of_task.options(num_gpus=1).remote() for _ in range(4)], timeout=60)
    assert set(on) == {gpu_node}
    actor = Where.options(num_gpus=1).remote()
    assert nbray.get(actor.node.remote(), timeout=60) == gpu_node
    decisions = nbray.runtime.core_client.current().request(
        nbray.runtime.core_client.current().head_address, lambda r: P.ListDecisions(r))
    assert any("GPU" in str(d["resources"]) for d in decisions["decisions"])
    plot = _placements(gpu_node, "spilled: resources", 4)     # the SchedulerView says why
    assert sum(plot.per_node.data["kept local"]) >= 1        # the first one, at home
    assert any("not feasible here" in why for why in plot.decisions.data["spilled because"])
    assert nbray.state.scheduler()["decisions"] == decisions["decisions"]


def test_tasks_spill_to_other_nodes_when_the_local_one_is_full(multi):
    multi.start(num_workers=1)
    other = multi.add_node(num_workers=2)
    nbray.init(address=multi.address)
    _wait_nodes(2)
    wait_until(lambda: nbray.runtime.core_client.current().cluster_resources.get("CPU") == 3,
               10, "the driver to learn the cluster has 3 CPUs")
    t0 = time.monotonic()
    on = nbray.get([node_of_task.remote(1.0) for _ in range(3)], timeout=60)
    elapsed = time.monotonic() - t0
    assert sorted(on) == sorted([multi.head_node_pid, other, other])
    assert elapsed < 2.5, f"3 one-second tasks on 3 CPUs took {elapsed:.1f}s"
    rows = {n["pid"]: n for n in nbray.state.nodes()}
    assert rows[multi.head_node_pid]["leases_spilled"] >= 1
    records = [r for r in nbray.state.tasks({"name": "node_of_task"})]
    assert any(r["placement"].startswith("queue: its resources are busy here; the global "
                                         "scheduler chose node") for r in records), records
    plot = _placements(other, "spilled: queue", 2)
    assert any("busy" in why for why in plot.decisions.data["spilled because"])


def test_a_request_no_node_can_serve_waits_warns_and_runs_when_a_node_joins(multi, caplog):
    multi.start(num_workers=1)
    nbray.init(address=multi.address)
    ref = node_of_task.options(resources={"sim": 1}).remote()
    with caplog.at_level(logging.WARNING, logger="nbray"):
        with pytest.raises(nbray.GetTimeoutError):
            nbray.get(ref, timeout=1.0)
    assert any("sim=1" in r.getMessage() and "cannot be scheduled yet" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    sim_node = multi.add_node(num_workers=1, resources={"sim": 2})
    assert nbray.get(ref, timeout=30) == sim_node
    actor = Where.options(resources={"sim": 1}).remote()
    assert nbray.get(actor.node.remote(), timeout=30) == sim_node


def test_the_head_is_not_on_the_path_of_local_tasks(multi):
    multi.start(num_workers=2)
    multi.add_node(num_workers=1)
    nbray.init(address=multi.address)
    _wait_nodes(2)
    nbray.get([node_of_task.remote() for _ in range(200)])        # leases are held
    client = nbray.runtime.core_client.current()
    record = multi.head[0]
    before = cluster.ask(record, record.head_address, P.ClusterInfoRequest()).head
    t0 = time.monotonic()
    n = 5000
    on = nbray.get([node_of_task.remote() for _ in range(n)])
    elapsed = time.monotonic() - t0
    after = cluster.ask(record, record.head_address, P.ClusterInfoRequest()).head
    head_msgs = after["messages_received"] - before["messages_received"]
    heartbeats = 2 * (elapsed / 0.5 + 2)          # two nodes beat twice a second
    # a burst uses the other node's CPU too: a spilled lease costs the head a message, but a
    # lease serves many tasks, and tasks go straight to the leased workers
    spills = client.stats["leases_spilled"]
    assert head_msgs <= heartbeats + 2 * spills + 10, f"{head_msgs} head messages for {n} tasks"
    assert head_msgs < n / 50
    assert len(on) == n


def test_a_drivers_remote_leases_end_when_it_leaves(multi):
    multi.start(num_workers=1)
    other = multi.add_node(num_workers=1)
    nbray.init(address=multi.address)
    _wait_nodes(2)
    wait_until(lambda: nbray.runtime.core_client.current().cluster_resources.get("CPU") == 2,
               10, "the driver to learn the cluster's CPUs")
    assert other in nbray.get([node_of_task.remote(0.5) for _ in range(2)], timeout=60)
    nbray.shutdown()

    def other_free():
        rows = [n for n in _nodes(multi) if n["pid"] == other]
        return rows and rows[0]["resources_available"].get("CPU") == 1.0
    wait_until(other_free, 10, "the other node to get its CPU back")


def _nodes(multi) -> list:
    record = multi.head[0]
    return cluster.ask(record, record.head_address, P.ClusterInfoRequest()).nodes


# ---- objects across nodes ------------------------------------------------------------------------
@nbray.remote
def array_sum(a):
    return float(a.sum()), os.getppid(), bool(a.flags.writeable)


@nbray.remote
def make_array(n):
    import numpy as np
    return np.arange(n, dtype=np.float64)


def test_a_large_array_crosses_nodes_in_chunks_once_per_node(multi):
    import numpy as np
    multi.start(num_workers=1)
    other = multi.add_node(num_workers=2, resources={"far": 2})
    nbray.init(address=multi.address)
    _wait_nodes(2)
    a = np.random.default_rng(1).random(100 * 1024 * 1024 // 8)       # 100 MB
    ref = nbray.put(a)
    record = multi.head[0]
    head_before = cluster.ask(record, record.head_address, P.ClusterInfoRequest()).head
    out = nbray.get([array_sum.options(resources={"far": 1}).remote(ref) for _ in range(4)],
                    timeout=120)
    assert {o[1] for o in out} == {other}
    assert all(o[0] == float(a.sum()) and o[2] is False for o in out)
    row = [n for n in nbray.state.nodes() if n["pid"] == other][0]
    wait_until(lambda: [n for n in nbray.state.nodes() if n["pid"] == other][0]
               ["bytes_pulled"] >= a.nbytes, 5, "the pull to show in the node's stats")
    row = [n for n in nbray.state.nodes() if n["pid"] == other][0]
    assert a.nbytes <= row["bytes_pulled"] < 1.1 * a.nbytes       # fetched once for 4 tasks
    head_after = cluster.ask(record, record.head_address, P.ClusterInfoRequest()).head
    assert head_after["messages_received"] - head_before["messages_received"] < 100
    # the other way: a result written on the far node, read by the driver here
    back = make_array.options(resources={"far": 1}).remote(20 * 1024 * 1024 // 8)
    got = nbray.get(back, timeout=60)
    assert got[-1] == 20 * 1024 * 1024 // 8 - 1 and not got.flags.writeable
    # copies are named c + 32 hex digits; an object of ours there (40 digits) may start with c
    copies = [p for p in glob.glob(os.path.join(
        object_store.store_dir(), f"{object_store.PREFIX}{multi.nodes[0][0].name}_c*"))
        if re.fullmatch(r"c[0-9a-f]{32}", p.rsplit("_", 1)[1])]
    assert copies                                   # the far node's copy of the 100 MB array
    # the node that served the array holds neither a descriptor nor a mapping of it between
    # pulls (once ZeroMQ has sent the chunks): freed, its pages go back to the machine at once
    name = ref._id.hex()
    held = lambda: [l for l in _held_by(multi.head_node_pid) if name in l]  # noqa: E731,E741
    wait_until(lambda: not held(), 3, "the served segment to be let go once sent")   # (< 5 s idle)
    del ref, out
    try:
        wait_until(lambda: not [p for p in copies if os.path.exists(p)], 10,
                   "the copy to go once the original is freed")
    except AssertionError as e:       # say what the nodes hold, should it ever time out
        rows = [{k: n.get(k) for k in ("pid", "object_copies", "bytes_served", "bytes_pulled")}
                for n in nbray.state.nodes()]
        raise AssertionError(f"{e}; still there: {[p for p in copies if os.path.exists(p)]}; "
                             f"nodes: {rows}") from None


def test_an_object_on_a_dead_node_is_a_clear_error(multi):
    multi.start(num_workers=1)
    far = multi.add_node(num_workers=1, resources={"far": 1})
    nbray.init(address=multi.address)
    _wait_nodes(2)
    # no retries: its lineage cannot make it again (with retries it would be rebuilt, on a
    # node that has "far" once one joins: test_lineage.py)
    ref = make_array.options(resources={"far": 1}, max_retries=0).remote(1_000_000)
    nbray.wait([ref], timeout=60)
    import psutil
    for p in [far, *[c.pid for c in psutil.Process(far).children()]]:
        os.kill(p, 9)
    wait_until(lambda: nbray.state.nodes({"state": "dead"}), 15, "the node to be declared dead")
    with pytest.raises(nbray.ObjectLostError, match="its node died.*no retries left"):
        nbray.get(ref, timeout=30)


def test_a_task_runs_where_its_large_input_is(multi):
    multi.start(num_workers=1)
    far = multi.add_node(num_workers=1, resources={"far": 1})
    nbray.init(address=multi.address)
    _wait_nodes(2)
    wait_until(lambda: nbray.runtime.core_client.current().cluster_resources.get("far") == 1,
               10, "the driver to learn of the far node")
    data = make_array.options(resources={"far": 1}).remote(20 * 1024 * 1024 // 8)  # 20 MB
    nbray.wait([data], timeout=60)
    # no resource asks for the far node: the 20 MB there do (one at a time: with its one CPU
    # taken and a queue there, a burst's later tasks may go to a free node, load over locality)
    out = [nbray.get(array_sum.remote(data), timeout=60) for _ in range(3)]
    assert {o[1] for o in out} == {far}
    pulled = {n["pid"]: n["bytes_pulled"] for n in nbray.state.nodes()}
    assert pulled[multi.head_node_pid] == 0            # nothing moved to the head's node
    client = nbray.runtime.core_client.current()
    decisions = client.request(client.head_address, lambda r: P.ListDecisions(r))
    assert any("locality" in d["why"] for d in decisions["decisions"])
    # a small input does not move a task
    assert nbray.get(array_sum.remote(nbray.put(__import__("numpy").ones(10))))[1] == \
        multi.head_node_pid


def test_nodes_rejoin_a_restarted_head(multi):
    import signal
    multi.start(num_workers=1)
    multi.add_node(num_workers=1)
    record, procs = multi.head
    wait_until(lambda: len(_nodes(multi)) == 2, 10, "two nodes")
    old = procs["head"]
    os.kill(old.pid, signal.SIGKILL)                 # no goodbye to its nodes
    old.wait()
    # the same head again: same session, addresses and key (what a supervisor would restart)
    new = cluster._spawn("nbray.runtime.head.main",
                         ["--session", record.session, "--bind", record.head_address,
                          "--bind", f"tcp://{record.tcp_address}"],
                         bytes.fromhex(record.key), None)
    cluster._await_ready({"head": new}, timeout=30)
    procs["head"] = new
    record.pids[0] = new.pid
    nodes = wait_until(lambda: (lambda n: n if len(n) == 2 else None)(_nodes(multi)), 15,
                       "both nodes to register with the new head")
    assert all(n["alive"] for n in nodes)
    nbray.init(address=multi.address)
    assert nbray.get(node_of_task.remote(), timeout=30) in {n["pid"] for n in nodes}


# ---- nodes that die or leave (regressions found in review) ---------------------------------------
def _kill_node(pid: int) -> None:
    import psutil
    for p in [pid, *[c.pid for c in psutil.Process(pid).children(recursive=True)]]:
        try:
            os.kill(p, 9)
        except ProcessLookupError:
            pass


def test_a_node_joins_with_its_own_host(multi):
    multi.start(num_workers=1)
    record, _ = cluster.join(multi.address, bytes.fromhex(multi.head[0].key), num_workers=1,
                             host="127.0.0.2")
    multi.nodes.append((record, _))
    assert record.host == "127.0.0.2"
    wait_until(lambda: len(_nodes(multi)) == 2, 10, "two nodes")
    joined = [n for n in _nodes(multi) if n["pid"] == multi.node_pid()][0]
    assert joined["address"].startswith("tcp://127.0.0.2:")


def test_tasks_on_a_node_that_dies_are_retried_elsewhere(multi, monkeypatch):
    multi.start(num_workers=1)
    other = multi.add_node(num_workers=1)
    nbray.init(address=multi.address)
    client = nbray.runtime.core_client.current()
    wait_until(lambda: client.cluster_resources.get("CPU") == 2, 10, "the cluster's CPUs")
    refs = [node_of_task.remote(3.0) for _ in range(2)]
    wait_until(lambda: any(lease.node.startswith("tcp://") and lease.inflight
                           for lease in client.leases.values()), 20,
               "a task to run on the other node")
    _kill_node(other)
    t0 = time.monotonic()
    assert nbray.get(refs, timeout=60) == [multi.head_node_pid] * 2     # retried here
    assert time.monotonic() - t0 < 30
    assert client.stats["retries"] >= 1


def test_a_dead_nodes_driver_leases_elsewhere_are_released(multi, tmp_path):
    import subprocess
    import sys
    multi.start(num_workers=1, resources={"headonly": 1})
    far = multi.add_node(num_workers=1)
    script = tmp_path / "driver.py"
    script.write_text(
        "import nbray, os, sys, time\n"
        "nbray.init(address=sys.argv[1])\n"
        "@nbray.remote(resources={'headonly': 1})\n"
        "def hold():\n    time.sleep(100)\n"
        "ref = hold.remote()\nprint('submitted', flush=True)\ntime.sleep(100)\n")
    driver = subprocess.Popen([sys.executable, str(script), multi.nodes[0][0].name],
                              stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, NBRAY_RUN_ROOT=multi.root))
    try:
        assert driver.stdout.readline().strip() == "submitted"
        head_node = lambda: [n for n in _nodes(multi) if n["pid"] == multi.head_node_pid][0]
        wait_until(lambda: head_node().get("workers_leased") == 1, 20, "the remote lease")
        _kill_node(far)
        driver.kill()
        wait_until(lambda: head_node().get("resources_available", {}).get("headonly") == 1.0, 20,
                   "the lease of the dead node's driver to be released")
    finally:
        driver.kill()
        driver.wait()
        driver.stdout.close()
    nbray.init(address=multi.address)
    assert nbray.get(node_of_task.options(resources={"headonly": 1}).remote(), timeout=30) == \
        multi.head_node_pid


def test_a_spill_answered_after_its_client_left_leases_nothing(multi, tmp_path):
    import subprocess
    import sys
    multi.start(num_workers=1)
    nbray.init(address=multi.address)
    busy = node_of_task.remote(2.0)
    wait_until(lambda: _nodes(multi)[0].get("workers_leased") == 1, 20, "the node to be busy")
    script = tmp_path / "leaver.py"
    script.write_text("import nbray, sys\nnbray.init(address=sys.argv[1])\n"
                      "@nbray.remote\ndef f():\n    return 1\n"
                      "r = f.remote()\nnbray.shutdown()\n")
    subprocess.run([sys.executable, str(script), multi.address], check=True, timeout=60,
                   env=dict(os.environ, NBRAY_RUN_ROOT=multi.root))
    assert nbray.get(busy, timeout=30) == multi.head_node_pid
    assert nbray.get(node_of_task.remote(), timeout=10) == multi.head_node_pid
    wait_until(lambda: _nodes(multi)[0].get("workers_leased", 9) <= 1 and
               _nodes(multi)[0].get("clients") == 1, 10, "no lease held for the leaver")


def _held_by(pid: int) -> list:
    """The files a process has open or mapped."""
    held = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            held.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            pass
    with open(f"/proc/{pid}/maps") as f:
        return held + f.read().splitlines()


def test_a_freed_array_leaves_the_node_that_copied_it_at_once(multi, monkeypatch):
    """The driver tells its node of the free: the far copy goes, and the 100 MB of shared
    memory with it, long before the node's own look at its store would find the free."""
    import numpy as np
    monkeypatch.setenv("NBRAY_STORE_CHECK_S", "120")
    multi.start(num_workers=1)
    multi.add_node(num_workers=1, resources={"far": 1})
    nbray.init(address=multi.address)
    _wait_nodes(2)
    copies_of = lambda: [p for p in glob.glob(os.path.join(     # noqa: E731
        object_store.store_dir(), f"{object_store.PREFIX}{multi.nodes[0][0].name}_c*"))
        if re.fullmatch(r"c[0-9a-f]{32}", p.rsplit("_", 1)[1])]
    a = np.ones(100 * 1024 * 1024 // 8)
    ref = nbray.put(a)
    assert nbray.get(array_sum.options(resources={"far": 1}).remote(ref),
                     timeout=60)[0] == a.size
    assert len(copies_of()) == 1
    del ref
    nbray.put(1)                    # the driver's next call frees what it dropped
    wait_until(lambda: not copies_of(), 30, "the far copy to go once the array is freed")


# Regression (found by CI): a node that had not yet heard of a node that just joined failed a
# read of an object there as lost; the driver then rebuilt it, and the rebuild collided with
# the first copy (FileExistsError)
def test_an_object_on_a_node_that_just_joined_is_read_before_its_node_hears_of_it(
        multi, monkeypatch):
    monkeypatch.setenv("NBRAY_HEARTBEAT_S", "3")       # nodes hear of each other slowly
    multi.start(num_workers=1)
    nbray.init(address=multi.address)
    multi.add_node(num_workers=1, resources={"far": 1})
    _wait_nodes(2)
    n = 20 * 1024 * 1024 // 8
    got = nbray.get(make_array.options(resources={"far": 1}).remote(n), timeout=60)
    assert got[-1] == n - 1
    client = nbray.runtime.core_client.current()
    assert client.stats["rebuilt"] == 0
