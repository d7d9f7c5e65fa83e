"""The ``nbray`` command, run as a user runs it: start a cluster, join nodes to it over TCP,
drive it from Python, look at it, stop it, and run the demo.

Every test runs the CLI in a subprocess with a run root of its own (``NBRAY_RUN_ROOT``), so the
clusters it starts are its alone; at teardown it stops whatever is left there and checks that
no process, socket, record or shared-memory segment of them remains.
"""
from __future__ import annotations

import glob
import json
import os
import re
import signal
import stat
import subprocess
import sys

import psutil
import pytest

import nbray
from nbray.runtime import object_store
from conftest import pid_alive, wait_until

pytestmark = pytest.mark.timeout(120)


@nbray.remote
def parent_pid():
    return os.getppid()


@nbray.remote
def add(a, b):
    return a + b


class Cli:
    """Runs ``nbray ...`` with a private run root and cleans up what it started."""

    def __init__(self, root: str):
        self.root = root
        self.env = dict(os.environ, NBRAY_RUN_ROOT=root)
        self.env.pop("NBRAY_KEY", None)

    def __call__(self, *args, check: bool = True, env: dict | None = None,
                 timeout: float = 60) -> subprocess.CompletedProcess:
        out = subprocess.run([sys.executable, "-m", "nbray.cli", *args], capture_output=True,
                             text=True, env={**self.env, **(env or {})}, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"nbray {' '.join(args)} exited {out.returncode}:\n"
                                 f"{out.stdout}\n{out.stderr}")
        return out

    def records(self) -> list[dict]:
        out = []
        for path in glob.glob(os.path.join(self.root, "*.json")):
            with open(path) as f:
                out.append(json.load(f))
        return out

    def record(self, role: str) -> dict:
        found = [r for r in self.records() if r["role"] == role]
        assert len(found) == 1, found
        return found[0]

    def all_pids(self) -> set:
        return {p for r in self.records() for p in r["pids"]}

    def start_head(self, *extra) -> dict:
        self("start", "--head", "--num-workers", "1", *extra)
        return self.record("head")


@pytest.fixture
def cli(tmp_path, monkeypatch, no_cluster):
    root = str(tmp_path / "run")
    # the driver in this process must find the clusters in the same run root
    from nbray.config import CONFIG
    monkeypatch.setattr(CONFIG, "run_root", root)
    c = Cli(root)
    seen: set = set()
    try:
        yield c
    finally:
        if nbray.is_initialized():
            nbray.shutdown()
        seen |= c.all_pids()
        names = [r["name"] for r in c.records()]
        subprocess.run([sys.executable, "-m", "nbray.cli", "stop", "--all"], env=c.env,
                       capture_output=True, timeout=60)
        wait_until(lambda: not [p for p in seen if pid_alive(p)], 15,
                   "the CLI's cluster processes to exit")
        for name in names:
            wait_until(lambda: not glob.glob(os.path.join(
                object_store.store_dir(), f"{object_store.PREFIX}{name}_*")), 10,
                f"segments of {name} to be removed")
        wait_until(lambda: not os.listdir(root) if os.path.isdir(root) else True, 10,
                   f"the run root to be empty: {os.listdir(root) if os.path.isdir(root) else ''}")


