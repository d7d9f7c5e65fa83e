"""The state API, the timeline and the dashboard's plots on the Ray backend (``pytest -m ray``):
read from Ray's state API on the session's local Ray cluster of two nodes, in nbray's rows, and
what Ray does not expose said by the views rather than drawn empty or guessed."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

import nbray
from conftest import wait_until

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]
pytest.importorskip("bokeh")

from nbray.dashboard import data  # noqa: E402
from nbray.dashboard.plots import LatencyPlot, SchedulerPlot, TaskGraphPlot  # noqa: E402
from nbray.records import phases  # noqa: E402

ENDED = ("finished", "failed", "cancelled")


@nbray.remote
def leaf(i):
    time.sleep(0.01)
    return i


@nbray.remote
def join(a, b):
    return a + b


@nbray.remote
def broken(x):
    raise ValueError(f"bad {x}")


@nbray.remote
def nap(seconds, *inputs):
    time.sleep(seconds)
    return len(inputs)


@nbray.remote
def size_of(array):
    return array.nbytes


@nbray.remote
def wait_for(marker, *inputs):
    while not os.path.exists(marker):
        time.sleep(0.01)
    return "done"


@nbray.remote
class Learner:
    def __init__(self):
        self.steps = 0

    def step(self):
        self.steps += 1
        return self.steps

    def __nbray_state__(self):
        return {"steps": self.steps}


def tid(ref) -> str:
    return ref.task_id().hex()


def records(refs, states=ENDED) -> dict:
    """The task records of ``refs``' tasks, once every one is in ``states`` (Ray's task
    events reach its GCS about a second after the fact)."""
    want = {tid(r) for r in refs}

    def ready():
        rows = {r["task_id"]: r for r in nbray.state.tasks() if r["task_id"] in want}
        return rows if len(rows) == len(want) and all(
            r["state"] in states and (r["state"] not in ("finished", "failed") or
                                      r["started"]) for r in rows.values()) else None
    return wait_until(ready, 20, f"the records of {len(want)} tasks")


def test_without_ray_s_dashboard_the_state_api_says_why():
    # in a process of its own: a second Ray instance started and stopped in this one upsets
    # this process's connection to the session's cluster
    code = ("import nbray\n"
            "nbray.init(backend='ray', num_cpus=1, include_dashboard=False, "
            "log_to_driver=False)\n"
            "try:\n"
            "    nbray.state.tasks()\n"
            "except RuntimeError as e:\n"
            "    print('ERROR', e)\n"
            "finally:\n"
            "    nbray.shutdown()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert "ERROR nbray.state on Ray reads Ray's state API" in out.stdout, out.stderr[-2000:]
    assert "started with include_dashboard=False" in out.stdout


def test_task_records_have_their_life_node_worker_and_inputs(ray_driver):
    leaves = [leaf.remote(i) for i in range(4)]
    top = join.remote(leaves[0], leaves[1])
    assert nbray.get(top) == 1
    rows = records(leaves + [top])
    nodes = {n["node_id"] for n in nbray.state.nodes()}
    for r in rows.values():
        assert r["state"] == "finished" and r["attempts"] == 1 and not r["error"]
        assert r["submitted"] <= r["ready"] <= r["dispatched"] <= r["started"] <= r["ended"]
        assert r["node_id"] in nodes and r["worker_pid"] > 0
        assert r["placement"] is None           # Ray does not say why a node ran it
    assert all(rows[tid(x)]["ended"] - rows[tid(x)]["started"] >= 0.01 for x in leaves)
    assert set(rows[tid(top)]["deps"]) == {tid(leaves[0]), tid(leaves[1])}


def test_failed_cancelled_and_unfinished_tasks_have_their_state(ray_driver, tmp_path):
    bad = broken.remote(3)
    with pytest.raises(ValueError):
        nbray.get(bad)
    marker = str(tmp_path / "go")
    held = wait_for.remote(marker)
    after = join.remote(held, 1)
    rows = records([held, after], states=("running", "waiting", "queued"))
    assert rows[tid(after)]["state"] == "waiting"       # for held's result
    wait_until(lambda: records([held], states=("running",)), 20, "held running")
    nbray.cancel(after)
    open(marker, "w").close()
    assert nbray.get(held) == "done"
    rows = records([bad, after])
    assert rows[tid(bad)]["state"] == "failed" and "ValueError: bad 3" in rows[tid(bad)]["error"]
    assert rows[tid(after)]["state"] == "cancelled"


def test_actors_nodes_summary_and_what_ray_does_not_tell(ray_driver):
    learner = Learner.options(name="ray-learner", num_cpus=1).remote()
    anonymous = Learner.remote()
    nbray.get([learner.step.remote() for _ in range(3)] + [anonymous.step.remote()])
    by_name = {a["name"]: a for a in nbray.state.actors({"class_name": "Learner"})}
    row = by_name["ray-learner"]
    assert row["state"] == "alive" and row["user_state"] == {"steps": 3}
    assert row["resources"].get("CPU") == 1 and row["worker_pid"] > 0
    assert by_name[None]["user_state"] == {"steps": 1}  # a handle this driver made
    assert not any(a["class_name"] == "OutputHub" for a in nbray.state.actors())
    alive = nbray.state.nodes({"state": "alive"})
    assert len(alive) == 2 and all(n["resources"]["CPU"] == 2 for n in alive)
    assert all(n["resources_available"].get("CPU", 0) <= 2 for n in alive)
    wait_until(lambda: nbray.state.summary()["tasks"].get("Learner.step", {}).get(
        "finished", 0) >= 4, 20, "the actor calls counted")
    summary = nbray.state.summary()
    assert summary["actors"]["alive"] >= 2 and summary["nodes"]["alive"] == len(alive)
    notes = nbray.state.unexposed()
    assert {"scheduler", "task_graph", "actors", "events"} <= set(notes)
    assert nbray.state.scheduler()["decisions"] == []
    nbray.kill(learner)
    wait_until(lambda: nbray.state.actors({"name": "ray-learner"})[0]["state"] == "dead",
               20, "the killed actor dead")


def test_the_timeline_has_a_slice_per_task_and_arrows(ray_driver, tmp_path):
    a, b = leaf.remote(1), leaf.remote(2)
    top = join.remote(a, b)
    assert nbray.get(top) == 3
    records([a, b, top])
    trace = nbray.timeline(str(tmp_path / "trace.json"))
    names = [e["name"] for e in trace["traceEvents"] if e["ph"] == "X"]
    assert names.count("join") >= 1 and names.count("leaf") >= 2
    assert sum(1 for e in trace["traceEvents"] if e["ph"] == "s") >= 2
    assert (tmp_path / "trace.json").stat().st_size > 0


def test_the_plots_draw_ray_tasks_and_say_what_ray_does_not_tell(ray_driver):
    a = leaf.remote(1)
    b, c = join.remote(a, 1), join.remote(a, 2)
    d = join.remote(b, c)
    bad = broken.remote(d)
    with pytest.raises(ValueError):
        nbray.get(bad)
    slow_input = nap.remote(0.3)
    waits = nap.remote(0.0, slow_input)
    runs = nap.remote(0.2)
    reads = size_of.remote(nbray.put(np.ones(4_000_000)))    # 32 MB: read by the worker
    assert nbray.get([waits, runs, reads]) == [1, 0, 32_000_000]
    records([a, b, c, d, bad, waits, runs, reads])
    wait_until(lambda: records([reads])[tid(reads)]["inputs_s"] > 0, 20,
               "the worker's profile of reading the argument")    # (it comes on its own)
    snap = data.Snapshot.take()
    graph = TaskGraphPlot()
    graph.update(snap)
    nodes, edges = graph.nodes.data, graph.edges.data
    at = {k: nodes["task_id"].index(tid(r)) for k, r in
          (("a", a), ("b", b), ("c", c), ("d", d), ("bad", bad))}
    assert {(at["a"], at["b"]), (at["a"], at["c"]), (at["b"], at["d"]), (at["c"], at["d"]),
            (at["d"], at["bad"])} <= set(zip(edges["start"], edges["end"]))
    assert nodes["state"][at["bad"]] == "failed" and "bad 5" in nodes["error"][at["bad"]]
    assert "not shown: edges only into tasks this driver submitted" in graph.status.text
    by_id = {r["task_id"]: r for r in snap.tasks}
    assert phases(by_id[tid(waits)])["inputs"] >= 0.25     # it waited for slow_input
    assert phases(by_id[tid(runs)])["execution"] >= 0.19
    assert phases(by_id[tid(reads)])["transfer"] > 0
    latency = LatencyPlot()
    latency.update(snap)
    assert "nap" in latency.phases.data["function"] and "p50" in latency.status.text
    scheduler = SchedulerPlot()
    scheduler.update(snap)
    per_node = scheduler.per_node.data
    assert len(per_node["node"]) >= 1 and sum(per_node["not told by the engine"]) >= 8
    assert sum(per_node["kept local"]) == 0
    assert "Ray does not expose its schedulers&#x27; decisions" in scheduler.status.text


def test_the_panels_show_ray_state_and_its_gaps(ray_driver):
    pytest.importorskip("ipywidgets")
    from nbray.extension.widgets import ActorPanel, ClusterPanel, Dashboard, TaskPanel
    learner = Learner.options(name="panel-learner").remote()
    nbray.get(learner.step.remote())
    actors = ActorPanel()
    actors.refresh()
    assert "panel-learner" in actors.widget.value and "&#x27;steps&#x27;: 1" in \
        actors.widget.value and "queued and running calls" in actors.widget.value
    cluster = ClusterPanel()
    cluster.refresh()
    assert cluster.widget.value.count("alive") >= 2 and "idle from busy" in cluster.widget.value
    tasks = TaskPanel()
    wait_until(lambda: tasks.refresh() or ">Learner.step<" in tasks.widget.value, 20,
               "the call counted")
    board = Dashboard(interval=0.2).start()
    try:
        wait_until(lambda: all(p.refreshes >= 2 for p in board.panels), 30, "refreshes")
        assert all(p.error == "" for p in board.panels)
    finally:
        board.stop()
    nbray.kill(learner)

