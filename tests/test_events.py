"""The event log: every retry, loss, reconstruction, actor restart and replay, and node death is
an event in the head's log, with its cause, read by ``nbray.state.events()``.

Faults are real: workers are SIGKILLed, segments unlinked, nodes killed."""
from __future__ import annotations

import os
import signal

import numpy as np
import pytest

import nbray
from conftest import pid_alive, shutdown_and_check, start_cluster, wait_until
from test_lineage import N, _drop_segment, make, plus, total
from test_multinode import MultiNode, _kill_node, _wait_nodes, multi  # noqa: F401

pytestmark = pytest.mark.timeout(120)


def _events(kind: str, count: int = 1, **match) -> list[dict]:
    """Wait for ``count`` events of ``kind`` whose fields include ``match``."""
    def found():
        rows = [e for e in nbray.state.events(kinds=kind)
                if all(e.get(k) == v for k, v in match.items())]
        return rows if len(rows) >= count else None
    return wait_until(found, 10, f"{count} {kind} event(s) with {match}")


@nbray.remote
def pid_then_wait(marker, seconds):
    if not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        import time
        time.sleep(seconds)
    return "done"


def _kill_when_running(marker) -> int:
    from pathlib import Path
    pid = int(wait_until(lambda: os.path.exists(marker) and Path(marker).read_text(), 20,
                         "the task to start"))
    os.kill(pid, signal.SIGKILL)
    return pid


def test_a_worker_killed_mid_task_is_a_retry_event_with_its_cause(cluster, tmp_path):
    marker = str(tmp_path / "pid")
    ref = pid_then_wait.remote(marker, 30)
    _kill_when_running(marker)
    assert nbray.get(ref, timeout=60) == "done"
    (event,) = _events("task_retried")
    assert "pid_then_wait" in event["name"]
    assert "worker died" in event["cause"] and event["attempt"] == 1
    assert event["pid"] == os.getpid() and event["seq"] >= 1 and event["time"] > 0


def test_exhausted_retries_are_a_failed_event(cluster, tmp_path):
    marker = str(tmp_path / "pid")
    ref = pid_then_wait.options(max_retries=0).remote(marker, 30)
    _kill_when_running(marker)
    with pytest.raises(nbray.WorkerCrashedError):
        nbray.get(ref, timeout=60)
    (event,) = _events("task_failed")
    assert "pid_then_wait" in event["name"] and "worker died" in event["cause"]
    assert not nbray.state.events(kinds="task_retried")


@nbray.remote(retry_exceptions=True, max_retries=2)
def flaky(path):
    from pathlib import Path
    tries = int(Path(path).read_text()) if os.path.exists(path) else 0
    with open(path, "w") as f:
        f.write(str(tries + 1))
    if tries == 0:
        raise ValueError("first try fails")
    return tries


def test_an_application_error_retried_is_an_event_naming_the_error(cluster, tmp_path):
    assert nbray.get(flaky.remote(str(tmp_path / "tries")), timeout=30) == 1
    (event,) = _events("task_retried")
    assert "flaky" in event["name"] and "ValueError: first try fails" in event["cause"]


def test_a_rebuild_is_a_loss_then_a_reconstruction(cluster):
    ref = make.remote(N, 1)
    expected = nbray.get(ref).copy()
    _drop_segment(cluster, ref)
    assert np.array_equal(nbray.get(ref, timeout=30), expected)
    (lost,) = _events("object_lost", object_id=ref.hex())
    (rebuilt,) = _events("task_reconstructed", object_id=ref.hex())
    assert "make" in rebuilt["name"] and rebuilt["cause"] == lost["cause"]
    assert rebuilt["seq"] > lost["seq"]


def test_a_lost_put_object_is_a_failed_reconstruction_saying_why(cluster):
    ref = nbray.put(np.ones(N))
    _drop_segment(cluster, ref)
    with pytest.raises(nbray.ObjectLostError):
        nbray.get(ref, timeout=10)
    (event,) = _events("reconstruction_failed", object_id=ref.hex())
    assert "made by put" in event["why"]


