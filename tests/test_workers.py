"""Worker processes: killed workers, retries, replacement, and what tasks do to their worker."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import nbray
from conftest import wait_until

pytestmark = pytest.mark.timeout(60)


@nbray.remote
def victim(marker, n):
    """First attempt: note our pid in ``marker`` and hang. A retry finds the marker and returns."""
    first = not os.path.exists(marker)
    with open(marker, "a") as f:
        f.write(f"{os.getpid()}\n")
    if first:
        time.sleep(30)
    return sum(range(n))


@nbray.remote
def pid_of_worker():
    return os.getpid()


@nbray.remote
def quick(x):
    return x


def _pids_in(marker):
    if not os.path.exists(marker):
        return []
    with open(marker) as f:
        return [int(line) for line in f.read().split()]


def _kill_first_attempt(cluster, marker):
    pids = wait_until(lambda: _pids_in(marker), 20, "the task to start")
    pid = pids[0]
    assert pid in cluster.worker_pids()
    os.kill(pid, signal.SIGKILL)
    return pid


def test_task_pids_are_worker_processes(cluster):
    pids = set(nbray.get([pid_of_worker.remote() for _ in range(10)]))
    workers = cluster.worker_pids()
    assert pids <= workers
    assert len(workers) == 2
    assert os.getpid() not in pids


def test_killed_worker_task_is_retried(cluster, tmp_path):
    marker = str(tmp_path / "attempts")
    ref = victim.remote(marker, 10_000)
    killed = _kill_first_attempt(cluster, marker)
    assert nbray.get(ref, timeout=30) == sum(range(10_000))
    attempts = _pids_in(marker)
    assert len(attempts) == 2 and attempts[0] == killed and attempts[1] != killed


def test_killed_worker_with_no_retries_raises_worker_crashed(cluster, tmp_path):
    marker = str(tmp_path / "attempts")
    ref = victim.options(max_retries=0).remote(marker, 10)
    killed = _kill_first_attempt(cluster, marker)
    with pytest.raises(nbray.WorkerCrashedError) as info:
        nbray.get(ref, timeout=30)
    assert isinstance(info.value, nbray.NbrayError)
    assert "victim" in str(info.value)
    assert _pids_in(marker) == [killed]            # not retried


def test_retries_are_exhausted(cluster, tmp_path):
    @nbray.remote(max_retries=1)
    def always_dies(marker):
        with open(marker, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(30)

    marker = str(tmp_path / "attempts")
    ref = always_dies.remote(marker)
    first = wait_until(lambda: _pids_in(marker), 20, "the first attempt")[0]
    os.kill(first, signal.SIGKILL)
    second = wait_until(lambda: [p for p in _pids_in(marker) if p != first], 20,
                        "the retry to start")[0]
    os.kill(second, signal.SIGKILL)
    with pytest.raises(nbray.WorkerCrashedError):
        nbray.get(ref, timeout=30)
    assert len(_pids_in(marker)) == 2


def test_task_that_kills_its_own_worker(cluster):
    @nbray.remote(max_retries=0)
    def suicide():
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(nbray.WorkerCrashedError):
        nbray.get(suicide.remote(), timeout=30)

    @nbray.remote(max_retries=0)
    def hard_exit():
        os._exit(3)

    with pytest.raises(nbray.WorkerCrashedError, match="code 3"):
        nbray.get(hard_exit.remote(), timeout=30)
    assert nbray.get(quick.remote("alive"), timeout=20) == "alive"


def test_dead_worker_is_replaced(cluster, tmp_path):
    before = cluster.worker_pids()
    assert len(before) == 2
    marker = str(tmp_path / "attempts")
    ref = victim.remote(marker, 5)
    killed = _kill_first_attempt(cluster, marker)
    assert nbray.get(ref, timeout=30) == 10
    wait_until(lambda: killed not in cluster.worker_pids()
               and len(cluster.worker_pids()) >= 2
               and cluster.worker_pids() - before, 20,
               "the node to start a worker in place of the killed one")

    @nbray.remote
    def slow_pid():
        time.sleep(0.1)
        return os.getpid()

    # the new worker takes tasks
    seen = set()
    deadline = time.monotonic() + 20
    while not seen - before and time.monotonic() < deadline:
        seen |= set(nbray.get([slow_pid.remote() for _ in range(4)], timeout=20))
    assert seen - before, f"only the old workers {seen} ran tasks"
    assert killed not in seen
    assert seen <= cluster.worker_pids()


def test_killing_idle_workers_does_not_break_the_cluster(cluster):
    for pid in cluster.worker_pids():
        os.kill(pid, signal.SIGKILL)
    assert nbray.get([quick.remote(i) for i in range(10)], timeout=30) == list(range(10))
    wait_until(lambda: len(cluster.worker_pids()) == 2, 20, "two live workers again")


def test_many_tasks_survive_a_killed_worker(cluster, tmp_path):
    @nbray.remote
    def work(i, marker):
        if i == 0:
            return nbray.get(victim.remote(marker, 100))   # a nested victim
        time.sleep(0.01)
        return i

    marker = str(tmp_path / "attempts")
    refs = [work.remote(i, marker) for i in range(30)]
    _kill_first_attempt(cluster, marker)
    assert nbray.get(refs, timeout=45) == [sum(range(100))] + list(range(1, 30))


# ---- what tasks print ---------------------------------------------------------------------------
@pytest.mark.timeout(45)
def test_task_output_reaches_driver_and_does_not_block():
    """In a separate driver whose stdout we capture: 2000 lines (~200 KB) printed by a task
    arrive on the driver's stdout, and the task is not blocked by them.

    Regression (found by this suite in 3bb027a): workers inherited the node's stdout, a pipe nobody read after READY, so
    a task printing more than ~64 KiB blocked forever and its output was never seen."""
    code = textwrap.dedent("""
        import nbray
        nbray.init(num_workers=1)

        @nbray.remote
        def chatty(n):
            for i in range(n):
                print(f"nbray-chatty-line {i:05d} " + "x" * 80)
            return n

        try:
            print("RESULT", nbray.get(chatty.remote(2000), timeout=5), flush=True)
        except nbray.GetTimeoutError:
            print("RESULT timeout", flush=True)
        nbray.shutdown()
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=40)
    assert proc.returncode == 0, proc.stderr
    assert "RESULT 2000" in proc.stdout
    # tagged with the task and its worker; a flood is cut, and what was cut is counted
    lines = [ln for ln in proc.stdout.splitlines() if "nbray-chatty-line" in ln]
    assert lines[0].startswith("(chatty pid=") and lines[0].endswith("x" * 80)
    from nbray.runtime.output import HEAD_LINES
    assert all(ln.startswith("(chatty pid=") for ln in lines) and len(lines) >= HEAD_LINES
    dropped = sum(int(n.replace(",", "")) for n in re.findall(
        r"\[nbray: ([\d,]+) lines of remote output dropped", proc.stderr))
    assert dropped and len(lines) + dropped == 2000     # every line shown or counted
    assert lines[-1].endswith(") nbray-chatty-line 01999 " + "x" * 80)     # the last is shown


