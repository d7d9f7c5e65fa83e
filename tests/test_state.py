"""The task log and the state API on a real cluster: every finished task has a record with its
times, node and worker; unfinished ones show where they wait; the timeline is a Chrome trace
with a track per worker and arrows for dependencies; the log is a bounded ring."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

import nbray
from conftest import wait_until

pytestmark = pytest.mark.timeout(120)


@nbray.remote
def leaf(i):
    time.sleep(0.01)
    return i


@nbray.remote
def join(a, b):
    return a + b


@nbray.remote
def broken():
    raise ValueError("broken on purpose")


@nbray.remote
def wait_for(marker):
    while not os.path.exists(marker):
        time.sleep(0.01)
    return "done"


@nbray.remote
class Counter:
    def add(self, k):
        return k


def _records(name: str, n: int) -> list[dict]:
    return wait_until(lambda: (lambda rows: rows if len(rows) >= n else None)(
        [r for r in nbray.state.tasks(pending=False) if r["name"] == name]), 10,
        f"{n} records of {name}")


def test_every_finished_task_has_a_record_with_its_life(module_cluster):
    leaves = [leaf.remote(i) for i in range(4)]
    assert nbray.get(join.remote(leaves[0], leaves[1])) == 1
    rows = _records("leaf", 4)
    (j,) = _records("join", 1)
    for r in rows + [j]:
        assert r["state"] == "finished" and r["attempts"] == 1 and not r["error"]
        assert r["submitted"] <= r["ready"] <= r["dispatched"] <= r["started"] <= r["ended"]
        assert r["worker_pid"] in module_cluster.worker_pids() or r["worker_pid"] > 0
        assert r["node_id"] == module_cluster.client.node_id.hex()
        assert r["result_bytes"] > 0 and r["arg_bytes"] > 0
    assert all(r["ended"] - r["started"] >= 0.01 for r in rows)
    assert set(j["deps"]) == {leaves[0].binary()[:16].hex(), leaves[1].binary()[:16].hex()}


def test_failed_and_actor_calls_are_recorded_too(module_cluster):
    with pytest.raises(ValueError):
        nbray.get(broken.remote())
    (r,) = _records("broken", 1)
    assert r["state"] == "failed" and r["error"] == "ValueError: broken on purpose"
    c = Counter.remote()
    assert nbray.get(c.add.remote(3)) == 3
    (call,) = _records("Counter.add", 1)
    assert call["actor_id"] == c._actor_id.hex() and call["worker_pid"] > 0
    assert nbray.state.tasks({"state": "failed", "name": "broken"})


def test_unfinished_tasks_show_where_they_wait(module_cluster, tmp_path):
    marker = str(tmp_path / "go")
    running = wait_for.remote(marker)
    waiting = join.remote(running, 1)               # waits for its input
    wait_until(lambda: any(r["task_id"] == running.binary()[:16].hex() and
                           r["state"] == "running" for r in nbray.state.tasks()), 10,
               "the task to be running")
    (w,) = [r for r in nbray.state.tasks() if r["task_id"] == waiting.binary()[:16].hex()]
    assert w["state"] == "waiting"
    Path(marker).touch()
    with pytest.raises(TypeError):
        nbray.get(waiting, timeout=30)              # "done" + 1


@nbray.remote
def parent_of(marker, then=None):
    value = nbray.get(wait_for.remote(marker))
    if then:                            # busy a while after: it reports nothing meanwhile
        while not os.path.exists(then):
            time.sleep(0.01)
    return value


def test_unfinished_tasks_of_other_processes_are_seen_too(module_cluster, tmp_path):
    """A task's own tasks are unfinished in its worker, not here: the worker reports them to
    the head, and the state API here shows them."""
    marker = str(tmp_path / "go")
    parent = parent_of.remote(marker)

    def child():
        rows = [r for r in nbray.state.tasks({"name": "wait_for"})
                if r["state"] == "running" and r["owner_pid"] != os.getpid()]
        return rows[0] if rows else None
    row = wait_until(child, 10, "the child task, running, owned by the parent's worker")
    (p,) = [r for r in nbray.state.tasks() if r["task_id"] == parent.binary()[:16].hex()]
    assert p["state"] == "running" and row["owner_pid"] == p["worker_pid"]
    assert row["node_id"] and row["worker_pid"] not in (0, p["worker_pid"])
    Path(marker).touch()
    assert nbray.get(parent, timeout=30) == "done"
    wait_until(lambda: not [r for r in nbray.state.tasks({"name": "wait_for"})
                            if r["state"] != "finished"], 10,
               "the child's report to say it is done")


def test_an_ended_task_of_another_process_is_not_seen_running(module_cluster, tmp_path):
    marker, then = str(tmp_path / "go"), str(tmp_path / "then")
    parent = parent_of.remote(marker, then)
    wait_until(lambda: [r for r in nbray.state.tasks({"name": "wait_for"})
                        if r["state"] == "running" and r["owner_pid"] != os.getpid()], 10,
               "the child to run")
    Path(marker).touch()                # the child ends; its parent keeps busy
    child = wait_until(lambda: (lambda rows: rows[-1] if rows and all(
        r["state"] == "finished" for r in rows) else None)(
        [r for r in nbray.state.tasks({"name": "wait_for"}) if r["owner_pid"] != os.getpid()]),
        10, "the child to be seen finished, not running, while its parent is busy")
    assert child["state"] == "finished"
    (p,) = [r for r in nbray.state.tasks() if r["task_id"] == parent.binary()[:16].hex()]
    assert p["state"] == "running"
    Path(then).touch()
    assert nbray.get(parent, timeout=30) == "done"


def test_unfinished_tasks_do_not_crowd_out_the_ended_ones(module_cluster, tmp_path):
    from nbray.dashboard.data import Snapshot
    nbray.get([leaf.remote(i) for i in range(80)])
    marker = str(tmp_path / "go")
    held = [wait_for.remote(marker) for _ in range(2)]
    queued = [leaf.remote(i) for i in range(300)]
    snap = wait_until(lambda: (lambda s: s if len(s.tasks) == 100 else None)(
        Snapshot.take(100)), 10, "a full snapshot")
    states = [r["state"] for r in snap.tasks]
    assert 0 < states.count("finished") and len(states) - states.count("finished") <= 50
    assert len(nbray.state.tasks(limit=30, pending=False)) == 30
    Path(marker).touch()
    nbray.get(held + queued)


def test_the_timeline_is_a_chrome_trace_with_tracks_and_arrows(module_cluster, tmp_path):
    nbray.get(join.remote(leaf.remote(1), leaf.remote(2)))
    _records("join", 1)
    path = str(tmp_path / "trace.json")
    nbray.timeline(path)
    trace = json.loads(Path(path).read_text())
    events = trace["traceEvents"]
    slices = [e for e in events if e["ph"] == "X"]
    assert slices and all(e["dur"] > 0 and e["ts"] > 0 for e in slices)
    assert {e["name"] for e in slices} >= {"leaf", "join"}
    starts = {e["id"] for e in events if e["ph"] == "s"}
    ends = {e["id"] for e in events if e["ph"] == "f"}
    assert starts and starts == ends                # every arrow has both ends
    names = {e["args"]["name"] for e in events if e["ph"] == "M"}
    assert any(n.startswith("node ") for n in names)
    assert any(n.startswith("worker pid ") for n in names)


def test_summary_counts_by_function_and_state(module_cluster):
    nbray.get([leaf.remote(i) for i in range(3)])
    s = nbray.state.summary()
    assert s["tasks"]["leaf"]["finished"] >= 3 and s["tasks"]["leaf"]["mean_run_s"] >= 0.01
    assert s["nodes"] == {"alive": 1}
    ref = nbray.put(b"x" * 200_000)
    (row,) = nbray.state.objects({"object_id": ref.hex()})
    assert row["size"] >= 200_000 and row["where"].startswith("node ") and row["made_by_put"]


def test_recording_can_be_turned_off(module_cluster, monkeypatch):
    from nbray.config import CONFIG
    monkeypatch.setattr(CONFIG, "task_events", False)
    before = len([r for r in nbray.state.tasks(pending=False) if r["name"] == "join"])
    nbray.get(join.remote(1, 2))
    assert len([r for r in nbray.state.tasks(pending=False) if r["name"] == "join"]) == before
