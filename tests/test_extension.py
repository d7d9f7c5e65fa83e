"""The IPython extension in an in-process InteractiveShell, on a real cluster started by its own
``%nbray init``: loading and unloading, each magic and flag, remote output, remote tracebacks,
refs kept out of the output history, and an interrupted cell cancelling its remote work.

The shell runs on nbray's runtime and (marked ``ray``) on the Ray backend."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import nbray
from conftest import shutdown_and_check, wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", params=["nbray", pytest.param("ray", marks=pytest.mark.ray)])
def ip(request):
    shell = InteractiveShell.instance()
    assert not nbray.is_initialized()
    run(shell, "%load_ext nbray")
    if request.param == "ray":
        address = request.getfixturevalue("ray_cluster").address
        run(shell, f"%nbray init --backend ray --address {address}")
    else:
        run(shell, "%nbray init --workers 2")
    assert nbray.is_initialized()
    try:
        yield shell
    finally:
        run(shell, "%unload_ext nbray")
        if request.param == "ray":
            nbray.shutdown()
        else:
            shutdown_and_check()


def on_ray() -> bool:
    from nbray import backends
    return backends.engine is not None


def run(shell, source: str):
    """Run a cell as the notebook would; returns its result (its error is raised)."""
    result = shell.run_cell(source, store_history=True)
    if result.error_before_exec is not None:
        raise result.error_before_exec
    if result.error_in_exec is not None:
        raise result.error_in_exec
    return result.result


def test_loading_puts_the_api_in_the_namespace_and_twice_is_harmless(ip):
    run(ip, "%load_ext nbray")
    for name in ("remote", "get", "put", "wait"):
        assert ip.user_ns[name] is getattr(nbray, name)
    assert "nbray" in ip.magics_manager.magics["line"]
    assert "remote" in ip.magics_manager.magics["cell"]


def test_unloading_removes_the_magics_and_names_then_loading_again_works(ip):
    ip.user_ns["wait"] = "mine"                     # a user's own name is left alone
    run(ip, "%unload_ext nbray")
    assert "nbray" not in ip.magics_manager.magics["line"]
    assert "remote" not in ip.magics_manager.magics["cell"]
    assert "remote" not in ip.user_ns and ip.user_ns["wait"] == "mine"
    run(ip, "%load_ext nbray")
    assert ip.user_ns["remote"] is nbray.remote and ip.user_ns["wait"] is nbray.wait


def test_status_is_a_table_of_nodes_and_of_this_notebook(ip):
    report = run(ip, "%nbray status")
    text = repr(report)
    assert "alive" in text and "CPU" in text and "this notebook" in text
    assert "<table>" in report._repr_html_()


def test_a_remote_cell_reads_the_names_it_uses_and_returns_its_last_value(ip):
    run(ip, "x = 21\nunused = object()")           # not picklable by value? not sent at all
    assert run(ip, "%%remote\nimport os\n(x * 2, os.getpid())")[0] == 42
    assert run(ip, "%%remote\nimport os\nos.getpid()") != os.getpid()


def test_outputs_come_back_into_the_namespace(ip):
    run(ip, "x = 3")
    assert run(ip, "%%remote -o y,z\ny = x + 1\nz = y * 2") is None
    assert (ip.user_ns["y"], ip.user_ns["z"]) == (4, 8)
    with pytest.raises(NameError, match="did not define w"):
        run(ip, "%%remote --outputs w\nv = 1")


def test_a_ref_in_the_namespace_is_an_input_the_cell_receives_as_its_value(ip):
    run(ip, "r = put(10)\n@remote\ndef slow(k):\n    return k * 5")
    assert run(ip, "%%remote\nr + 1") == 11
    run(ip, "s = slow.remote(4)")
    assert run(ip, "%%remote\ns + r") == 30


def test_async_cells_run_side_by_side_and_bind_refs(ip, tmp_path):
    marker = str(tmp_path / "go")
    ip.user_ns["marker"] = marker
    run(ip, "%%remote --async -o first\nimport os, time\n"
            "while not os.path.exists(marker):\n    time.sleep(0.01)\nfirst = 'one'")
    ref = run(ip, "%%remote --async\n'two'")           # the first is still running
    assert isinstance(ip.user_ns["first"], nbray.ObjectRef)
    assert nbray.get(ref, timeout=30) == "two"
    Path(marker).touch()
    assert nbray.get(ip.user_ns["first"], timeout=30) == "one"


def test_resource_flags_place_the_cell_and_bad_ones_are_clear(ip):
    assert run(ip, "%%remote --num-cpus 1 --num-gpus 0\n7") == 7
    if not on_ray():        # on Ray what no node has waits for the autoscaler
        with pytest.raises(RuntimeError, match="no node can provide sim=1"):    # one node
            nbray.get(run(ip, "%%remote --async --resources '{\"sim\": 1}'\n8"), timeout=30)
    with pytest.raises(UsageError, match="not JSON"):
        ip.run_cell_magic("remote", "--resources notjson", "1")
    with pytest.raises(UsageError, match="not names"):
        ip.run_cell_magic("remote", "-o 1a", "1")


def test_actor_cells_share_a_namespace_on_the_cluster(ip):
    run(ip, "%%remote --actor nb-ns\ncounter = 10\nimport os\nwhere = os.getpid()")
    assert run(ip, "%%remote --actor nb-ns\ncounter += 1\ncounter") == 11
    assert run(ip, "%%remote --actor nb-ns -o counter,where\npass") is None
    assert ip.user_ns["counter"] == 11 and ip.user_ns["where"] != os.getpid()
    rows = nbray.state.actors({"name": "nb-ns"})
    assert rows and rows[0]["user_state"]["cells"] == 3


def test_remote_output_reaches_the_driver_tagged_with_the_cell(ip, capfd):
    run(ip, "%%remote\nimport sys\nprint('from the cluster')\n"
            "print('to stderr', file=sys.stderr)")
    out = wait_until(lambda: (lambda c: c if "from the cluster" in c.out else None)(
        capfd.readouterr()), 10, "the remote line")
    line = [ln for ln in out.out.splitlines() if "from the cluster" in ln][0]
    assert line.startswith("(cell[") and "pid=" in line


def test_a_remote_exception_shows_the_remote_traceback_highlighted(ip, capsys):
    result = ip.run_cell("%%remote\ndef f():\n    return 1 / 0\nf()", store_history=True)
    assert isinstance(result.error_in_exec, ZeroDivisionError)
    import re
    coloured = capsys.readouterr().out
    shown = re.sub(r"\x1b\[[0-9;]*m", "", coloured)
    assert "raised in remote task" in shown and "\x1b[" in coloured     # highlighted
    assert "<remote cell [" in shown and "1 / 0" in shown
    assert "nbray/extension/cells.py" not in shown                    # our frames hidden


def test_refs_do_not_stay_in_the_output_history(ip, capsys):
    run(ip, "put(5)")
    n = ip.execution_count - 1
    assert n not in ip.user_ns["Out"] and f"_{n}" not in ip.user_ns
    run(ip, "kept = put(6)")
    table = repr(run(ip, "%nbray refs"))
    assert "kept" in table
    assert repr(run(ip, "%nbray refs --release-history"))


def test_timeline_writes_a_chrome_trace_of_the_cells_tasks(ip, tmp_path, capsys):
    import json
    run(ip, "%%remote\n1 + 1")
    path = str(tmp_path / "t.json")
    wait_until(lambda: [r for r in nbray.state.tasks({"state": "finished"})
                        if r["name"].startswith("cell[") and r["started"]], 20,
               "the cell's task record")
    run(ip, f"%nbray timeline {path}")
    trace = json.loads(Path(path).read_text())
    assert any(e["ph"] == "X" and e["name"].startswith("cell[") for e in trace["traceEvents"])
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(UsageError, match="usage: %nbray timeline FILE"):
        ip.run_line_magic("nbray", "timeline")


def test_only_the_globals_a_cell_reads_are_sent():
    from nbray.extension.cells import names_read
    code = ("import os\ndef f(a):\n    b = a + x\n    return [i * y for i in range(3)]\n"
            "z = f(w)\nclass K:\n    k = 1\n")
    assert names_read(code) == ["f", "range", "w", "x", "y"]      # not a, b, i, k, os, z


def test_an_async_cell_without_outputs_keeps_its_ref_and_actor_flags_place_it(ip):
    ref = run(ip, "%%remote --async\n'kept'")
    n = ip.execution_count - 1
    assert ip.user_ns["Out"][n] is ref and nbray.get(ref) == "kept"
    assert run(ip, "%%remote --actor placed-ns --num-cpus 1\n'placed'") == "placed"
    (row,) = nbray.state.actors({"name": "placed-ns"})
    assert row["resources"].get("CPU") == 1


def test_the_dashboard_magic_shows_live_panels(ip):
    board = run(ip, "%nbray dashboard --interval 0.2")
    try:
        wait_until(lambda: all(p.refreshes >= 2 for p in board.panels), 10, "refreshes")
        assert "alive" in board.panels[0].widget.value
    finally:
        board.stop()
    with pytest.raises(UsageError, match="bad arguments"):
        ip.run_line_magic("nbray", "dashboard --interval soon")


def test_unknown_commands_and_bad_arguments_are_usage_errors(ip):
    with pytest.raises(UsageError, match="unknown command"):
        ip.run_line_magic("nbray", "bogus")
    with pytest.raises(UsageError, match="bad arguments"):
        ip.run_line_magic("nbray", "init --workers many")
    with pytest.raises(UsageError, match="takes no arguments"):
        ip.run_line_magic("nbray", "status now")


@nbray.remote
def sleeper(marker):
    Path(marker + ".started").touch()
    try:
        for _ in range(600):    # (Ray's cancel lands between two sleeps, not inside one)
            time.sleep(0.1)
    except (nbray.TaskCancelledError, KeyboardInterrupt):   # (nbray's, Ray's)
        Path(marker + ".cancelled").touch()
        raise
    return "slept"


def test_an_interrupted_cell_cancels_the_remote_work_it_started(ip, tmp_path, capsys):
    ip.user_ns.update(sleeper=sleeper, marker=str(tmp_path / "t"))
    result = ip.run_cell("ref = sleeper.remote(marker)\nimport os, time\n"
                         "while not os.path.exists(marker + '.started'):\n"
                         "    time.sleep(0.01)\nraise KeyboardInterrupt", store_history=True)
    assert isinstance(result.error_in_exec, KeyboardInterrupt)
    with pytest.raises(nbray.TaskCancelledError):
        nbray.get(ip.user_ns["ref"], timeout=30)
    wait_until(lambda: os.path.exists(str(tmp_path / "t") + ".cancelled"), 20,
               "the task to be cancelled where it ran")
    assert "cancelled 1 remote task" in capsys.readouterr().err
    assert run(ip, "%%remote\n'still usable'") == "still usable"


def test_all_runs_a_setup_on_every_worker_now_and_on_those_started_later(ip, capsys):
    import signal
    ip.user_ns["seed"] = 7
    table = run(ip, "%%remote --all\nimport os, random\nrandom.seed(seed)\n"
                    "GREETING = 'hi from ' + str(os.getpid())\nos.getpid()")
    pids = {int(row[2]) for row in table.rows}
    assert len(pids) == len(table.rows) >= 2 and all(row[1] == "ok" for row in table.rows)
    check = "%%remote --async\nimport os, time\ntime.sleep(0.2)\n" \
            "(os.getpid(), GREETING == 'hi from ' + str(os.getpid()))"
    seen = nbray.get([run(ip, check) for _ in range(6)], timeout=60)
    assert all(ok for _, ok in seen)        # (a worker the node just started too)
    pids |= {pid for pid, _ in seen}
    from conftest import pid_alive
    hosts = set() if on_ray() else {a["worker_pid"] for a in nbray.state.actors(detail=False)}
    victims = {pid for pid, _ in seen} | (pids - hosts)     # every task worker
    for victim in victims:
        os.kill(victim, signal.SIGKILL)             # their replacements run the setup first
    wait_until(lambda: not any(pid_alive(v) for v in victims), 10, "the workers to die")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        seen = nbray.get([run(ip, check) for _ in range(6)], timeout=60)
        assert all(ok for _, ok in seen)            # every worker has GREETING, as its own
        if {pid for pid, _ in seen} - pids:
            break
    else:
        raise AssertionError("no cell ran on the new worker")


def test_a_failing_setup_says_where_and_why(ip, capsys):
    table = run(ip, "%%remote --all\nraise ValueError('bad setup')")
    assert table.rows and all(row[1] == "error" and "bad setup" in row[2] for row in table.rows)
    err = capsys.readouterr().err
    assert "the setup failed on" in err and "<remote cell [" in err
    assert "executor.py" not in err
    with pytest.raises(UsageError, match="cannot be combined"):
        ip.run_cell_magic("remote", "--all -o x", "x = 1")
