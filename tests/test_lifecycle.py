"""init / shutdown: argument checking, re-init, and clean exits of drivers (even killed ones)."""
from __future__ import annotations

import gc
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest

import nbray
from nbray import api
from conftest import (assert_nothing_left, descendants, pid_alive, rundir_of, run_root,
                      segments, shutdown_and_check, start_cluster, wait_until)

pytestmark = pytest.mark.timeout(60)


@nbray.remote
def square(x):
    return x * x


@nbray.remote
def total(a):
    return float(a.sum())


def _run_dirs() -> set:
    return set(os.listdir(run_root())) if os.path.isdir(run_root()) else set()


# ---- in this process -----------------------------------------------------------------------------
def test_init_returns_context_and_shutdown_leaves_nothing(no_cluster):
    assert not nbray.is_initialized()
    ctx = nbray.init(num_workers=2)
    assert nbray.is_initialized()
    assert ctx is api.context()
    assert ctx.num_workers == 2 and ctx.embedded
    assert ctx.resources.get("CPU") == 2.0
    assert ctx.session == api._driver.record.session
    assert os.path.isdir(rundir_of(ctx.session))
    assert len(descendants()) >= 4          # head, node, 2 workers
    ref = nbray.put(np.ones(1_000_000))
    assert segments(ctx.session)
    assert nbray.get(total.remote(ref)) == 1_000_000.0
    assert nbray.get(square.remote(12)) == 144
    shutdown_and_check()
    assert not nbray.is_initialized()
    assert api.context() is None


def test_init_twice_raises(no_cluster):
    ctx = start_cluster().ctx
    with pytest.raises(RuntimeError, match="already"):
        nbray.init(num_workers=2)
    with pytest.raises(RuntimeError):
        nbray.init()
    assert nbray.init(ignore_reinit_error=True) is ctx
    assert nbray.init(num_workers=5, ignore_reinit_error=True) is ctx
    assert nbray.get(square.remote(3)) == 9            # the first cluster is still the one
    assert api.context() is ctx
    shutdown_and_check()


@pytest.mark.parametrize("kwargs, error", [
    ({"num_workers": 0}, ValueError),
    ({"num_workers": -1}, ValueError),
    ({"num_workers": 1.5}, ValueError),
    ({"num_workers": True}, ValueError),
    ({"num_workers": "2"}, ValueError),
    ({"num_cpus": 0}, ValueError),
    ({"num_workers": 2, "num_cpus": 3}, ValueError),
    ({"num_workers": 1, "resources": ["gpu"]}, TypeError),
    ({"num_workers": 1, "resources": {"gpu": -1}}, ValueError),
    ({"num_workers": 1, "resources": {"gpu": "1"}}, ValueError),
    ({"num_workers": 1, "resources": {1: 1}}, ValueError),
])
def test_init_invalid_arguments(no_cluster, kwargs, error):
    dirs = _run_dirs()
    with pytest.raises(error):
        nbray.init(**kwargs)
    assert not nbray.is_initialized()
    assert descendants() == []
    assert _run_dirs() <= dirs


def test_shutdown_without_init_and_twice(no_cluster):
    nbray.shutdown()
    nbray.shutdown()
    start_cluster()
    shutdown_and_check()
    nbray.shutdown()
    assert not nbray.is_initialized()


def test_reinit_after_shutdown_is_a_new_cluster(no_cluster):
    first = start_cluster().ctx
    old_ref = square.remote(4)
    assert nbray.get(old_ref) == 16
    shutdown_and_check()
    second = start_cluster().ctx
    assert second.session != first.session
    assert nbray.get(square.remote(5)) == 25
    # a ref of the first cluster names nothing the new one knows
    with pytest.raises(nbray.NbrayError):
        nbray.get(old_ref, timeout=5)
    shutdown_and_check()


def test_init_num_cpus_and_custom_resources(no_cluster):
    ctx = start_cluster(num_workers=None, num_cpus=2, resources={"fpga": 1}).ctx
    assert ctx.num_workers == 2
    assert {k: v for k, v in ctx.resources.items() if k != "memory"} == {"CPU": 2.0, "fpga": 1.0}
    assert nbray.get(square.options(resources={"fpga": 1}).remote(3), timeout=20) == 9
    assert nbray.get(square.options(resources={"fpga": 0.5}).remote(4), timeout=20) == 16
    with pytest.raises(nbray.RemoteError, match="fpga"):
        nbray.get(square.options(resources={"fpga": 2}).remote(3), timeout=20)
    shutdown_and_check()


