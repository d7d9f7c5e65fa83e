"""Live widgets of the cluster (ipywidgets), each usable alone and together in ``%nbray
dashboard``.

A panel is an ``ipywidgets.HTML`` whose table is rebuilt from the state API by ``refresh()``.
``start()`` refreshes it from a background thread, at most ``MAX_HZ`` times a second, until the
widget is closed or the cluster goes; widgets send their changes to the browser from any thread.

- ``ClusterPanel``: nodes, their state, workers (idle / leased / blocked), resources free and
  total, lease queues, and the memory and CPU of the machine.
- ``ActorPanel``: every actor with its state, node, worker, calls queued and running,
  restarts and what its ``__nbray_state__()`` says.
- ``TaskPanel``: tasks by function and state, with mean run and wait times (the task log).

The plots are bokeh models (``nbray.dashboard.plots``) shown as widgets by jupyter_bokeh:

- ``TaskGraph``: the DAG of the newest tasks (at most 2,000) by state, reconstructed ones
  ringed; click a task for its details.
- ``LatencyHistogram``: per function, the time in each phase (waiting for inputs, scheduling,
  queueing, input transfer, execution), and a histogram of end-to-end latency.
- ``SchedulerView``: per node, tasks on leases it kept or spilled to the global scheduler, by
  reason, and the global scheduler's decisions.

A refresh reads the cluster once (``nbray.dashboard.data.Snapshot``) and draws at most the
newest 2,000 tasks, so a run of any length keeps the notebook responsive.
"""
from __future__ import annotations

import html
import threading
import time

import ipywidgets as W

import nbray
from nbray.extension import views

MAX_HZ = 5.0


class Panel:
    """A table rebuilt from the state API; ``widget`` is what to display."""

    title = ""
    css = ""
    view = ""           # its name in nbray.state.unexposed(): what the engine does not tell

    def __init__(self):
        self._show(W.HTML(value=self._table([], [])))

    def _show(self, widget) -> None:
        self.widget = widget
        self.widget.add_class(self.css)         # a stable selector for tests
        self.refreshes = 0
        self.error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def rows(self) -> tuple[list[str], list[list]]:
        raise NotImplementedError

    def refresh(self, snapshot=None) -> None:
        """Rebuild the table now (from any thread)."""
        self.widget.value = self.html()
        self.refreshes += 1

    def html(self) -> str:
        """The table as HTML, read from the cluster now (the bokeh server shows it too)."""
        if not nbray.is_initialized():
            return self._table([], [], "nbray is not initialized")
        try:
            columns, rows = self.rows()
            self.error = ""
            note = nbray.state.unexposed().get(self.view, "")
        except Exception as e:          # the cluster went away under us, say
            columns, rows, self.error = [], [], f"{type(e).__name__}: {e}"
            note = self.error
        return self._table(columns, rows, note)

    def _closed(self) -> bool:
        return self.widget.comm is None

    def start(self, interval: float = 1.0) -> "Panel":
        """Refresh every ``interval`` seconds (at least 1/MAX_HZ) from a thread of its own."""
        interval = max(interval, 1.0 / MAX_HZ)
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, args=(interval,),
                                            name=f"nbray-{self.css}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            if self._closed() or not nbray.is_initialized():
                break               # the widget was closed, or the cluster is gone
            self.refresh()
            self._stop.wait(interval)

    def _ipython_display_(self):
        from IPython.display import display
        display(self.widget)

    def _table(self, columns: list, rows: list, note: str = "") -> str:
        head = "".join(f"<th style='text-align:left;padding:0 8px'>{html.escape(c)}</th>"
                       for c in columns)
        body = "".join("<tr>" + "".join(f"<td style='padding:0 8px'>{html.escape(str(v))}</td>"
                                        for v in row) + "</tr>" for row in rows)
        note = f"<div><i>{html.escape(note)}</i></div>" if note else ""
        return (f"<div class='nbray-panel'><b>{html.escape(self.title)}</b>"
                f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}"
                f"</div>")


class ClusterPanel(Panel):
    title = "nodes"
    css = "nbray-cluster"
    view = "nodes"

    def rows(self):
        import psutil
        out = []
        alive_only = "nodes" in nbray.state.unexposed()    # (Ray: no idle from busy)
        for n in nbray.state.nodes():
            total = n.get("resources_total") or n.get("resources") or {}
            free = n.get("resources_available") or {}
            workers = f"{n.get('workers', '?')} alive" if alive_only else (
                f"{n.get('workers_idle', '?')} / {n.get('workers_leased', '?')} / "
                f"{n.get('workers_blocked', '?')}")
            out.append([n["node_id"][:8], n.get("host", ""), n.get("state", ""), workers,
                        views._amounts(free, total), views._known(n.get("lease_queue", 0))])
        mem = psutil.virtual_memory()
        self.title = (f"nodes (this machine: CPU {psutil.cpu_percent(None):.0f}%, memory "
                      f"{mem.used / 2**30:.1f} of {mem.total / 2**30:.1f} GiB)")
        workers = "workers" if alive_only else "workers idle / leased / blocked"
        return ["node", "host", "state", workers, "resources free / total", "lease queue"], out