def _read(path) -> str:
    with open(path) as f:
        return f.read()


def _count(path) -> int:
    return int(_read(path))


# ---- retries on application errors ---------------------------------------------------------------
@nbray.remote(retry_exceptions=True, max_retries=3)
def flaky(counter_path, fail_times):
    """Raise until it has been called ``fail_times`` times (counted in a file)."""
    n = _count(counter_path) if os.path.exists(counter_path) else 0
    with open(counter_path, "w") as f:
        f.write(str(n + 1))
    if n < fail_times:
        raise ConnectionError(f"flaky failure {n + 1}")
    return n + 1


@nbray.remote(retry_exceptions=[KeyError], max_retries=3)
def fails_with(kind, counter_path):
    n = _count(counter_path) if os.path.exists(counter_path) else 0
    with open(counter_path, "w") as f:
        f.write(str(n + 1))
    raise {"key": KeyError, "value": ValueError}[kind](kind)


def test_retry_exceptions_reruns_a_failing_task(cluster, tmp_path):
    assert nbray.get(flaky.remote(str(tmp_path / "a"), 2), timeout=30) == 3
    with pytest.raises(ConnectionError, match="flaky failure 4"):      # 1 run + 3 retries
        nbray.get(flaky.remote(str(tmp_path / "b"), 10), timeout=30)
    assert _read(tmp_path / "b") == "4"


def test_retry_exceptions_with_a_list_retries_only_those(cluster, tmp_path):
    with pytest.raises(KeyError):
        nbray.get(fails_with.remote("key", str(tmp_path / "k")), timeout=30)
    assert _read(tmp_path / "k") == "4"
    with pytest.raises(ValueError):
        nbray.get(fails_with.remote("value", str(tmp_path / "v")), timeout=30)
    assert _read(tmp_path / "v") == "1"          # not in the list: no retry
    assert nbray.get(flaky.options(retry_exceptions=False, max_retries=0).remote(
        str(tmp_path / "n"), 0)) == 1
    with pytest.raises(TypeError, match="retry_exceptions"):
        flaky.options(retry_exceptions=[42])


def test_exhausted_retries_tell_the_history(cluster, tmp_path):
    @nbray.remote(max_retries=2)
    def die_every_time(marker):
        with open(marker, "a") as f:
            f.write("x")
        os.kill(os.getpid(), signal.SIGKILL)

    marker = str(tmp_path / "runs")
    with pytest.raises(nbray.WorkerCrashedError) as info:
        nbray.get(die_every_time.remote(marker), timeout=60)
    err = info.value
    assert _read(marker) == "xxx"
    assert len(err.history) == 3 and "failed 3 time(s)" in str(err)
    assert all("killed by signal 9" in h for h in err.history)