def test_init_default_uses_all_cores(no_cluster):
    ctx = start_cluster(num_workers=None).ctx
    assert ctx.num_workers == (os.cpu_count() or 1)
    shutdown_and_check()


def test_shutdown_with_running_task_leaves_nothing(no_cluster, tmp_path):
    @nbray.remote
    def hang(marker):
        open(marker, "w").close()
        time.sleep(60)

    start_cluster()
    marker = str(tmp_path / "started")
    hang.remote(marker)
    wait_until(lambda: os.path.exists(marker), 20, "the task to start")
    shutdown_and_check()


def test_init_shutdown_emits_no_resource_warning(no_cluster):
    """Regression (found by this suite in 3bb027a): cluster.stop() never closed the stdout pipes of the head and node
    Popen objects, so every init/shutdown emitted two ResourceWarnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        nbray.init(num_workers=1)
        session = api._driver.record.session
        pids = {p.pid for p in descendants()}
        nbray.shutdown()
        gc.collect()
    assert_nothing_left(session, pids)
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


# ---- other driver processes ----------------------------------------------------------------------
DRIVER_PRELUDE = textwrap.dedent("""
    import os, sys, time
    import numpy as np, psutil
    import nbray

    def report():
        pids = [p.pid for p in psutil.Process().children(recursive=True)]
        print("READY", nbray.api._driver.record.session, *pids, flush=True)
""")


def _parse_ready(line: str):
    parts = line.split()
    assert parts and parts[0] == "READY", f"unexpected driver output: {line!r}"
    return parts[1], [int(p) for p in parts[2:]]


def _assert_driver_left_nothing(session, pids, timeout=10):
    wait_until(lambda: not [p for p in pids if pid_alive(p)], timeout,
               f"the cluster processes of the dead driver to exit "
               f"({[p for p in pids if pid_alive(p)]} alive)")
    wait_until(lambda: not segments(session), timeout,
               f"the segments of session {session} to be removed: {segments(session)}")


def test_driver_exiting_without_shutdown_leaves_nothing(no_cluster):
    code = DRIVER_PRELUDE + textwrap.dedent("""
        nbray.init(num_workers=2)
        @nbray.remote
        def f(x):
            return x + 1
        assert nbray.get(f.remote(1)) == 2
        ref = nbray.put(np.ones(1_000_000))
        slow = nbray.remote(time.sleep).remote(30)      # still running at exit
        report()
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=45)
    assert proc.returncode == 0, proc.stderr
    session, pids = _parse_ready(proc.stdout)
    assert len(pids) >= 4
    _assert_driver_left_nothing(session, pids)
    wait_until(lambda: not os.path.exists(rundir_of(session)), 5,
               f"run directory of session {session} to be removed")
    assert "Traceback" not in proc.stderr, proc.stderr


