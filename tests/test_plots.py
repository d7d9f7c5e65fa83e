"""The dashboard's bokeh plots and their widgets, their data sources filled from a real cluster:
the task graph of a real DAG (with a failure and a real reconstruction), the latency phases of
tasks that really wait for inputs, read big arguments and sleep, and the bound on what is drawn.
What the browser makes of them is tested in ``test_browser.py``."""
from __future__ import annotations

import time

import numpy as np
import pytest

import nbray
from conftest import wait_until
from test_lineage import N, _drop_segment, make

pytestmark = pytest.mark.timeout(120)
pytest.importorskip("bokeh")

from nbray.dashboard import data  # noqa: E402
from nbray.dashboard.plots import LatencyPlot, SchedulerPlot, TaskGraphPlot  # noqa: E402


@nbray.remote
def source(x):
    return x


@nbray.remote
def both(a, b):
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


def _snapshot(count: int, **match) -> data.Snapshot:
    """A snapshot once the records of ``count`` tasks matching ``match`` are in."""
    def ready():
        snap = data.Snapshot.take()
        rows = [r for r in snap.tasks if all(r.get(k) == v for k, v in match.items())]
        return snap if len(rows) >= count else None
    return wait_until(ready, 10, f"{count} task records with {match}")


def test_the_task_graph_draws_the_dag_by_state(module_cluster):
    a = source.remote(1)
    b, c = both.remote(a, 1), both.remote(a, 2)
    d = both.remote(b, c)
    bad = broken.remote(d)
    assert nbray.get(d) == 5
    with pytest.raises(ValueError):
        nbray.get(bad)
    snap = _snapshot(1, name="broken")
    plot = TaskGraphPlot()
    plot.update(snap)
    nodes, edges = plot.nodes.data, plot.edges.data
    ids = {ref.hex()[:32]: name for ref, name in ((a, "a"), (b, "b"), (c, "c"), (d, "d"), (bad, "bad"))}
    at = {ids[t]: i for i, t in enumerate(nodes["task_id"]) if t in ids}
    assert set(at) == {"a", "b", "c", "d", "bad"}
    pairs = set(zip(edges["start"], edges["end"]))
    assert {(at["a"], at["b"]), (at["a"], at["c"]), (at["b"], at["d"]), (at["c"], at["d"]),
            (at["d"], at["bad"])} <= pairs
    x = {k: plot.layout_provider.graph_layout[i][0] for k, i in at.items()}
    assert x["a"] < x["b"] < x["d"] < x["bad"] and x["b"] == x["c"]
    assert nodes["state"][at["bad"]] == "failed"
    assert "ValueError: bad 5" in nodes["error"][at["bad"]]
    assert nodes["state"][at["d"]] == "finished"
    assert "1 failed" in plot.status.text


def test_a_reconstructed_task_is_ringed(module_cluster):
    ref = make.remote(N, 1)
    expected = nbray.get(ref).copy()
    _drop_segment(module_cluster, ref)
    assert np.array_equal(nbray.get(ref, timeout=30), expected)
    wait_until(lambda: nbray.state.events(kinds="task_reconstructed"), 10, "the rebuild event")
    plot = TaskGraphPlot()
    plot.update(_snapshot(1, name=nbray.state.events(kinds="task_reconstructed")[0]["name"]))
    nodes = plot.nodes.data
    i = nodes["task_id"].index(ref.hex()[:32])
    assert nodes["reconstructed"][i] == "yes" and nodes["width"][i] == 3
    assert "1 reconstructed" in plot.status.text


def test_unfinished_tasks_are_drawn_waiting_and_running(module_cluster, tmp_path):
    gate = tmp_path / "go"

    @nbray.remote
    def held(path):
        import os
        import time as t
        while not os.path.exists(path):
            t.sleep(0.01)
        return 1

    first = held.remote(str(gate))
    after = both.remote(first, 1)
    plot = TaskGraphPlot()

    def drawn():
        plot.update(data.Snapshot.take())
        states = dict(zip(plot.nodes.data["task_id"], plot.nodes.data["state"]))
        return states.get(first.hex()[:32]) == "running" and \
            states.get(after.hex()[:32]) == "waiting"
    wait_until(drawn, 10, "the running task and the one waiting for it")
    gate.write_text("")
    assert nbray.get(after) == 2


def test_the_graph_draws_only_the_newest_tasks(module_cluster):
    refs = [source.remote(i) for i in range(600)]
    nbray.get(refs, progress=False)
    snap = _snapshot(600, name="source")
    plot = TaskGraphPlot(max_tasks=250)
    plot.update(data.Snapshot.take(250))
    assert len(plot.nodes.data["task_id"]) == 250
    assert plot.nodes.data["task_id"][-1] == snap.tasks[-1]["task_id"]
    assert "at most 250" in plot.status.text


