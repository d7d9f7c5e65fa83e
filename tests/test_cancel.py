"""nbray.cancel: queued tasks are dropped, running ones interrupted, the cluster carries on."""
from __future__ import annotations

import os
import time

import pytest

import nbray
from conftest import wait_until

pytestmark = pytest.mark.timeout(60)


@nbray.remote
def long_task(marker, seconds=30.0):
    """Write our pid to ``marker`` when started (whole: it appears by rename), then sleep."""
    with open(marker + ".part", "w") as f:
        f.write(str(os.getpid()))
    os.replace(marker + ".part", marker)
    time.sleep(seconds)
    return "finished"


@nbray.remote
def quick(x):
    return x


@nbray.remote
def after(x):
    return ("after", x)


def _start_long_tasks(tmp_path, n):
    markers = [str(tmp_path / f"started-{i}") for i in range(n)]
    refs = [long_task.remote(m) for m in markers]
    wait_until(lambda: all(os.path.exists(m) for m in markers), 20,
               f"{n} long tasks to start")
    return refs


def _read_pid(path):
    with open(path) as f:
        return int(f.read())


def _assert_cancelled(ref, within=5.0):
    t0 = time.monotonic()
    with pytest.raises(nbray.TaskCancelledError) as info:
        nbray.get(ref, timeout=within + 10)
    elapsed = time.monotonic() - t0
    assert elapsed < within, f"cancel took {elapsed:.2f}s"
    assert isinstance(info.value, nbray.NbrayError)
    return info.value


def test_cancel_queued_task(cluster, tmp_path):
    running = _start_long_tasks(tmp_path, 2)                  # both workers are busy
    queued_marker = str(tmp_path / "queued")
    queued = long_task.remote(queued_marker)
    ready, _ = nbray.wait([queued], timeout=0.3)
    assert ready == []
    nbray.cancel(queued)
    err = _assert_cancelled(queued, within=2)
    assert "long_task" in str(err) or "cancel" in str(err)
    # cancel the running ones too: the queued task must never have started
    for r in running:
        nbray.cancel(r)
    for r in running:
        _assert_cancelled(r)
    assert not os.path.exists(queued_marker)
    assert nbray.get(quick.remote(1), timeout=20) == 1


def test_cancel_running_sleep_is_prompt(cluster, tmp_path):
    (ref,) = _start_long_tasks(tmp_path, 1)
    t0 = time.monotonic()
    nbray.cancel(ref)
    _assert_cancelled(ref, within=5)
    assert time.monotonic() - t0 < 5
    # the worker survived the interruption and the cluster runs new tasks
    pid = _read_pid(tmp_path / "started-0")
    assert pid in cluster.worker_pids()
    assert nbray.get([quick.remote(i) for i in range(10)], timeout=20) == list(range(10))


def test_cancel_running_busy_loop(cluster):
    @nbray.remote
    def spin():
        deadline = time.monotonic() + 30
        n = 0
        while time.monotonic() < deadline:
            n += 1
        return n

    ref = spin.remote()
    wait_until(lambda: any(p.cpu_percent(0.05) > 20 for p in _worker_procs(cluster)), 20,
               "a worker to spin")
    nbray.cancel(ref)
    _assert_cancelled(ref, within=5)
    assert nbray.get(quick.remote("ok"), timeout=20) == "ok"


def _worker_procs(cluster):
    import psutil
    out = []
    for pid in cluster.worker_pids():
        try:
            out.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    return out


def test_cancel_both_running_then_run_more(cluster, tmp_path):
    refs = _start_long_tasks(tmp_path, 2)
    for r in refs:
        nbray.cancel(r)
    for r in refs:
        _assert_cancelled(r)
    assert nbray.get([quick.remote(i) for i in range(20)], timeout=20) == list(range(20))


def test_cancel_finished_task_is_noop(cluster):
    ref = quick.remote(5)
    assert nbray.get(ref) == 5
    nbray.cancel(ref)
    assert nbray.get(ref) == 5


def test_cancel_twice_is_harmless(cluster, tmp_path):
    (ref,) = _start_long_tasks(tmp_path, 1)
    nbray.cancel(ref)
    nbray.cancel(ref)
    _assert_cancelled(ref)
    nbray.cancel(ref)
    assert nbray.get(quick.remote(2), timeout=20) == 2


def test_cancel_task_waiting_for_dependency(cluster, tmp_path):
    (blocker,) = _start_long_tasks(tmp_path, 1)
    dependent = after.remote(blocker)
    nbray.cancel(dependent)
    _assert_cancelled(dependent, within=2)
    nbray.cancel(blocker)
    _assert_cancelled(blocker)
    assert nbray.get(after.remote(quick.remote(3)), timeout=20) == ("after", 3)