def _descendants_of(pid: int) -> set:
    try:
        return {p.pid for p in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


# ---- start --head, status, init(address), stop ---------------------------------------------------
def test_start_head_prints_address_and_key_file_and_drivers_join(cli):
    out = cli("start", "--head", "--num-workers", "2", "--resources", '{"sim": 2}').stdout
    head = cli.record("head")
    address = head["tcp_address"]
    assert re.match(r"127\.0\.0\.1:\d+$", address)
    assert f"address:   {address}" in out
    assert f'nbray.init(address="{address}")' in out
    assert f"nbray start --address {address} --key-file" in out
    key_file = os.path.join(cli.root, f"{head['session']}.json")
    assert key_file in out
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert head["key"] not in out                   # the key itself is never printed
    assert len(head["pids"]) == 2 and all(pid_alive(p) for p in head["pids"])

    # the head listens on TCP on 127.0.0.1 only
    head_proc = psutil.Process(head["pids"][0])
    listening = [c.laddr for c in head_proc.net_connections(kind="tcp")
                 if c.status == psutil.CONN_LISTEN]
    assert [(a.ip, a.port) for a in listening] == [("127.0.0.1", int(address.split(":")[1]))]

    ctx = nbray.init(address=address)
    assert not ctx.embedded and ctx.session == head["session"]
    assert {k: v for k, v in ctx.resources.items() if k != "memory"} == {"CPU": 2.0, "sim": 2.0}
    assert nbray.get([add.remote(i, i) for i in range(50)]) == [2 * i for i in range(50)]
    assert nbray.get(add.options(resources={"sim": 1}).remote(1, 2)) == 3
    nbray.shutdown()
    assert all(pid_alive(p) for p in head["pids"])      # leaving does not stop the cluster

    # the driver said goodbye: its leases are back (the next heartbeat shows it)
    status = wait_until(lambda: (lambda s: s if "CPU 2/2, memory " in s and "GB, sim 2/2" in s
                                 else None)(
        cli("status").stdout), 10, "the driver's leases to be returned")
    assert f"Cluster {head['session']}  address {address}" in status
    assert "1 node" in status

    stopped = cli("stop", "--address", address).stdout
    assert f"Stopped cluster {head['session']}" in stopped
    wait_until(lambda: not [p for p in head["pids"] if pid_alive(p)], 10, "the cluster to exit")
    assert cli.records() == []
    assert "No nbray cluster is running" in cli("status").stdout


def test_list_shows_tasks_actors_nodes_events_and_objects(cli):
    cli("start", "--head", "--num-workers", "2")
    address = cli.record("head")["tcp_address"]
    nbray.init(address=address)
    assert nbray.get([add.remote(i, 1) for i in range(3)]) == [1, 2, 3]
    big = nbray.put(b"x" * 500_000)
    wait_until(lambda: len(nbray.state.tasks(pending=False)) >= 3, 10, "the task records")
    tasks = cli("list", "tasks").stdout
    assert "add" in tasks and "finished" in tasks and tasks.rstrip().endswith("3 tasks")
    rows = json.loads(cli("list", "tasks", "--json", "--limit", "2").stdout)
    assert len(rows) == 2 and all(r["state"] == "finished" and r["run_ms"] >= 0 for r in rows)
    assert "alive" in cli("list", "nodes").stdout
    assert cli("list", "actors").stdout.rstrip().endswith("0 actors")
    assert "events" in cli("list", "events").stdout
    objects = cli("list", "objects").stdout
    assert big.hex() in objects
    bad = cli("list", "things", check=False)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_init_address_forms_and_unknown_address(cli):
    head = cli.start_head()
    for address in ("auto", head["session"], head["tcp_address"],
                    ":" + head["tcp_address"].split(":")[1]):
        nbray.init(address=address)
        assert nbray.get(add.remote(1, 1)) == 2
        nbray.shutdown()
    with pytest.raises(nbray.ClusterError, match="no running cluster at 'nope'"):
        nbray.init(address="nope")
    with pytest.raises(nbray.ClusterError, match="no node of the cluster at '10.9.8.7:1' runs "
                                                 "on this machine"):
        nbray.init(address="10.9.8.7:1")
    with pytest.raises(ValueError, match="cannot be given when joining"):
        nbray.init(address="auto", num_workers=2)
    assert not nbray.is_initialized()


# ---- start --address: a node joins over TCP ------------------------------------------------------
def test_node_joins_over_tcp_and_runs_its_drivers_tasks(cli):
    head = cli.start_head()
    address = head["tcp_address"]
    out = cli("start", "--address", address, "--num-workers", "2", "--num-gpus", "1",
              "--resources", '{"sim": 4}').stdout
    node = cli.record("node")
    assert node["session"] == head["session"] and node["name"] != head["session"]
    assert f"Joined nbray cluster {head['session']} at {address} as node {node['name']}" in out
    assert "CPU 2, GPU 1, sim 4" in out
    # its own private directory and record; the key file was not needed on the head's machine
    assert stat.S_IMODE(os.stat(os.path.join(cli.root, node["name"])).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(cli.root, f"{node['name']}.json")).st_mode) == 0o600

    status = cli("status").stdout
    assert status.count(f"Cluster {head['session']}") == 1      # one cluster, two nodes
    assert "2 nodes" in status
    assert f"node {node['name']} (joined)" in status
    assert "CPU 2/2, GPU 1/1, memory " in status and "GB, sim 4/4" in status and \
        "CPU 1/1" in status

    # a driver on the joined node runs its tasks on that node's workers first (a burst may
    # spill to the head's node too: the cluster has 3 CPUs)
    node_pid = node["pids"][0]
    ctx = nbray.init(address=node["name"])
    assert ctx.session == head["session"] and ctx.resources["GPU"] == 1.0
    assert nbray.get(parent_pid.remote()) == node_pid
    parents = set(nbray.get([parent_pid.remote() for _ in range(20)]))
    assert node_pid in parents and parents <= {node_pid, head["pids"][1]}
    assert nbray.get(add.options(num_gpus=1, resources={"sim": 2}).remote(20, 22)) == 42
    import numpy as np
    big = nbray.put(np.arange(1_000_000, dtype=np.int64))
    assert glob.glob(os.path.join(object_store.store_dir(),
                                  f"{object_store.PREFIX}{node['name']}_*"))
    assert nbray.get(add.remote(big, 1))[-1] == 1_000_000
    del big
    nbray.shutdown()

    # a driver given the head's address uses the head's own node, on the head's machine
    nbray.init(address=address)
    assert nbray.get(parent_pid.remote()) == head["pids"][1]
    nbray.shutdown()

    # stopping the joined node leaves the cluster with one node
    cli("stop", "--address", node["name"])
    wait_until(lambda: not pid_alive(node_pid), 10, "the joined node to exit")
    wait_until(lambda: "1 node" in cli("status").stdout, 10, "the head to drop the node")
    assert not os.path.exists(os.path.join(cli.root, node["name"]))


