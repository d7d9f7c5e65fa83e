"""The notebook hooks on Ray (``backends.Notebook``): each cell's tasks carry the cell, so that
what they print lands in it, an interrupt cancels them, and ``%%remote --all`` setups reach
every worker that runs them.

A task submitted in a cell (by the driver, or by a task of that cell) is Ray's remote function
of the same Python function wrapped by ``in_cell``: its first argument is the ``Cell`` (the
driver, the cell's number, the driver's ``OutputHub`` actor, the setups so far). On the worker
the wrapper runs the notebook's setups this worker has not run yet, then the function with
``sys.stdout`` and ``sys.stderr`` sending its text, in batches, to the hub; the driver takes
it from the hub in a thread and shows it in the cell through the same ``Printer`` (and flood
limits) as nbray's own runtime. Tasks submitted outside any cell are Ray's plain remote
function: nothing is added to them.

What Ray does not let nbray see stays Ray's: an actor method call is Ray's own handle's, so it
is neither tagged (its output is Ray's log forwarding) nor cancelled by the cell's interrupt,
and an actor (a ``%%remote --actor`` namespace too) does not run the setups.
"""
from __future__ import annotations

import asyncio
import contextvars
import inspect
import io
import os
import socket
import sys
import threading
import time
from typing import NamedTuple

import ray

from nbray import backends

#: in a Ray worker: the cell the running task serves (None outside any), and the task's name
CELL: contextvars.ContextVar = contextvars.ContextVar("nbray_ray_cell", default=None)
TASK: contextvars.ContextVar = contextvars.ContextVar("nbray_ray_task", default="")

FLUSH_S = 0.05          # a task's text leaves within this
TAKE_S = 0.5            # the driver's thread asks the hub at least this often
IDLE_S = 1.0            # a cell that ended and prints nothing for this long is finished
PRUNE_AT = 16           # a cell's refs are pruned of finished ones past this many (at least)


class Cell(NamedTuple):
    driver: str                 # the driver's job id
    scope: int                  # the cell's number
    hub: object                 # the driver's OutputHub (None: output is not routed)
    setups: object              # a ref to [(key, fn, args)] of %%remote --all, or None


