"""Remote output and scoped cancellation, on a real cluster.

What tasks print reaches the driver that started them, as it happens, tagged with the task and
its worker, from nested tasks, actors and a task's own threads too; a flood is cut and counted.
Cancelling a task cancels what it started, recursively; cancelling a scope (a notebook cell)
cancels every task and actor call submitted in it."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

import nbray
from nbray.runtime import output
from conftest import wait_until

pytestmark = pytest.mark.timeout(120)


class Collector:
    """Stands in for where the driver shows remote output."""

    def __init__(self):
        self.items: list = []
        self.lock = threading.Lock()

    def __call__(self, scope, stream, text):
        with self.lock:
            self.items.append((scope, stream, text))

    def lines(self, scope=None, stream=None) -> list[str]:
        with self.lock:
            return [line for sc, st, text in self.items for line in text.splitlines()
                    if (scope is None or sc == scope) and (stream is None or st == stream)]

    def text(self) -> str:
        return "\n".join(self.lines())


@pytest.fixture
def printed(module_cluster):
    client = module_cluster.client
    collector = Collector()
    saved = client.printer.write
    client.printer.write = collector
    try:
        yield collector
    finally:
        client.printer.write = saved
        client.scope = 0


@nbray.remote
def say(text):
    import sys
    print(text)
    print(f"{text} on stderr", file=sys.stderr)
    return text


@nbray.remote
def say_nested(text):
    print(f"outer {text}")
    return nbray.get(say.remote(f"inner {text}"))


@nbray.remote
def say_from_a_thread(text):
    t = threading.Thread(target=print, args=(f"thread {text}",))
    t.start()
    t.join()
    return text


def test_what_a_task_prints_is_on_the_driver_before_its_result(printed):
    assert nbray.get(say.remote("hello")) == "hello"
    lines = printed.lines()                         # no wait: it came before the result
    assert any(ln.startswith("(say pid=") and ln.endswith(") hello") for ln in lines)
    assert any(ln.endswith(") hello on stderr") for ln in printed.lines(stream="stderr"))


def test_nested_tasks_and_a_tasks_threads_print_to_the_driver_too(printed):
    nbray.get([say_nested.remote("a"), say_from_a_thread.remote("b")])
    wait_until(lambda: {"outer a", "inner a", "thread b"} <= {
        ln.split(") ", 1)[1] for ln in printed.lines()}, 10, "every line")


@nbray.remote
class Talker:
    def speak(self, text):
        print(f"actor {text}")
        return text

    async def speak_async(self, text):
        print(f"async actor {text}")
        return text


@nbray.remote
class Blocker:
    async def blocking(self, ref):
        return nbray.get(ref[0])            # warns: it blocks the event loop

    async def awaiting(self, ref):
        return await ref[0]                 # does not


def test_a_blocking_get_in_an_async_actor_warns_on_the_driver(printed):
    b = Blocker.remote()
    assert nbray.get(b.awaiting.remote([nbray.put(1)])) == 1
    assert nbray.get(b.blocking.remote([nbray.put(2)])) == 2
    wait_until(lambda: any("blocks the actor's event loop" in ln
                           for ln in printed.lines(stream="stderr")), 10, "the warning")
    assert sum("blocks the actor's event loop" in ln for ln in printed.lines()) == 1


def test_actors_print_to_the_driver(printed):
    t = Talker.remote()
    assert nbray.get(t.speak.remote("x")) == "x"
    a = Talker.options(max_concurrency=4).remote()
    assert nbray.get(a.speak_async.remote("y")) == "y"
    wait_until(lambda: any(ln.endswith("actor x") for ln in printed.lines()) and
               any(ln.endswith("async actor y") for ln in printed.lines()), 10, "both lines")
    assert any(ln.startswith("(Talker.speak pid=") for ln in printed.lines())


@nbray.remote
def say_then_wait(marker):
    print("started", flush=True)
    while not os.path.exists(marker):
        time.sleep(0.01)
    return "done"


def test_output_streams_while_the_task_runs(printed, tmp_path):
    marker = str(tmp_path / "go")
    ref = say_then_wait.remote(marker)
    wait_until(lambda: any(ln.endswith(") started") for ln in printed.lines()), 10,
               "the line printed before the task waits")
    Path(marker).touch()
    assert nbray.get(ref, timeout=30) == "done"


def test_output_carries_the_scope_of_the_cell_that_started_it(printed, module_cluster):
    module_cluster.client.scope = 7
    nbray.get(say_nested.remote("scoped"))
    module_cluster.client.scope = 8
    nbray.get(say.remote("other"))
    wait_until(lambda: len(printed.lines(scope=7)) >= 3, 10, "scope 7's lines")
    assert {ln.split(") ", 1)[1] for ln in printed.lines(scope=7)} == {
        "outer scoped", "inner scoped", "inner scoped on stderr"}
    assert all("scoped" not in ln for ln in printed.lines(scope=8))


@nbray.remote
def flood(n):
    for i in range(n):
        print("line", i)
    return n


def test_a_flood_is_cut_and_counted_and_its_last_lines_shown(printed, module_cluster):
    module_cluster.client.scope = 9
    t = time.perf_counter()
    assert nbray.get(flood.remote(100_000), timeout=60) == 100_000
    took = time.perf_counter() - t
    module_cluster.client.printer.finish(9)
    lines = printed.lines(scope=9)
    reports = [ln for ln in lines if ln.startswith("[nbray: ")]
    assert reports and reports[-1].endswith(f"the last {output.TAIL_LINES} follow]")
    assert len(reports) <= took / output.NOTE_S + 2         # at most one a second
    shown = [ln for ln in lines if ln.startswith("(flood pid=")]
    hidden = sum(int(r.split()[1].replace(",", "")) for r in reports)
    assert len(shown) + hidden == 100_000
    assert len(shown) < output.HEAD_LINES + output.RATE_LINES * (took + 2) + output.TAIL_LINES
    assert shown[-1].endswith(") line 99999")


@nbray.remote
def burst_then_progress(marker):
    import time
    for i in range(1000):
        print("burst", i)
    for i in range(3):              # slow lines after a flood are shown again
        time.sleep(0.3)
        print(f"progress {i}", flush=True)
    for i in range(5):              # a progress bar: only its last drawing counts
        print(f"\rbar {i * 25}%", end="", flush=True)
    print()
    return "ok"


def test_slow_lines_after_a_flood_and_a_redrawn_line_are_shown(printed, module_cluster):
    module_cluster.client.scope = 10
    assert nbray.get(burst_then_progress.remote(""), timeout=60) == "ok"
    module_cluster.client.printer.finish(10)
    text = [ln.split(") ", 1)[-1] for ln in printed.lines(scope=10)]
    assert {"progress 0", "progress 1", "progress 2"} <= set(text)
    assert "bar 100%" in text and "bar 0%" not in text
    assert any(ln.startswith("[nbray: ") for ln in text)


# ---- cancellation -----------------------------------------------------------------------------
@nbray.remote
def sleeper(marker, seconds=60):
    Path(marker + ".started").touch()
    try:
        time.sleep(seconds)
    except nbray.TaskCancelledError:
        Path(marker + ".cancelled").touch()
        raise
    return "slept"


@nbray.remote
def parent(marker):
    return nbray.get(sleeper.remote(marker))


def test_cancelling_a_task_cancels_the_tasks_it_started(module_cluster, tmp_path):
    marker = str(tmp_path / "child")
    ref = parent.remote(marker)
    wait_until(lambda: os.path.exists(marker + ".started"), 20, "the child to start")
    nbray.cancel(ref)
    with pytest.raises(nbray.TaskCancelledError):
        nbray.get(ref, timeout=30)
    wait_until(lambda: os.path.exists(marker + ".cancelled"), 20, "the child to be cancelled")


@nbray.remote
class Slow:
    def wait(self, marker):
        Path(marker + ".started").touch()
        time.sleep(60)
        return "waited"

    def ping(self):
        return "pong"


def test_cancelling_a_scope_cancels_its_tasks_and_actor_calls_only(module_cluster, tmp_path):
    client = module_cluster.client
    slow = Slow.remote()
    assert nbray.get(slow.ping.remote()) == "pong"
    client.scope = 11
    keep = sleeper.remote(str(tmp_path / "keep"), 1)
    client.scope = 12
    nested = parent.remote(str(tmp_path / "nested"))
    call = slow.wait.remote(str(tmp_path / "call"))
    queued = slow.ping.remote()                     # behind the long call
    client.scope = 0
    wait_until(lambda: all(os.path.exists(str(tmp_path / n) + ".started")
                           for n in ("nested", "call")), 20, "the scope's work to start")
    assert client.cancel_scope(12) == 3
    for ref in (nested, call, queued):
        with pytest.raises(nbray.TaskCancelledError):
            nbray.get(ref, timeout=30)
    wait_until(lambda: os.path.exists(str(tmp_path / "nested") + ".cancelled"), 20,
               "the nested task to be cancelled")
    assert nbray.get(keep, timeout=30) == "slept"
    assert nbray.get(slow.ping.remote(), timeout=30) == "pong"     # the actor lives on


@nbray.remote
def fork_and_print():
    import multiprocessing
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=print, args=("from a forked child",))
    child.start()
    child.join(30)
    print("parent after the child")
    return child.exitcode


def test_a_process_forked_by_a_task_does_not_use_the_workers_sockets(printed):
    assert nbray.get(fork_and_print.remote(), timeout=60) == 0
    wait_until(lambda: any(ln.endswith(") parent after the child") for ln in printed.lines()),
               10, "the parent's line")
    assert nbray.get(say.remote("the worker still works"), timeout=30) == "the worker still works"


@nbray.remote
def print_bytes():
    import sys
    sys.stdout.buffer.write(b"raw bytes\n")
    sys.stdout.flush()
    return 1


def test_bytes_written_to_stdout_buffer_go_to_the_driver_too(printed):
    assert nbray.get(print_bytes.remote()) == 1
    wait_until(lambda: any(ln.endswith(") raw bytes") for ln in printed.lines()), 10,
               "the bytes' line")
