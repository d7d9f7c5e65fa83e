"""The Ray-style example scripts (``examples/ray_style/*.py``) each run as a script of their
own, ``import nbray as ray``, in a private run root: each must exit 0 (their ``assert``s check
the answers) and leave no process or record of its cluster behind, whether it called
``ray.shutdown()`` itself or left that to the interpreter's exit.

The scripts spend most of their time starting processes, so they run side by side: a
module-scoped fixture starts every selected script at once on a pool of ``PARALLEL`` threads
(each script still its own subprocess with its own run root and working directory), and each
script's test waits for its own result only. The scripts are submitted in the order their
tests run, so a test never waits behind a script whose test comes later."""
from __future__ import annotations

import concurrent.futures
import glob
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

import nbray
from conftest import descendants, processes_under, wait_until

PARALLEL = 3            # scripts running at once (the machine has 2 cores)
SCRIPT_TIMEOUT_S = 60   # each script, from its start
# per test: its script's run (it was started by the time the tests before it ended) and the
# checks after it, with room to spare on a loaded machine
pytestmark = pytest.mark.timeout(SCRIPT_TIMEOUT_S + 120)

#: what the scripts' processes import (drivers, head, node, workers), for the bytecode cache
WARM_UP = """
import importlib
for name in ("nbray", "nbray.runtime.head.main", "nbray.runtime.node.main",
             "nbray.runtime.worker.main", "nbray.dag", "nbray.util.queue",
             "nbray.util.multiprocessing", "numpy", "concurrent.futures"):
    try:
        importlib.import_module(name)
    except Exception:
        pass
"""

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "examples", "ray_style")
SCRIPTS = sorted(glob.glob(os.path.join(EXAMPLES, "*.py")))


@dataclass
class Run:
    """How one script went: ``returncode`` is None when it was killed at the timeout."""
    path: str
    root: str
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float

    def report(self) -> str:
        how = (f"exited {self.returncode}" if self.returncode is not None
               else f"was killed after {SCRIPT_TIMEOUT_S}s")
        return (f"{os.path.basename(self.path)} {how} ({self.seconds:.1f}s)\n"
                f"stdout:\n{self.stdout}\nstderr:\n{self.stderr}")


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def run_script(path: str, workdir: str, env: dict) -> Run:
    root = os.path.join(workdir, "run")
    start = time.monotonic()
    try:
        out = subprocess.run([sys.executable, path], timeout=SCRIPT_TIMEOUT_S,
                             env=dict(env, NBRAY_RUN_ROOT=root), cwd=workdir,
                             capture_output=True, text=True)
        code, stdout, stderr = out.returncode, out.stdout, out.stderr
    except subprocess.TimeoutExpired as e:       # the script was killed
        code, stdout, stderr = None, _text(e.stdout), _text(e.stderr)
    return Run(path, root, code, stdout, stderr, time.monotonic() - start)


@pytest.fixture(scope="module")
def script_runs(request, tmp_path_factory):
    """path -> Future of its Run, for the scripts whose tests were selected, started at once
    in the order their tests run. At the end: no child process of this one is left."""
    assert not nbray.is_initialized()
    selected = [item.callspec.params["path"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")]
    base = tmp_path_factory.mktemp("examples")
    # Python caches the bytecode of what the scripts' processes import here, outside the
    # source tree, even where PYTHONDONTWRITEBYTECODE is set: each of the many processes of
    # each script would otherwise compile nbray anew (a third of a script's CPU time)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(tmp_path_factory.mktemp("pycache"))
    # which holds nothing yet, not even the standard library's: fill it once, from one
    # process, rather than from every process of the first scripts at once
    try:                    # only a cache: the scripts' own runs say what went wrong
        subprocess.run([sys.executable, "-c", WARM_UP], env=env, cwd=base, timeout=60,
                       capture_output=True)
    except subprocess.TimeoutExpired:
        pass
    pool = concurrent.futures.ThreadPoolExecutor(PARALLEL, thread_name_prefix="example")
    futures = {}
    for path in selected:
        # short: the sockets under the run root must fit the system's path limit
        workdir = base / os.path.basename(path)[:12]
        workdir.mkdir()
        futures[path] = pool.submit(run_script, path, str(workdir), env)
    try:
        yield futures
    finally:
        pool.shutdown(wait=True, cancel_futures=True)   # an interrupted run starts no more
        wait_until(lambda: not descendants(), 15,
                   f"no child processes of the test process left: {descendants()}")


def test_there_are_examples():
    assert len(SCRIPTS) >= 10, SCRIPTS


@pytest.mark.parametrize("path", SCRIPTS, ids=[os.path.basename(p) for p in SCRIPTS])
def test_example_runs_and_leaves_nothing(path, script_runs):
    run = script_runs[path].result()
    assert run.returncode == 0, run.report()
    wait_until(lambda: not processes_under(run.root), 15,
               f"the script's cluster to exit: {processes_under(run.root)}")
    wait_until(lambda: not os.path.isdir(run.root) or not os.listdir(run.root), 10,
               "its run root to be empty")