class OutputHub:
    """One per driver, on its node: workers leave text here, the driver's thread takes it.
    Ray does not keep the order of calls to an async actor: each worker numbers its batches,
    and a batch that overtook an earlier one waits here for it."""

    def __init__(self):
        self.items: list = []
        self.ready = asyncio.Event()
        self.next: dict = {}        # writer -> the number of the batch it sends next
        self.early: dict = {}       # writer -> {number: batch} come before their turn

    async def write(self, writer: str, seq: int, items: list) -> None:
        early = self.early.setdefault(writer, {})
        early[seq] = items
        n = self.next.get(writer, 1)
        while n in early:
            self.items.extend(early.pop(n))
            n += 1
        self.next[writer] = n
        if self.items:
            self.ready.set()

    async def take(self, timeout: float) -> list:
        if not self.items:
            try:
                await asyncio.wait_for(self.ready.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        items, self.items = self.items, []
        self.ready.clear()
        return items


class RayNotebook(backends.Notebook):
    name = "ray"
    setup_unit = "node"
    setup_later = ("every later task of this notebook's cells runs it first, on a worker "
                   "that has not (Ray does not address its workers one by one)")

    def __init__(self):
        self.cell: Cell | None = None       # the driver's cell running now
        self.refs: dict[int, list] = {}     # scope -> refs of the tasks it submitted
        self.write = None
        self.hub = None
        self.printer = None
        self.setups: list = []
        self.setups_ref = None
        self._reader: threading.Thread | None = None
        self._stop = threading.Event()
        self._last: dict[int, float] = {}   # scope -> when it last printed
        self._prune_at = PRUNE_AT
        self._setups_run = 0

    # ---- cells ------------------------------------------------------------------------
    def begin_cell(self, scope: int) -> None:
        self.refs.pop(scope, None)
        self._prune_at = PRUNE_AT
        self.cell = Cell(ray.get_runtime_context().get_job_id(), scope,
                         self._hub() if self.write is not None else None, self.setups_ref)

    def end_cell(self, scope: int, interrupted: bool) -> int:
        refs = self.refs.pop(scope, [])
        self.cell = None
        if not interrupted or not refs:
            return 0
        ready = set(ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)[0])
        pending = [r for r in refs if r not in ready]
        for ref in pending:
            try:
                ray.cancel(ref, recursive=True)
            except Exception:       # noqa: BLE001 - finished meanwhile: nothing to cancel
                pass
        return len(pending)

    def submitted(self, cell: Cell, ref) -> None:
        """A task of the driver's cell: the cell's interrupt would cancel it. The finished
        ones are let go whenever the list has doubled, so that a cell's loop of tasks does
        not keep their results alive until it ends."""
        refs = self.refs.setdefault(cell.scope, [])
        if isinstance(ref, list):       # (num_returns > 1)
            refs.extend(ref)
        elif ref is not None:           # (num_returns=0: nothing to cancel it by)
            refs.append(ref)
        if len(refs) >= self._prune_at:
            ready = set(ray.wait(refs, num_returns=len(refs), timeout=0,
                                 fetch_local=False)[0])
            refs[:] = [r for r in refs if r not in ready]
            self._prune_at = max(PRUNE_AT, 2 * len(refs))

    def stop(self) -> None:
        self.cell = None

    def worker_driver(self) -> str:
        cell = CELL.get()
        return cell.driver if cell is not None else ""

    # ---- output -----------------------------------------------------------------------
    def route_output(self, write) -> None:
        self.write = write
        if write is None:
            self.close()

    def _hub(self):
        if self.hub is None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
            from nbray.runtime.output import Printer
            here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(),
                                                  soft=True)
            self.hub = ray.remote(OutputHub).options(
                num_cpus=0, scheduling_strategy=here).remote()
            self.printer = Printer(self._show)
            self._stop.clear()
            self._reader = threading.Thread(target=self._read, name="nbray-ray-output",
                                            daemon=True)
            self._reader.start()
        return self.hub

    def _show(self, scope: int, stream: str, text: str) -> None:
        write = self.write
        if write is not None:
            write(scope, stream, text)
        else:
            out = sys.stderr if stream == "stderr" else sys.stdout
            out.write(text)
            out.flush()

    def _read(self) -> None:
        from nbray.runtime import protocol as P
        hub, printer = self.hub, self.printer
        while not self._stop.is_set():
            try:
                items = ray.get(hub.take.remote(TAKE_S))
            except Exception:       # noqa: BLE001 - the hub or the connection is gone
                return
            now = time.monotonic()
            try:
                for scope, stream, text, source in items:
                    self._last[scope] = now
                    printer(P.TaskOutput(scope, stream, text, source))
                running = self.cell.scope if self.cell is not None else None
                for scope in [s for s, t in self._last.items() if s != running and
                              now - t >= IDLE_S]:
                    del self._last[scope]
                    printer.finish(scope)   # its unfinished lines, and what it dropped
            except Exception:       # noqa: BLE001 - where it is shown failed: not the next
                import traceback
                traceback.print_exc()

    def close(self) -> None:
        """The thread and the hub go (the extension is unloaded, or the driver leaves)."""
        hub, self.hub = self.hub, None
        if hub is None:
            return
        self._stop.set()
        if self._reader is not None:
            self._reader.join(TAKE_S * 4)
        if self.printer is not None:
            self.printer.finish_all()
        try:
            ray.kill(hub)
        except Exception:       # noqa: BLE001 - Ray is already down
            pass

    # ---- %%remote --all ---------------------------------------------------------------
    def run_everywhere(self, fn, args, key, timeout):
        """Ray does not address its workers: the setup joins the notebook's setups, which
        every later task of the notebook's cells runs first on a worker that has not run it;
        now it runs once on every node."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        self._setups_run += 1           # run again, it is a new setup for every worker
        key = f"{key}#{self._setups_run}"
        self.setups = [s for s in self.setups if s[0].split("#")[0] != key.split("#")[0]] + \
            [(key, fn, args)]
        self.setups_ref = ray.put(self.setups)
        if self.cell is not None:
            self.cell = self.cell._replace(setups=self.setups_ref)
        cell = self.cell or Cell(ray.get_runtime_context().get_job_id(), 0, None,
                                 self.setups_ref)
        nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
        refs = [ray.remote(_setup_now).options(
            num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False))
            .remote(cell, key) for n in nodes]
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        return [ray.get(r) for r in done], len(nodes)

    dashboard_name = "Ray's dashboard"

    def dashboard_url(self) -> str | None:
        """Ray's own dashboard (nbray's widgets show its state in the notebook)."""
        url = ray._private.worker.get_dashboard_url()
        if not url:
            return None
        return url if url.startswith("http") else f"http://{url}"

    def summary(self) -> dict:
        """This driver's unfinished tasks (Ray's state API, by its job) and the refs it holds
        (Ray does not say which of them it owns, nor their sizes, without a query per
        object)."""
        from nbray import backends
        job = ray.get_runtime_context().get_job_id()
        return {"tasks_unfinished": backends.engine.state.unfinished_of_job(job),
                "objects": len(self.held_objects()), "owned": None, "owned_bytes": None}

    def held_objects(self) -> list[dict]:
        """The refs this driver holds, with Ray's counts of them (its core worker's table;
        sizes, states and owners are Ray's state API's, which nbray does not read yet)."""
        counts = ray._private.worker.global_worker.core_worker.get_all_reference_counts()
        return [{"object_id": oid.decode() if isinstance(oid, bytes) else str(oid),
                 "owned": None, "state": "-", "size": None,
                 "refs": c.get("local", 0), "pinned_by_tasks": c.get("submitted", 0),
                 "pending_tasks": [], "borrowers": 0} for oid, c in counts.items()]


# ---- the worker's side -------------------------------------------------------------------------
def current_cell() -> Cell | None:
    """In a worker: the cell of the task this thread runs, or of the task the main thread
    runs (a thread the task started)."""
    cell = CELL.get()
    if cell is None and _OUTPUT is not None:
        running = _OUTPUT.running
        cell = running[0] if running is not None else None
    return cell


def in_cell(fn):
    """``fn`` as a task of a cell: ``run(cell, *args, **kwargs)``. Generator and coroutine
    functions are not wrapped (None): they run as Ray's own, untagged."""
    if inspect.isgeneratorfunction(fn) or inspect.iscoroutinefunction(fn) or \
            inspect.isasyncgenfunction(fn):
        return None

    def run(cell, *args, **kwargs):
        # (pickled by value, with no global of this module: it finds them on the worker)
        from nbray.backends.ray_notebook import run_in_cell
        return run_in_cell(fn, cell, args, kwargs)
    run.__name__ = getattr(fn, "__name__", "task")
    run.__qualname__ = getattr(fn, "__qualname__", run.__name__)
    try:        # Ray checks the arguments at .remote() against the function's own
        sig = inspect.signature(fn)
        cell = inspect.Parameter("__nbray_cell", inspect.Parameter.POSITIONAL_ONLY)
        run.__signature__ = sig.replace(parameters=[cell, *sig.parameters.values()])
    except (TypeError, ValueError):
        pass
    return run