def test_an_object_whose_lineage_was_evicted_says_so(cluster, monkeypatch):
    from nbray.config import CONFIG
    monkeypatch.setattr(CONFIG, "lineage_max", 3)
    refs = [make.remote(N, i) for i in range(6)]
    nbray.wait(refs, num_returns=len(refs), timeout=60)
    kept = cluster.client.lineage.tasks
    assert len(kept) == 3                   # the three that finished last keep theirs
    evicted = [r for r in refs if r.binary() not in kept]
    alive = [r for r in refs if r.binary() in kept]
    _drop_segment(cluster, evicted[0])
    with pytest.raises(nbray.ObjectLostError, match="lineage was evicted"):
        nbray.get(evicted[0], timeout=10)
    _drop_segment(cluster, alive[0])        # one that kept its lineage is rebuilt
    assert nbray.get(total.remote(alive[0]), timeout=30) > 0
    (event,) = _events("reconstruction_failed", object_id=evicted[0].hex())
    assert "NBRAY_LINEAGE_MAX" in event["why"]


def test_an_evicted_input_of_a_rebuild_says_so(cluster, monkeypatch):
    from nbray.config import CONFIG
    monkeypatch.setattr(CONFIG, "lineage_max", 1)
    a = make.remote(N, 4)
    b = plus.remote(a, 1)
    nbray.get(b)                            # b keeps its lineage; a's was evicted
    _drop_segment(cluster, a)
    _drop_segment(cluster, b)
    with pytest.raises(nbray.ObjectLostError, match="lineage was evicted"):
        nbray.get(b, timeout=10)            # b runs again, and cannot read a


@nbray.remote(max_restarts=-1, max_task_retries=-1)
class Tally:
    def __init__(self):
        self.n = 0

    def add(self, k):
        self.n += k
        return self.n

    def pid(self):
        return os.getpid()


def test_an_actor_restart_and_its_replay_are_events(cluster):
    t = Tally.remote()
    assert nbray.get([t.add.remote(1) for _ in range(20)])[-1] == 20
    pid = nbray.get(t.pid.remote(), timeout=30)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), 10, "the actor's worker to die")
    assert nbray.get(t.add.remote(1), timeout=30) == 21          # replayed, then this
    aid = t._actor_id.hex()
    (restart,) = _events("actor_restarted", actor_id=aid)
    assert restart["class_name"] == "Tally" and restart["restart"] == 1
    assert "worker died" in restart["cause"]
    (replay,) = _events("actor_replayed", actor_id=aid)
    assert replay["calls"] == 21 and replay["from_checkpoint"] is False   # 20 adds, 1 pid
    assert replay["seq"] > restart["seq"]
    nbray.kill(t)
    (died,) = _events("actor_died", actor_id=aid)
    assert "nbray.kill" in died["cause"]


def test_the_log_is_a_bounded_ring(no_cluster, monkeypatch):
    monkeypatch.setenv("NBRAY_EVENT_LOG_MAX", "4")      # for the head
    cluster = start_cluster()
    try:
        for _ in range(3):              # 2 events each: lost, and cannot be rebuilt
            ref = nbray.put(np.ones(N))
            _drop_segment(cluster, ref)
            with pytest.raises(nbray.ObjectLostError):
                nbray.get(ref, timeout=10)
        rows = wait_until(lambda: (lambda r: r if r and r[-1]["seq"] == 6 else None)(
            nbray.state.events()), 10, "six events")
        assert [e["seq"] for e in rows] == [3, 4, 5, 6]
        assert [e["seq"] for e in nbray.state.events(since_seq=4)] == [5, 6]
        assert [e["seq"] for e in nbray.state.events(limit=1)] == [6]
    finally:
        shutdown_and_check()


def test_a_node_death_is_an_event_and_its_objects_rebuilt_are_too(multi):
    multi.start(num_workers=1)
    first = multi.add_node(num_workers=1, resources={"far": 1})
    nbray.init(address=multi.address)
    _wait_nodes(2)
    a = make.options(resources={"far": 1}).remote(N, 7)
    expected = nbray.get(a).copy()
    multi.add_node(num_workers=1, resources={"far": 1})
    _wait_nodes(3)
    _kill_node(first)
    (died,) = _events("node_died")
    assert "heartbeat" in died["cause"]
    assert np.array_equal(nbray.get(a, timeout=60), expected)
    (lost,) = _events("object_lost", object_id=a.hex())
    assert "node died" in lost["cause"]
    _events("task_reconstructed", object_id=a.hex())


def test_the_task_log_is_a_bounded_ring(no_cluster, monkeypatch):
    monkeypatch.setenv("NBRAY_TASK_LOG_MAX", "5")       # for the head
    start_cluster()
    try:
        nbray.get([plus.remote(i, 1) for i in range(8)])
        rows = wait_until(lambda: (lambda r: r if r and r[-1]["seq"] >= 8 else None)(
            nbray.state.tasks(pending=False)), 10, "eight records")
        assert len(rows) == 5
    finally:
        shutdown_and_check()
