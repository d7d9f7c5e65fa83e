"""A Ray-style script that never calls ``init()`` or ``shutdown()`` and ends with a task still
running, an actor in an endless loop and an infeasible task pending: its first ``.remote()``
starts the embedded cluster (one log line says so), and it exits promptly with its own exit
code, leaving no process, record or segment behind."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import processes_under, wait_until

pytestmark = pytest.mark.timeout(120)

SCRIPT = """
import sys, time
import nbray as ray

@ray.remote
def forever():
    while True:
        time.sleep(0.1)

@ray.remote
class Spinner:
    def spin(self):
        while True:
            pass

@ray.remote(resources={"nowhere": 1})
def infeasible():
    return 1

@ray.remote
def square(x):
    return x * x

print(ray.get(square.remote(7)), ray.is_initialized(), flush=True)
running = forever.remote()
spinner = Spinner.remote()
spinning = spinner.spin.remote()
pending = infeasible.remote()
time.sleep(0.5)                 # let them start
sys.exit(3)
"""


def test_a_script_exits_promptly_with_its_code_and_leaves_nothing(tmp_path, no_cluster):
    root = str(tmp_path / "run")
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    # a hang fails the run (timeout) instead of waiting for the endless work
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=60, env=dict(os.environ, NBRAY_RUN_ROOT=root))
    assert out.returncode == 3, out.stderr
    assert out.stdout.splitlines()[0] == "49 True"
    assert out.stderr.count("starting an embedded cluster") == 1
    wait_until(lambda: not processes_under(root), 15,
               f"the script's cluster to exit: {processes_under(root)}")
    wait_until(lambda: not os.path.isdir(root) or not os.listdir(root), 10,
               "its run root to be empty")