def test_stopping_the_head_stops_the_nodes_that_joined_it(cli):
    head = cli.start_head()
    cli("start", "--address", head["tcp_address"], "--num-workers", "1")
    node = cli.record("node")
    node_procs = {node["pids"][0]} | _descendants_of(node["pids"][0])
    assert len(node_procs) >= 2                  # the node and its worker
    # only the head is told to stop (`nbray stop` would stop the joined node itself, here on
    # the same machine): it must take the node with it, as it would on another machine
    os.kill(head["pids"][0], signal.SIGTERM)
    wait_until(lambda: not [p for p in node_procs if pid_alive(p)], 15,
               "the joined node and its workers to exit after the head")
    # the node removed its own record and directory on the way out (the head's record stays
    # until `nbray stop` clears it: the head was signalled, not stopped with the CLI)
    wait_until(lambda: [r["role"] for r in cli.records()] == ["head"], 10,
               "the joined node's record to be removed")
    assert not os.path.exists(os.path.join(cli.root, node["name"]))


def test_a_node_whose_head_was_killed_stops(cli):
    cli.env["NBRAY_HEAD_TIMEOUT_S"] = "2"
    head = cli.start_head()
    cli("start", "--address", head["tcp_address"], "--num-workers", "1")
    node = cli.record("node")
    node_procs = {node["pids"][0]} | _descendants_of(node["pids"][0])
    os.kill(head["pids"][0], signal.SIGKILL)        # no goodbye: the heartbeats go unanswered
    wait_until(lambda: not [p for p in node_procs if pid_alive(p)], 20,
               "the joined node to notice its head is gone and stop")
    log_dir = os.path.join(cli.root, node["name"])
    assert not os.path.exists(log_dir)              # a clean stop: it removed its directory


def test_the_head_declares_a_silent_node_dead(cli):
    cli.env["NBRAY_NODE_TIMEOUT_S"] = "1"
    head = cli.start_head()
    cli("start", "--address", head["tcp_address"], "--num-workers", "1",
        "--resources", '{"sim": 1}')
    node = cli.record("node")
    node_procs = {node["pids"][0]} | _descendants_of(node["pids"][0])
    nbray.init(address=head["tcp_address"])
    wait_until(lambda: len(nbray.state.nodes({"state": "alive"})) == 2, 10, "two live nodes")
    for pid in node_procs:                    # the machine of the node "goes away"
        os.kill(pid, signal.SIGKILL)
    dead = wait_until(lambda: nbray.state.nodes({"state": "dead"}), 10,
                      "the head to declare the node dead")
    assert [n["pid"] for n in dead] == [node["pids"][0]] and dead[0]["alive"] is False
    assert dead[0]["resources"].get("sim") == 1.0 and dead[0]["died_at"]
    assert "DEAD" in cli("status").stdout
    assert len(nbray.state.nodes({"state": "alive"})) == 1
    nbray.shutdown()