def test_dependent_of_cancelled_task_fails_with_cancel(cluster, tmp_path):
    (ref,) = _start_long_tasks(tmp_path, 1)
    child = after.remote(ref)
    nbray.cancel(ref)
    _assert_cancelled(ref)
    _assert_cancelled(child)


def test_cancel_immediately_after_submit(cluster, tmp_path):
    """Cancels that race the task's dispatch: each get either raises TaskCancelledError or the
    task had already finished (it cannot have: it sleeps 30s)."""
    refs = []
    for i in range(10):
        ref = long_task.remote(str(tmp_path / f"m{i}"))
        if i % 2:      # vary where in its path the task is when cancelled
            assert nbray.wait([ref], timeout=0.005 * i) == ([], [ref])
        nbray.cancel(ref)
        refs.append(ref)
    for ref in refs:
        _assert_cancelled(ref, within=10)
    assert nbray.get(quick.remote("alive"), timeout=20) == "alive"


class SlowToUnpickle:
    """An argument whose unpickling takes a while (and says when it begins): it holds the
    worker between receiving a task and starting it."""

    def __init__(self, marker):
        self.marker = marker

    def __setstate__(self, state):
        self.__dict__.update(state)
        with open(self.marker, "w") as f:
            f.write("unpickling")
        time.sleep(0.5)


@nbray.remote
def sleep_with(arg, seconds=30.0):
    time.sleep(seconds)
    return "finished"


# Regression: a cancel whose signal reached the worker while it was still unpickling the task's
# arguments was ignored, and the message announcing it then waited in the socket until the task
# ended (seen as a 30 s task that could not be cancelled, under load)
def test_cancel_while_the_worker_prepares_the_task(cluster, tmp_path):
    marker = str(tmp_path / "unpickling")
    ref = sleep_with.remote(SlowToUnpickle(marker))
    wait_until(lambda: os.path.exists(marker), 20, "the worker to start unpickling")
    nbray.cancel(ref)
    _assert_cancelled(ref, within=10)
    assert nbray.get(quick.remote("alive"), timeout=20) == "alive"


# Regression: after a burst of cancels (whose signals merge into fewer than the messages), the
# worker compared a count of signals with a count of messages, concluded it had nothing to
# wait for, and a cancel of its running task waited unread until the task ended
def test_cancel_of_a_running_task_after_a_burst_of_cancels(no_cluster, tmp_path):
    from conftest import shutdown_and_check, start_cluster
    start_cluster(num_workers=1)
    try:
        for attempt in range(2):
            nbray.get([quick.remote(i) for i in range(2000)])   # short tasks: they pipeline
            refs = [quick.remote(i) for i in range(3000)]
            wait_until(lambda: nbray.wait(refs, num_returns=1, timeout=0)[0], 10,
                       "tasks to reach the worker")       # cancels now go there, with pokes
            for r in refs:
                nbray.cancel(r)
            nbray.wait(refs, num_returns=len(refs), timeout=30)
            marker = str(tmp_path / f"long-{attempt}")
            ref = long_task.remote(marker)
            wait_until(lambda: os.path.exists(marker), 20, "the long task to start")
            nbray.cancel(ref)
            _assert_cancelled(ref, within=5)
    finally:
        shutdown_and_check()


def test_cancel_many_short_tasks(cluster):
    @nbray.remote
    def short(i):
        time.sleep(0.05)
        return i

    refs = [short.remote(i) for i in range(40)]
    for r in refs[10:]:
        nbray.cancel(r)
    done = cancelled = 0
    for i, r in enumerate(refs):
        try:
            assert nbray.get(r, timeout=30) == i
            done += 1
        except nbray.TaskCancelledError:
            assert i >= 10
            cancelled += 1
    assert done + cancelled == 40 and done >= 10 and cancelled >= 1
    assert nbray.get([short.remote(i) for i in range(4)], timeout=20) == list(range(4))


def test_force_cancel_kills_worker_and_cluster_recovers(cluster, tmp_path):
    (ref,) = _start_long_tasks(tmp_path, 1)
    pid = _read_pid(tmp_path / "started-0")
    nbray.cancel(ref, force=True)
    _assert_cancelled(ref, within=5)
    wait_until(lambda: pid not in cluster.worker_pids(), 10, f"worker {pid} to be killed")
    wait_until(lambda: len(cluster.worker_pids()) >= 2, 20, "the node to replace the worker")
    assert nbray.get([quick.remote(i) for i in range(5)], timeout=20) == list(range(5))
