"""Actors when things go wrong: workers SIGKILLed mid-call (restarts, retried calls, or a clear
error), actors whose handles are all gone, owners that die, and drivers in other processes that
find an actor by name. Each test runs its own cluster (or one started with the CLI)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import nbray
from conftest import pid_alive, wait_until
from test_actors import Counter, _no_actor, total

pytestmark = pytest.mark.timeout(90)


def _cli_cluster(tmp_path, monkeypatch) -> dict:
    """A cluster started with `nbray start --head` in a private run root (stopped by the test)."""
    from nbray.config import CONFIG
    root = str(tmp_path / "run")
    monkeypatch.setattr(CONFIG, "run_root", root)
    env = dict(os.environ, NBRAY_RUN_ROOT=root)
    out = subprocess.run([sys.executable, "-m", "nbray.cli", "start", "--head",
                          "--num-workers", "2"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return env


def _stop_cli_cluster(env) -> None:
    if nbray.is_initialized():
        nbray.shutdown()
    subprocess.run([sys.executable, "-m", "nbray.cli", "stop", "--all"], env=env,
                   capture_output=True, timeout=60)


@nbray.remote(max_restarts=2, max_task_retries=-1)
class Durable:
    def __init__(self):
        self.calls = 0

    def pid(self):
        return os.getpid()

    def step(self, seconds=0.0, marker=None):
        self.calls += 1
        if marker:
            with open(marker, "w") as f:
                f.write("x")
        time.sleep(seconds)
        return self.calls


def test_sigkilled_actor_restarts_and_retries_calls_in_flight(cluster, tmp_path):
    d = Durable.remote()
    pid = nbray.get(d.pid.remote(), timeout=30)
    marker = str(tmp_path / "running")
    in_flight = [d.step.remote(1.0, marker)] + [d.step.remote() for _ in range(5)]
    wait_until(lambda: os.path.exists(marker), 20, "a call to be running")
    os.kill(pid, signal.SIGKILL)
    # retried on the new incarnation, in order; its state starts fresh
    assert nbray.get(in_flight, timeout=60) == [1, 2, 3, 4, 5, 6]
    new_pid = nbray.get(d.pid.remote(), timeout=30)
    assert new_pid != pid and pid_alive(new_pid)
    rows = wait_until(lambda: [r for r in nbray.state.actors() if r["restarts"] == 1], 10,
                      "the head to record the restart")
    states = [h["state"] for h in rows[0]["history"]]
    assert states[:3] == ["pending", "alive", "restarting"] and states[-1] == "alive"
    assert "worker died" in rows[0]["history"][2]["detail"]


def test_restarts_run_out_and_then_calls_fail(cluster):
    d = Durable.options(max_restarts=1).remote()
    for _ in range(2):
        pid = nbray.get(d.pid.remote(), timeout=30)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid), 10, "the worker to die")
    with pytest.raises(nbray.ActorDiedError, match="after 1 restart"):
        nbray.get(d.step.remote(), timeout=30)


def test_without_restarts_a_dead_actor_fails_calls_and_never_hangs(cluster, tmp_path):
    c = Counter.remote()
    pid = nbray.get(c.pid.remote(), timeout=30)
    marker = str(tmp_path / "slow")
    running = c.slow.remote(30, marker)
    wait_until(lambda: os.path.exists(marker), 20, "the call to start")
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(nbray.ActorDiedError, match="max_restarts=0"):
        nbray.get(running, timeout=20)
    with pytest.raises(nbray.ActorDiedError):
        nbray.get(c.inc.remote(), timeout=20)
    assert nbray.get(total.remote(np.ones(3)), timeout=30) == 3.0     # the node carries on


def test_kill_with_restart_behaves_like_a_crash(cluster):
    d = Durable.remote()
    assert nbray.get(d.step.remote(), timeout=30) == 1
    pid = nbray.get(d.pid.remote())
    nbray.kill(d, no_restart=False)
    wait_until(lambda: not pid_alive(pid), 10, "the worker to die")
    # a new instance, its state rebuilt by replaying the call that had run
    assert nbray.get(d.step.remote(), timeout=30) == 2


def test_actor_ends_when_no_handle_is_left(cluster):
    c = Counter.remote()
    pid = nbray.get(c.pid.remote(), timeout=30)
    last = c.inc.remote()           # a call made before the handle goes still runs
    del c
    assert nbray.get(last, timeout=30) == 1
    wait_until(lambda: not pid_alive(pid), 10, "the actor's worker to exit")
    wait_until(lambda: [r["state"] for r in nbray.state.actors()] == ["dead"], 10,
               "the head to mark the actor dead")


def test_handle_held_by_a_task_keeps_the_actor_alive(cluster):
    @nbray.remote
    def hold_then_call(handles, seconds):
        time.sleep(seconds)
        return nbray.get(handles[0].inc.remote())

    c = Counter.remote()
    pid = nbray.get(c.pid.remote(), timeout=30)
    ref = hold_then_call.remote([c], 1.0)
    del c
    assert nbray.get(ref, timeout=30) == 1
    wait_until(lambda: not pid_alive(pid), 10, "the actor's worker to exit after the task")


OWNER_DRIVER = """
import os, sys, time, nbray
nbray.init(address=sys.argv[1])

@nbray.remote
class Owned:
    def pid(self):
        return os.getpid()
    def ping(self):
        return "pong"