def test_a_drivers_objects_go_when_it_leaves_a_running_cluster(cli):
    import numpy as np
    head = cli.start_head()
    prefix = os.path.join(object_store.store_dir(), f"{object_store.PREFIX}{head['session']}_")
    nbray.init(address=head["tcp_address"])
    kept = nbray.put(np.ones(1_000_000))
    assert nbray.get(add.remote(kept, 1))[0] == 2.0
    assert glob.glob(prefix + "*")
    nbray.shutdown()                                 # with the ref still held
    wait_until(lambda: not glob.glob(prefix + "*"), 10,
               "the departed driver's segments to be removed")
    del kept


def test_a_run_root_too_long_for_socket_paths_is_a_clear_error(cli, tmp_path):
    long_root = str(tmp_path / ("r" * 90))
    out = cli("start", "--head", "--num-workers", "1", check=False,
              env={"NBRAY_RUN_ROOT": long_root})
    assert out.returncode == 1 and "too long for the socket paths" in out.stderr


def test_join_with_a_key_file_and_with_a_wrong_key(cli, tmp_path):
    head = cli.start_head()
    address = head["tcp_address"]
    good = tmp_path / "key"
    good.write_text(head["key"] + "\n")
    wrong = tmp_path / "wrong"
    wrong.write_text(os.urandom(32).hex())
    short = {"NBRAY_REGISTER_TIMEOUT_S": "2"}
    out = cli("start", "--address", address, "--key-file", str(wrong), "--num-workers", "1",
              check=False, env=short)
    assert out.returncode == 1
    assert "did not answer within 2s" in out.stderr and "key" in out.stderr
    assert [r["role"] for r in cli.records()] == ["head"]      # nothing of it is left
    info = cli("status").stdout
    assert "1 node" in info

    # the head dropped the wrong-key frames and counted them
    from nbray.runtime import cluster, protocol as P
    rec = cluster.ClusterRecord(**head)
    reply = cluster.ask(rec, rec.head_address, P.ClusterInfoRequest())
    assert reply.head["messages_rejected"] >= 1

    cli("start", "--address", address, "--key-file", str(good), "--num-workers", "1")
    cli("start", "--address", address, "--key-file", os.path.join(cli.root,
                                                                  f"{head['session']}.json"),
        "--num-workers", "1")
    assert "3 nodes" in cli("status").stdout


def test_join_without_any_key_from_another_machines_view(cli):
    out = cli("start", "--address", "127.0.0.1:9", "--num-workers", "1", check=False)
    assert out.returncode == 2 and "needs the cluster key" in out.stderr
    out = cli("start", "--address", "127.0.0.1:9", "--num-workers", "1", check=False,
              env={"NBRAY_KEY": os.urandom(32).hex(), "NBRAY_REGISTER_TIMEOUT_S": "1"})
    assert out.returncode == 1 and "did not answer within 1s" in out.stderr
    assert cli.records() == []


def test_start_head_with_a_dashboard_serves_it_until_stopped(cli):
    import urllib.request
    out = cli("start", "--head", "--num-workers", "1", "--dashboard-port", "0").stdout
    head = cli.record("head")
    url = head["dashboard"]
    assert re.match(r"http://127\.0\.0\.1:\d+/$", url) and f"dashboard: {url}" in out
    assert len(head["pids"]) == 3 and all(pid_alive(p) for p in head["pids"])
    assert f"dashboard: {url}" in cli("status").stdout
    with urllib.request.urlopen(url, timeout=30) as page:
        assert page.status == 200 and "<title>nbray dashboard</title>" in page.read().decode()
    cli("stop", "--all")
    wait_until(lambda: not [p for p in head["pids"] if pid_alive(p)], 15,
               "the head, its node and the dashboard to exit")
    assert cli.records() == []