def run_in_cell(fn, cell: Cell, args: tuple, kwargs: dict):
    name = ray.get_runtime_context().get_task_name() or getattr(fn, "__name__", "task")
    token, named = CELL.set(cell), TASK.set(name)
    out = _output()
    out.running = (cell, name)      # what the task's own threads print is its
    try:
        if cell.setups is not None:
            _run_setups(cell)
        return fn(*args, **kwargs)
    finally:
        out.running = None
        try:
            out.flush()
        except Exception:       # noqa: BLE001 - the task's own outcome is what it returns
            pass
        CELL.reset(token)
        TASK.reset(named)


_DONE_SETUPS: dict[str, set] = {}       # driver -> keys of the setups run in this process
_SETUPS: dict = {}                      # the setups ref's hex -> its list (the newest only)


def _run_setups(cell: Cell, again: str = "") -> dict:
    """The notebook's setups this process has not run (and ``again``), in order:
    {key: (error text or '', value)} of those it ran. A failing setup is said on stderr
    (in the cell) and the task goes on, as on nbray's runtime."""
    done = _DONE_SETUPS.setdefault(cell.driver, set())
    ran = {}
    setups = _SETUPS.get(cell.setups.hex())
    if setups is None:          # fetched once per list, not per task
        setups = ray.get(cell.setups)
        _SETUPS.clear()         # only the newest list is kept
        _SETUPS[cell.setups.hex()] = setups
    for key, fn, args in setups:
        if key in done and key != again:
            continue
        done.add(key)
        try:
            ran[key] = ("", fn(*args))
        except Exception:       # noqa: BLE001 - the user's setup failed: say how, and where
            import traceback
            from nbray.backends.ray_backend import _without_nbray_frames
            ran[key] = (_without_nbray_frames(traceback.format_exc()), None)
            if key != again:
                print(f"nbray: a %%remote --all setup failed here:\n{ran[key][0]}",
                      file=sys.stderr)
    return ran


