"""The notebook hooks on Ray (``nbray/backends/ray_notebook.py``), without IPython: what a cell's
tasks print reaches the driver tagged with the cell, from nested tasks and a task's threads
too, and a flood is cut and counted as on nbray's runtime; a cell's interrupt cancels what it
started, recursively; tasks outside any cell are Ray's plain ones."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

import nbray
from nbray.runtime import output
from conftest import wait_until
from test_output import Collector, say

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]


@pytest.fixture
def cells(ray_driver):
    from nbray import backends
    hooks = backends.notebook()
    assert hooks.name == "ray"
    collector = Collector()
    hooks.route_output(collector)
    try:
        yield hooks, collector
    finally:
        hooks.route_output(None)
        hooks.cell = None


@nbray.remote
def say_nested(text):
    print(f"outer {text}")
    t = threading.Thread(target=print, args=(f"thread {text}",))
    t.start()
    t.join()
    return nbray.get(say.remote(f"inner {text}"))


@nbray.remote
def flood(n):
    for i in range(n):
        print("line", i)
    return n


def test_a_cells_output_reaches_it_from_nested_tasks_and_threads(cells):
    hooks, printed = cells
    hooks.begin_cell(7)
    assert nbray.get(say_nested.remote("scoped")) == "inner scoped"
    hooks.end_cell(7, False)
    hooks.begin_cell(8)
    nbray.get(say.remote("other"))
    hooks.end_cell(8, False)
    want = {"outer scoped", "thread scoped", "inner scoped", "inner scoped on stderr"}
    wait_until(lambda: {ln.split(") ", 1)[1] for ln in printed.lines(scope=7)} >= want, 20,
               "cell 7's lines")
    assert {ln.split(") ", 1)[1] for ln in printed.lines(scope=7)} == want
    (line,) = [ln for ln in printed.lines(scope=7) if ln.endswith(") outer scoped")]
    assert line.startswith("(say_nested pid=") and "host=" in line
    assert printed.lines(scope=7, stream="stderr") == [
        ln for ln in printed.lines(scope=7) if ln.endswith("on stderr")]
    wait_until(lambda: printed.lines(scope=8), 20, "cell 8's lines")
    assert all("scoped" not in ln for ln in printed.lines(scope=8))


def test_a_flood_is_cut_and_counted_and_its_last_lines_shown(cells):
    hooks, printed = cells
    hooks.begin_cell(9)
    t = time.perf_counter()
    assert nbray.get(flood.remote(100_000), timeout=120) == 100_000
    took = time.perf_counter() - t
    hooks.end_cell(9, False)

    def finished():                 # the cell ended and went quiet: its flood is reported
        reports = [ln for ln in printed.lines(scope=9) if ln.startswith("[nbray: ")]
        return reports if reports and reports[-1].endswith(
            f"the last {output.TAIL_LINES} follow]") else None
    reports = wait_until(finished, 60, "the report of what was dropped")
    lines = printed.lines(scope=9)
    shown = [ln for ln in lines if ln.startswith("(flood pid=")]
    hidden = sum(int(r.split()[1].replace(",", "")) for r in reports)
    assert len(shown) + hidden == 100_000
    assert len(shown) < output.HEAD_LINES + output.RATE_LINES * (took + 5) + output.TAIL_LINES
    assert shown[-1].endswith(") line 99999")


@nbray.remote
def waits_for_its_cancel(marker):
    Path(marker + ".started").touch()
    try:
        for _ in range(600):        # (Ray's cancel lands between two sleeps)
            time.sleep(0.1)
    except KeyboardInterrupt:       # how Ray's cancel arrives in a task
        Path(marker + ".cancelled").touch()
        raise
    return "not cancelled"


@nbray.remote
def starts_a_child(marker):
    return nbray.get(waits_for_its_cancel.remote(marker))


def test_an_interrupt_cancels_what_the_cell_started_recursively_and_only_that(cells, tmp_path):
    hooks, _ = cells
    marker, other = str(tmp_path / "child"), str(tmp_path / "other")
    hooks.begin_cell(11)
    outside = None
    try:
        parent = starts_a_child.remote(marker)
        wait_until(lambda: os.path.exists(marker + ".started"), 60, "the child to start")
        hooks.cell = None                           # (as if another cell ran meanwhile)
        outside = waits_for_its_cancel.remote(other)
        wait_until(lambda: os.path.exists(other + ".started"), 60, "the other to start")
    finally:
        hooks.cell = hooks.cell or None
    assert hooks.end_cell(11, True) == 1
    with pytest.raises(nbray.TaskCancelledError):
        nbray.get(parent, timeout=60)
    wait_until(lambda: os.path.exists(marker + ".cancelled"), 60, "the child to be cancelled")
    assert not os.path.exists(other + ".cancelled")
    nbray.cancel(outside)
    with pytest.raises(nbray.TaskCancelledError):
        nbray.get(outside, timeout=60)


def test_outside_any_cell_a_task_is_rays_plain_remote_function(ray_driver):
    from nbray import backends
    assert backends.notebook().cell is None
    assert nbray.get(say.remote("plain")) == "plain"
    assert "ray" in say._shared and say._shared["ray"] is not say._shared.get("ray-in-cell")
    with pytest.raises(TypeError):              # Ray checks the arguments, in a cell too
        backends.notebook().begin_cell(12)
        try:
            say.remote("a", "b")
        finally:
            backends.notebook().end_cell(12, False)


@nbray.remote(num_returns=2)
def two_parts(i):
    return i, -i


def test_a_cells_refs_of_several_returns_are_kept_and_the_finished_let_go(cells):
    hooks, _ = cells
    hooks.begin_cell(13)
    pairs = [two_parts.remote(i) for i in range(40)]    # lists of refs
    assert nbray.get([r for pair in pairs for r in pair]) == [
        x for i in range(40) for x in (i, -i)]
    more = [two_parts.remote(i) for i in range(80)]     # the list doubles: it is pruned
    kept = hooks.refs[13]
    assert all(isinstance(r, nbray.ObjectRef) for r in kept)
    assert not {r.hex() for pair in pairs for r in pair} & {r.hex() for r in kept}
    nbray.get([r for pair in more for r in pair])
    assert hooks.end_cell(13, True) == 0        # all finished: nothing to cancel