@nbray.remote
def bounds():
    from nbray.config import CONFIG
    return CONFIG.max_pending, CONFIG.node_queue_max, CONFIG.object_store_memory


def test_start_sets_the_bounds_and_a_driver_that_joins_takes_them(cli):
    import numpy as np
    from nbray.config import CONFIG
    cli("start", "--head", "--num-workers", "1", "--object-store-memory", "40000000",
        "--system-config", '{"max_pending": 7, "node_queue_max": 20}')
    nbray.init(address=cli.record("head")["tcp_address"])
    assert nbray.get(bounds.remote()) == (7, 20, 40_000_000)            # its workers
    assert (CONFIG.max_pending, CONFIG.object_store_memory) == (7, 40_000_000)     # we
    assert nbray.runtime.core_client.current().default_limit.max_pending == 7
    with pytest.raises(nbray.ObjectStoreFullError, match="object_store_memory"):
        nbray.put(np.ones(6_000_000))                   # 48 MB: more than the cluster's 40
    nbray.shutdown()
    assert (CONFIG.max_pending, CONFIG.object_store_memory) == (100_000, 0)        # as before


@pytest.mark.parametrize("args, message", [
    (["start", "--head", "--system-config", "{bad"], "--system-config is not valid JSON"),
    (["start", "--head", "--system-config", '{"nope": 1}'], "unknown system config 'nope'"),
    (["start", "--head", "--object-store-memory", "0"], "--object-store-memory must be"),
    (["start"], "needs --head"),
    (["start", "--head", "--address", "127.0.0.1:1"], "either --head"),
    (["start", "--head", "--num-workers", "0"], "--num-workers must be at least 1"),
    (["start", "--head", "--port", "70000"], "--port must be in"),
    (["start", "--head", "--dashboard-port", "-1"], "--dashboard-port must be in"),
    (["start", "--address", "127.0.0.1:1", "--dashboard-port", "8"], "goes with --head"),
    (["start", "--head", "--resources", "{bad"], "not valid JSON"),
    (["start", "--head", "--resources", '{"CPU": 2}'], "cannot set CPU"),
    (["start", "--head", "--resources", '{"sim": -1}'], "non-negative"),
    (["start", "--head", "--num-gpus", "-1"], "--num-gpus must be at least 0"),
    (["start", "--address", "nohostport", "--key-file", "/nonexistent"], "cannot read the key"),
    (["stop", "--address", "nope"], "no cluster at 'nope'"),
    (["status", "--address", "nope"], "no cluster at 'nope'"),
])
def test_bad_command_lines_are_clear_errors(cli, args, message):
    out = cli(*args, check=False)
    assert out.returncode != 0
    assert message in out.stderr
    assert cli.records() == []


def test_stop_with_several_clusters_asks_which(cli):
    cli.start_head()
    cli("start", "--head", "--num-workers", "1")
    out = cli("stop", check=False)
    assert out.returncode == 1 and "say which to stop" in out.stderr
    assert len(cli.records()) == 2
    assert "Stopped cluster" in cli("stop", "--all").stdout
    assert cli.records() == []


# ---- demo ----------------------------------------------------------------------------------------
def test_demo_trains_writes_its_report_and_timeline_and_leaves_nothing(cli, tmp_path):
    out_dir = tmp_path / "demo"
    out = cli("demo", "--iterations", "4", "--rollouts", "4", "--episodes", "4",
              "--num-workers", "2", "--out", str(out_dir))
    assert "Summary" in out.stdout
    assert re.search(r"mean return: +\d+\.\d at the start, \d+\.\d at the end", out.stdout)
    assert re.search(r"speedup: .*\(\d+\.\d\dx\)", out.stdout)
    assert "training" in out.stderr and "4/4" in out.stderr        # the progress bar
    report = (out_dir / "report.html").read_text()
    assert "learning curve" in report and "Bokeh" in report
    trace = json.loads((out_dir / "timeline.json").read_text())
    slices = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    assert sum(e["name"] == "rollout" for e in slices) >= 4 * 4
    assert os.listdir(cli.root) == [] if os.path.isdir(cli.root) else True


def test_demo_bad_sizes_are_clear_errors(cli):
    out = cli("demo", "--iterations", "0", check=False)
    assert out.returncode == 2 and "--iterations must be at least 1" in out.stderr