def _setup_now(cell: Cell, key: str):
    """``%%remote --all`` on one node now: (where, error text or '', value)."""
    token, named = CELL.set(cell), TASK.set("%%remote --all")
    try:
        error, value = _run_setups(cell, again=key)[key]
        return f"pid={os.getpid()}, host={socket.gethostname()}", error, value
    finally:
        CELL.reset(token)
        TASK.reset(named)


class _WorkerOutput:
    """What this worker's cell tasks print, in batches to their drivers' hubs."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sending = threading.Lock()
        self.buffers: dict = {}     # (driver, scope, stream, source) -> [text]
        self.hubs: dict = {}        # driver -> its hub
        self.sent: dict = {}        # hub's actor id -> batches sent to it
        self.writer = f"{os.getpid()}-{os.urandom(4).hex()}"
        self.running: tuple | None = None      # (cell, name) of the main thread's task
        self.armed = threading.Event()
        self.source = f"pid={os.getpid()}, host={socket.gethostname()}"
        self.streams = [_CellStream(self, "stdout", sys.stdout),
                        _CellStream(self, "stderr", sys.stderr)]
        sys.stdout, sys.stderr = self.streams
        threading.Thread(target=self._loop, name="nbray-cell-output", daemon=True).start()

    def add(self, cell: Cell, name: str, stream: str, text: str) -> None:
        key = (cell.driver, cell.scope, stream, f"{name} {self.source}")
        with self.lock:
            self.hubs[cell.driver] = cell.hub       # (each task brings its own handle)
            self.buffers.setdefault(key, []).append(text)
        self.armed.set()

    def flush(self) -> None:
        # one sender at a time: the task's end and the timer's thread send in order
        with self.sending:
            with self.lock:
                buffers, self.buffers = self.buffers, {}
                hubs = dict(self.hubs)
            batches: dict = {}
            for (driver, scope, stream, source), parts in buffers.items():
                batches.setdefault(driver, []).append((scope, stream, "".join(parts), source))
            for driver, items in batches.items():
                hub = hubs[driver]      # (numbered per hub: a new hub counts from 1)
                number = hub._actor_id.hex()
                self.sent[number] = seq = self.sent.get(number, 0) + 1
                hub.write.remote(self.writer, seq, items)

    def _loop(self) -> None:
        while True:
            self.armed.wait()
            time.sleep(FLUSH_S)     # a timer: let the batch fill, then send it as one
            self.armed.clear()
            try:
                self.flush()
            except Exception:       # noqa: BLE001 - (the hub is gone) the next may go
                pass


class _CellStream(io.TextIOBase):
    """sys.stdout or sys.stderr of a Ray worker: a cell task's text goes to its driver, the
    rest where it went before (Ray's log of the worker)."""

    def __init__(self, output: _WorkerOutput, name: str, fallback):
        self.output, self.name, self.fallback = output, name, fallback

    def write(self, text: str) -> int:
        cell = CELL.get()
        if cell is not None:
            name = TASK.get()
        else:
            running = self.output.running       # (read once: the task may end meanwhile)
            if running is not None:
                cell, name = running
        if cell is None or cell.hub is None:
            return self.fallback.write(text)
        self.output.add(cell, name, self.name, text)
        return len(text)

    def flush(self) -> None:
        self.fallback.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.fallback.fileno()

    @property
    def encoding(self):
        return getattr(self.fallback, "encoding", "utf-8")

    @property
    def buffer(self):
        """``sys.stdout.buffer``: bytes written there are decoded and go the same way."""
        from nbray.runtime.output import _Bytes
        return _Bytes(self)

    def writable(self) -> bool:
        return True

    def __getattr__(self, name):        # errors, line_buffering, ...: the stream's own
        return getattr(self.fallback, name)


_OUTPUT: _WorkerOutput | None = None
_OUTPUT_LOCK = threading.Lock()


def _output() -> _WorkerOutput:
    global _OUTPUT
    if _OUTPUT is None:
        with _OUTPUT_LOCK:
            if _OUTPUT is None:
                _OUTPUT = _WorkerOutput()
    return _OUTPUT