class ActorPanel(Panel):
    title = "actors"
    css = "nbray-actors"
    view = "actors"

    def rows(self):
        out = []
        for a in nbray.state.actors():
            if a.get("state") == "dead" and len(out) > 50:
                continue
            state = a.get("user_state")
            out.append([a.get("name") or a["actor_id"][:8], a.get("class_name", ""),
                        a.get("state", ""), (a.get("node_id") or "")[:8],
                        a.get("worker_pid") or "",
                        "busy" if a.get("busy") else a.get("queued", ""),
                        "" if a.get("busy") else a.get("running", ""),
                        a.get("restarts", 0),
                        "" if state is None else repr(state)[:200]])
        return ["actor", "class", "state", "node", "worker", "queued", "running", "restarts",
                "state()"], out


class TaskPanel(Panel):
    title = "tasks"
    css = "nbray-tasks"
    view = "tasks"

    def rows(self):
        out = []
        for name, f in sorted(nbray.state.summary()["tasks"].items()):
            out.append([name, f["finished"], f["failed"], f["cancelled"],
                        f["running"] + f["queued"] + f["waiting"],
                        _ms(f["mean_run_s"]), _ms(f["mean_wait_s"])])
        return ["function", "finished", "failed", "cancelled", "pending", "mean run",
                "mean wait"], out


class PlotPanel(Panel):
    """A bokeh plot of ``nbray.dashboard.plots`` as a widget (jupyter_bokeh)."""

    plot = ""           # the name of its class in nbray.dashboard.plots

    def __init__(self, **options):
        from jupyter_bokeh import BokehModel

        from nbray.dashboard import plots
        self.plot = getattr(plots, self.plot)(**options)
        self._show(BokehModel(self.plot.layout))

    def refresh(self, snapshot=None) -> None:
        """Read the cluster (unless given a ``Snapshot``) and redraw (from any thread)."""
        from nbray.dashboard.data import Snapshot
        if not nbray.is_initialized():
            return
        try:
            if snapshot is None:
                snapshot = Snapshot.take(getattr(self.plot, "max_tasks", 2000),
                                         scheduler=isinstance(self, SchedulerView))
            self.plot.update(snapshot)
            self.error = ""
        except Exception as e:          # the cluster went away under us, say
            self.error = f"{type(e).__name__}: {e}"
        self.refreshes += 1

    def _closed(self) -> bool:
        return getattr(self.widget, "comm", None) is None

    def _ipython_display_(self):
        from IPython.display import display
        load_bokehjs()
        display(self.widget)


class TaskGraph(PlotPanel):
    css, plot = "nbray-task-graph", "TaskGraphPlot"


class LatencyHistogram(PlotPanel):
    css, plot = "nbray-latency", "LatencyPlot"


class SchedulerView(PlotPanel):
    css, plot = "nbray-scheduler", "SchedulerPlot"


_bokehjs_loaded = False


def load_bokehjs() -> None:
    """BokehJS into the page, once per kernel, before the first plot: jupyter_bokeh's
    widgets need it there, and from this package (no CDN: the machine may be offline)."""
    global _bokehjs_loaded
    if not _bokehjs_loaded:
        import bokeh.io.notebook
        loaded = getattr(bokeh.io.notebook, "_NOTEBOOK_LOADED", None)   # by the user, inline:
        if getattr(loaded, "mode", None) != "inline":                   # not 1 MB twice
            from bokeh.io import output_notebook
            from bokeh.resources import INLINE
            output_notebook(resources=INLINE, hide_banner=True)
        _bokehjs_loaded = True


class Dashboard:
    """The panels and plots together, refreshed by one thread from one read of the
    cluster."""

    def __init__(self, interval: float = 1.0, plots: bool = True):
        self.panels = [ClusterPanel(), TaskPanel(), ActorPanel()]
        if plots:
            self.panels += [TaskGraph(), LatencyHistogram(), SchedulerView()]
        self.widget = W.VBox([p.widget for p in self.panels])
        self.widget.add_class("nbray-dashboard")
        self.interval = max(interval, 1.0 / MAX_HZ)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Dashboard":
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="nbray-dashboard", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self.widget.comm is None or not nbray.is_initialized():
                break
            started = time.monotonic()
            self.refresh()
            if time.monotonic() - started > self.interval:     # refreshing is slow: back off
                self._stop.wait(time.monotonic() - started)

    def refresh(self) -> None:
        from nbray.dashboard.data import Snapshot
        snapshot = None
        if any(isinstance(p, PlotPanel) for p in self.panels) and nbray.is_initialized():
            try:
                snapshot = Snapshot.take()
            except Exception:           # each plot then says what went wrong
                snapshot = None
        for p in self.panels:
            p.refresh(snapshot)

    def _ipython_display_(self):
        from IPython.display import display
        if any(isinstance(p, PlotPanel) for p in self.panels):
            load_bokehjs()
        display(self.widget)


def _ms(seconds) -> str:
    return "" if seconds is None else f"{1000 * seconds:.1f} ms"
