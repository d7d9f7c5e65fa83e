"""The live panels, their models updated from a real cluster (what the browser would draw is
the HTML they hold), on nbray's runtime and (marked ``ray``) on the Ray backend."""
from __future__ import annotations

import pytest

import nbray
from conftest import wait_until

pytestmark = pytest.mark.timeout(120)
W = pytest.importorskip("ipywidgets")

from nbray.extension.widgets import ActorPanel, ClusterPanel, Dashboard, TaskPanel  # noqa: E402


@nbray.remote
def square(x):
    return x * x


@nbray.remote
class Learner:
    def __init__(self):
        self.steps = 0

    def step(self):
        self.steps += 1
        return self.steps

    def __nbray_state__(self):
        return {"steps": self.steps}


def test_the_cluster_panel_shows_the_nodes(any_cluster):
    panel = ClusterPanel()
    panel.refresh()
    html = panel.widget.value
    assert all(n["node_id"][:8] in html for n in nbray.state.nodes()) and "alive" in html
    assert "CPU" in html and "memory" in html and "nbray-cluster" in panel.widget._dom_classes


def test_the_actor_panel_shows_each_actor_and_its_state(any_cluster):
    learner = Learner.options(name="learner").remote()
    nbray.get([learner.step.remote() for _ in range(3)])
    panel = ActorPanel()
    panel.refresh()
    assert "learner" in panel.widget.value and "Learner" in panel.widget.value
    assert "&#x27;steps&#x27;: 3" in panel.widget.value
    nbray.kill(learner)


def test_the_task_panel_counts_by_function(any_cluster):
    nbray.get([square.remote(i) for i in range(5)])
    panel = TaskPanel()
    wait_until(lambda: panel.refresh() or ">square<" in panel.widget.value and
               " ms" in panel.widget.value, 20, "the task records and their times")


def test_a_started_panel_updates_live_and_stops_when_closed(any_cluster):
    panel = ClusterPanel().start(interval=0.2)
    wait_until(lambda: panel.refreshes >= 3, 10, "three refreshes")
    panel.widget.close()                        # the browser side went away
    wait_until(lambda: not panel._thread.is_alive(), 5, "the thread to end")
    learner = TaskPanel().start(interval=0.01)  # asked too often: capped at MAX_HZ
    wait_until(lambda: learner.refreshes >= 2, 10, "two refreshes")
    learner.stop()
    assert not learner._thread.is_alive()


def test_the_dashboard_has_every_panel_and_refreshes_them(any_cluster):
    board = Dashboard(interval=0.2, plots=False).start()      # the plots: test_plots.py
    try:
        assert [type(p) for p in board.panels] == [ClusterPanel, TaskPanel, ActorPanel]
        wait_until(lambda: all(p.refreshes >= 2 for p in board.panels), 10, "refreshes")
        assert "nbray-dashboard" in board.widget._dom_classes
    finally:
        board.stop()
    assert not board._thread.is_alive()