def test_latency_is_split_into_its_phases(module_cluster):
    slow_input = nap.remote(0.3)
    waits = nap.remote(0.0, slow_input)
    runs = nap.remote(0.2)
    big = nbray.put(np.ones(4_000_000))             # 32 MB: read from shared memory
    reads = size_of.remote(big)
    assert nbray.get([waits, runs, reads]) == [1, 0, 32_000_000]
    _snapshot(3, name="nap")
    snap = _snapshot(1, name="size_of")
    by_id = {r["task_id"]: r for r in snap.tasks}

    def phases(ref):
        return data.phases(by_id[ref.hex()[:32]])
    assert phases(waits)["inputs"] >= 0.25          # it waited for slow_input's 0.3 s
    assert phases(runs)["execution"] >= 0.19        # it slept 0.2 s
    assert phases(reads)["transfer"] > 0
    for ref in (waits, runs, reads):
        r = by_id[ref.hex()[:32]]
        assert sum(phases(ref).values()) == pytest.approx(r["ended"] - r["submitted"],
                                                          abs=1e-6)
    plot = LatencyPlot()
    plot.update(snap)
    cols = plot.phases.data
    row = cols["function"].index("nap")
    assert cols["count"][row] >= 3 and cols["execution"][row] > 0
    assert sum(plot.hist.data["count"]) == len([r for r in snap.tasks if r.get("ended")])
    assert "p50" in plot.status.text and plot.select.options[0] == "all"
    plot._chosen("value", "all", "nap")                 # the function picked in the browser
    plot.update(snap)
    assert sum(plot.hist.data["count"]) == cols["count"][row]
    assert plot.status.text.startswith("nap:")


def test_placement_kinds():
    assert data.placement_kind("") == "kept local"
    assert data.placement_kind("queue: its resources are busy here; ...") == "spilled: queue"
    assert data.placement_kind("resources: not feasible here (GPU)") == "spilled: resources"
    assert data.placement_kind("locality: the task's input bytes are on another node") == \
        "spilled: locality"


def test_the_scheduler_plot_on_one_node_keeps_everything_local(module_cluster):
    nbray.get([source.remote(i) for i in range(5)])
    plot = SchedulerPlot()
    plot.update(_snapshot(5, name="source"))
    per_node = plot.per_node.data
    assert per_node["node"] and per_node["node"][0].startswith(
        module_cluster.client.node_id.hex()[:8])
    assert per_node["kept local"][0] >= 5 and per_node["spilled: queue"] == [0]
    assert plot.decisions.data["from"] == []


def test_the_widgets_and_the_dashboard_hold_the_plots(module_cluster):
    pytest.importorskip("jupyter_bokeh")
    from nbray.extension.widgets import (Dashboard, LatencyHistogram, SchedulerView,
                                         TaskGraph)
    nbray.get([both.remote(source.remote(i), 1) for i in range(10)])
    _snapshot(10, name="both")
    graph = TaskGraph()
    graph.refresh()
    assert graph.error == "" and len(graph.plot.nodes.data["task_id"]) >= 20
    assert "nbray-task-graph" in graph.widget._dom_classes
    for cls in (LatencyHistogram, SchedulerView):
        w = cls()
        w.refresh()
        assert w.error == "" and w.plot.updates == 1
    board = Dashboard(interval=0.2).start()
    try:
        names = [type(p).__name__ for p in board.panels]
        assert names == ["ClusterPanel", "TaskPanel", "ActorPanel", "TaskGraph",
                         "LatencyHistogram", "SchedulerView"]
        wait_until(lambda: all(p.refreshes >= 2 for p in board.panels), 10, "refreshes")
        assert all(p.error == "" for p in board.panels)
    finally:
        board.stop()


def test_bokehjs_is_not_loaded_again_after_the_user_loaded_it_inline(monkeypatch):
    import bokeh.io
    import bokeh.io.notebook
    from bokeh.resources import CDN, INLINE
    from nbray.extension import widgets
    calls = []
    monkeypatch.setattr(bokeh.io, "output_notebook", lambda **kw: calls.append(kw))
    monkeypatch.setattr(widgets, "_bokehjs_loaded", False)
    monkeypatch.setattr(bokeh.io.notebook, "_NOTEBOOK_LOADED", INLINE)   # output_notebook(INLINE)
    widgets.load_bokehjs()
    assert calls == []
    monkeypatch.setattr(widgets, "_bokehjs_loaded", False)
    monkeypatch.setattr(bokeh.io.notebook, "_NOTEBOOK_LOADED", CDN)      # unreachable offline
    widgets.load_bokehjs()
    assert len(calls) == 1 and calls[0]["resources"] is INLINE