def test_driver_dying_of_an_exception_leaves_nothing(no_cluster):
    code = DRIVER_PRELUDE + textwrap.dedent("""
        nbray.init(num_workers=2)
        ref = nbray.put(np.ones(1_000_000))
        report()
        raise SystemExit("driver gives up")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=45)
    assert proc.returncode == 1
    session, pids = _parse_ready(proc.stdout)
    _assert_driver_left_nothing(session, pids)
    wait_until(lambda: not os.path.exists(rundir_of(session)), 5,
               f"run directory of session {session} to be removed")


@pytest.fixture(scope="module")
def killed_driver():
    """A driver with a running task and a shm object, SIGKILLed: (session, pids of its cluster)."""
    code = DRIVER_PRELUDE + textwrap.dedent("""
        nbray.init(num_workers=2)
        ref = nbray.put(np.ones(1_000_000))
        @nbray.remote
        def hang():
            time.sleep(60)
        r = hang.remote()
        nbray.wait([r], timeout=0.5)
        report()
        nbray.get(r)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        session, pids = _parse_ready(line)
        assert segments(session), "the driver's object should be in shared memory"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    yield session, pids
    # the tests have looked: should the run directory have leaked (a regression the test
    # below reports), do not leave it on the machine
    wait_until(lambda: not [p for p in pids if pid_alive(p)], 10, "the cluster to exit")
    shutil.rmtree(rundir_of(session), ignore_errors=True)


def test_killed_driver_cluster_exits(no_cluster, killed_driver):
    session, pids = killed_driver
    assert len(pids) >= 4
    _assert_driver_left_nothing(session, pids)


# Regression (found by this suite in 3bb027a): when the driver is SIGKILLed the head and node
# exit and remove the segments, but nobody removes the run directory /tmp/nbray-<uid>/<session>
# (only the driver's cluster.stop() does)
def test_killed_driver_run_directory_removed(no_cluster, killed_driver):
    session, pids = killed_driver
    _assert_driver_left_nothing(session, pids)
    wait_until(lambda: not os.path.exists(rundir_of(session)), 1,
               f"run directory {rundir_of(session)} to be removed")


def test_interrupted_driver_leaves_nothing(no_cluster):
    """Ctrl-C (SIGINT to the driver's process group) while blocked in get: the driver gets
    KeyboardInterrupt and exits; its cluster, in its own session, is stopped at exit."""
    code = DRIVER_PRELUDE + textwrap.dedent("""
        import threading

        def report_when_main_thread_is_in_get():
            main = threading.main_thread().ident
            while True:
                frame = sys._current_frames().get(main)
                while frame is not None:
                    if frame.f_code.co_name == "get" and "nbray" in frame.f_code.co_filename:
                        report()
                        return
                    frame = frame.f_back
                time.sleep(0.005)

        nbray.init(num_workers=2)
        r = nbray.remote(time.sleep).remote(60)
        threading.Thread(target=report_when_main_thread_is_in_get, daemon=True).start()
        try:
            nbray.get(r)
        except KeyboardInterrupt:
            print("INTERRUPTED", flush=True)
            sys.exit(0)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        session, pids = _parse_ready(proc.stdout.readline())
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "INTERRUPTED" in out, err
    assert proc.returncode == 0, err
    _assert_driver_left_nothing(session, pids)
    wait_until(lambda: not os.path.exists(rundir_of(session)), 5,
               f"run directory of session {session} to be removed")


# Regression (found by this suite in 3bb027a): serialization tries plain pickle first, which
# pickles instances of classes defined in __main__ (a notebook, a script) by reference; the
# worker cannot resolve __main__.<Class> and the task fails with AttributeError
def test_main_module_class_instance_as_argument(no_cluster):
    code = textwrap.dedent("""
        import nbray

        class Point:
            def __init__(self, x, y):
                self.x, self.y = x, y

        @nbray.remote
        def norm2(p):
            return p.x * p.x + p.y * p.y

        nbray.init(num_workers=1)
        try:
            print("RESULT", nbray.get(norm2.remote(Point(3, 4)), timeout=20))
            print("RESULT", nbray.get(norm2.remote(nbray.put(Point(1, 2))), timeout=20))
        except Exception as e:
            print("ERROR", type(e).__name__, str(e).splitlines()[0])
        nbray.shutdown()
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=45)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["RESULT 25", "RESULT 5"], proc.stdout


DRIVER_IN_ANOTHER_CHECKOUT = """
import nbray
nbray.init(num_workers=1)

@nbray.remote
def where():
    import mylocal
    return mylocal.VALUE, nbray.__file__

print("RESULT", nbray.get(where.remote(), timeout=60))
nbray.shutdown()
"""


# Regression (found trying the README): runtime processes started with `python -m` imported an
# `nbray` folder of the working directory instead of the driver's package
def test_runtime_uses_the_drivers_nbray_whatever_the_working_directory(no_cluster, tmp_path):
    (tmp_path / "nbray").mkdir()
    (tmp_path / "nbray" / "__init__.py").write_text("raise ImportError('the wrong nbray')\n")
    (tmp_path / "mylocal.py").write_text("VALUE = 41\n")
    script = tmp_path / "driver.py"
    script.write_text(DRIVER_IN_ANOTHER_CHECKOUT)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(nbray.__file__)))
    out = subprocess.run([sys.executable, "-P", str(script)] if sys.version_info >= (3, 11)
                         else [sys.executable, str(script)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    assert f"RESULT (41, {nbray.__file__!r})" in out.stdout