a = Owned.options(name="orphan").remote()
print("PID", nbray.get(a.pid.remote(), timeout=30), flush=True)
time.sleep(600)
"""


def test_actor_dies_with_its_owner_and_other_callers_are_told(tmp_path, monkeypatch,
                                                              no_cluster):
    env = _cli_cluster(tmp_path, monkeypatch)
    script = tmp_path / "owner.py"
    script.write_text(OWNER_DRIVER)
    owner = subprocess.Popen([sys.executable, str(script), "auto"], env=env,
                             stdout=subprocess.PIPE, text=True)
    try:
        line = owner.stdout.readline()
        assert line.startswith("PID "), line
        actor_pid = int(line.split()[1])
        nbray.init(address="auto")
        h = nbray.get_actor("orphan")
        assert nbray.get(h.ping.remote(), timeout=30) == "pong"
        owner.kill()
        owner.wait(10)
        wait_until(lambda: not pid_alive(actor_pid), 15, "the orphaned actor to be stopped")
        with pytest.raises(nbray.ActorDiedError, match="owner died"):
            nbray.get(h.ping.remote(), timeout=20)
        wait_until(lambda: _no_actor("orphan"), 10, "the head to forget the orphan's name")
    finally:
        owner.kill()
        owner.wait(10)
        owner.stdout.close()
        _stop_cli_cluster(env)


SECOND_DRIVER = """
import sys, nbray
nbray.init(address=sys.argv[1])
h = nbray.get_actor("shared")
print("VALUE", nbray.get(h.inc.remote(10), timeout=30))
nbray.shutdown()
"""


def test_named_actor_is_found_from_another_driver(tmp_path, monkeypatch, no_cluster):
    env = _cli_cluster(tmp_path, monkeypatch)
    try:
        nbray.init(address="auto")
        c = Counter.options(name="shared").remote(1)
        assert nbray.get(c.inc.remote(), timeout=30) == 2
        script = tmp_path / "second.py"
        script.write_text(SECOND_DRIVER)
        second = subprocess.run([sys.executable, str(script), "auto"], env=env,
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 0, second.stderr
        assert "VALUE 12" in second.stdout
        assert nbray.get(c.value.remote()) == 12
    finally:
        _stop_cli_cluster(env)


# ---- recovery: replay and checkpoints ------------------------------------------------------------
class _Accumulate:
    def __init__(self, start):
        self.total, self.calls, self.restored = start, 0, 0

    def add(self, x):
        self.total += x
        self.calls += 1
        return self.total

    def pid(self):
        return os.getpid()

    def value(self):
        return self.total, self.calls


class _CheckpointedAccumulate(_Accumulate):
    def value(self):
        return self.total, self.calls, self.restored

    def __nbray_checkpoint__(self):
        return {"total": self.total, "calls": self.calls}

    def __nbray_restore__(self, state):
        self.total, self.calls = state["total"], state["calls"]
        self.restored += 1


Accumulator = nbray.remote(max_restarts=-1, max_task_retries=-1)(_Accumulate)
Checkpointed = nbray.remote(max_restarts=-1, max_task_retries=-1)(_CheckpointedAccumulate)


def test_a_restarted_actor_replays_its_calls_and_keeps_its_state(cluster):
    acc = Accumulator.remote(100)
    assert nbray.get([acc.add.remote(i) for i in range(1, 51)])[-1] == 100 + 1275
    for _ in range(2):
        pid = nbray.get(acc.pid.remote(), timeout=30)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid), 10, "the actor's worker to die")
        assert nbray.get(acc.value.remote(), timeout=30) == (1375, 50)   # replayed, exact
    assert nbray.get(acc.add.remote(5), timeout=30) == 1380
    assert cluster.client.stats["actor_replays"] >= 100


def test_a_checkpointed_actor_restores_then_replays_only_what_came_after(no_cluster,
                                                                       monkeypatch):
    from conftest import shutdown_and_check, start_cluster
    monkeypatch.setenv("NBRAY_ACTOR_CHECKPOINT_EVERY", "10")     # for the workers
    cluster = start_cluster()
    try:
        _checkpointed(cluster)
    finally:
        shutdown_and_check()


def _checkpointed(cluster):
    acc = Checkpointed.remote(0)
    assert nbray.get([acc.add.remote(1) for _ in range(25)])[-1] == 25
    wait_until(lambda: cluster.client.stats["actor_checkpoints"] >= 2, 10, "two checkpoints")
    logged = len(cluster.client.actors.actors[acc._actor_id].log)
    assert logged < 25                          # the calls before the checkpoint are dropped
    pid = nbray.get(acc.pid.remote(), timeout=30)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), 10, "the actor's worker to die")
    total, calls, restored = nbray.get(acc.value.remote(), timeout=30)
    assert (total, calls, restored) == (25, 25, 1)


def test_beyond_the_log_an_actor_restarts_fresh_and_says_so(cluster, monkeypatch, caplog):
    import logging
    from nbray.config import CONFIG
    monkeypatch.setattr(CONFIG, "actor_log_max", 5)
    acc = Accumulator.remote(0)
    nbray.get([acc.add.remote(1) for _ in range(10)])
    pid = nbray.get(acc.pid.remote(), timeout=30)
    with caplog.at_level(logging.WARNING, logger="nbray"):
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid), 10, "the actor's worker to die")
        assert nbray.get(acc.value.remote(), timeout=30) == (0, 0)         # fresh
    assert any("restarted fresh" in r.getMessage() for r in caplog.records)

