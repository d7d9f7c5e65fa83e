"""A Jupyter kernel as the driver: restarting it (politely, or by killing it as the restart
button does when the kernel does not answer) leaves no process, segment or directory behind."""
from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("jupyter_client")

from conftest import pid_alive, rundir_of, segments, wait_until

pytestmark = pytest.mark.timeout(120)

SETUP = """
import json, psutil, numpy as np, nbray
from nbray import api
ctx = nbray.init(num_workers=1)

@nbray.remote
def total(a):
    return float(a.sum())

big = nbray.put(np.ones(1_000_000))
assert nbray.get(total.remote(big)) == 1_000_000.0
pids = [p.pid for p in psutil.Process().children(recursive=True)]
print("NBRAY " + json.dumps({"session": ctx.session, "pids": pids}))
"""


def _run_in_kernel(kc, code: str) -> dict:
    found = {}

    def on_output(msg):
        if msg["msg_type"] == "stream" and msg["content"]["text"].startswith("NBRAY "):
            found.update(json.loads(msg["content"]["text"].split(" ", 1)[1]))
        if msg["msg_type"] == "error":
            found["error"] = "\n".join(msg["content"]["traceback"])

    reply = kc.execute_interactive(code, output_hook=on_output, timeout=60)
    assert reply["content"]["status"] == "ok", found.get("error")
    return found


def _cluster_gone(info: dict) -> None:
    assert len(info["pids"]) >= 3           # head, node, a worker
    wait_until(lambda: not [p for p in info["pids"] if pid_alive(p)], 15,
               "the kernel's cluster processes to exit")
    wait_until(lambda: not segments(info["session"]), 10, "the cluster's segments to go")
    wait_until(lambda: not os.path.exists(rundir_of(info["session"])), 10,
               "the cluster's run directory to go")


@pytest.mark.parametrize("now", [False, True], ids=["restart", "restart-by-kill"])
def test_kernel_restart_leaves_nothing(kernel, now):
    km, kc = kernel
    info = _run_in_kernel(kc, SETUP)
    assert info["pids"] and all(pid_alive(p) for p in info["pids"])
    km.restart_kernel(now=now)
    kc.wait_for_ready(timeout=60)
    _cluster_gone(info)
    # the restarted kernel starts a cluster of its own as before
    again = _run_in_kernel(kc, SETUP)
    assert again["session"] != info["session"]
    km.shutdown_kernel(now=False)
    _cluster_gone(again)
