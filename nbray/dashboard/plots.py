"""The bokeh plots of the dashboard: the same models in a notebook (as widgets, through
jupyter_bokeh) and in the bokeh server of ``nbray start --dashboard-port``.

Each plot has a ``layout`` (the bokeh model to show) and ``update(snapshot)``, which replaces
its data sources' data (from any thread in a notebook; from the document's callbacks in the
server). Names given to models (``name=``) are stable handles for tests.

- ``TaskGraphPlot``: the DAG of the newest tasks, a dot per task coloured by state, an edge from
  each task to those that took its results, a thick black ring on tasks run again to rebuild a
  lost object; hover or click a task for its function, sizes, timings, placement and error.
- ``LatencyPlot``: per function, the mean time in each phase (waiting for inputs, scheduling,
  queueing, input transfer, execution), and a histogram of end-to-end latency with p50/p90/p99
  for one function or all.
- ``SchedulerPlot``: per node, how many tasks ran there on leases kept by the node first
  asked and how many on leases the global scheduler placed there, by why the first node spilled
  them (resources, queue, locality); the lease requests each node kept and spilled; and the
  global scheduler's latest decisions with their reasons.
"""
from __future__ import annotations

import contextlib
import html
import threading

from bokeh.layouts import column, row
from bokeh.models import (ColumnDataSource, CustomJS, DataTable, Div, FactorRange, GraphRenderer,
                          HoverTool, Scatter, Select, StaticLayoutProvider, TableColumn, TapTool)
from bokeh.plotting import figure
from bokeh.transform import factor_cmap

from nbray.dashboard import data
from nbray.records import PHASES

PHASE_LABELS = {"inputs": "waiting for inputs", "scheduling": "scheduling",
                "queueing": "queueing", "transfer": "input transfer",
                "execution": "execution"}

_DETAILS_JS = """
const i = src.selected.indices;
if (i.length == 0) { div.text = hint; return; }
const d = src.data, k = i[0];
const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;');
const ms = (v) => v < 0 ? '?' : v.toFixed(3) + ' ms';
let out = '<b>' + esc(d.name[k]) + '</b> ' + esc(d.task_id[k]) + '<br>' +
  'state: ' + esc(d.state[k]) + ', attempts: ' + d.attempts[k] +
  ', reconstructed: ' + d.reconstructed[k] + '<br>' +
  'arguments: ' + d.arg_bytes[k] + ' B, result: ' + d.result_bytes[k] + ' B<br>' +
  'waited: ' + ms(d.waited_ms[k]) + ', ran: ' + ms(d.ran_ms[k]) +
  ' on node ' + esc(d.node[k]) + ', worker pid ' + d.worker[k] + '<br>' +
  'lease: ' + esc(d.placement[k] || 'kept local');
if (d.error[k]) { out += '<br><span style="color:#d62728">' + esc(d.error[k]) + '</span>'; }
div.text = out;
"""
_HINT = "<i>click a task for its details</i>"

#: one plot's changes at a time (a notebook refreshes from a thread of its own)
_LOCK = threading.Lock()


@contextlib.contextmanager
def _changing(layout):
    """Change a plot's models as one: under a lock, its document's events combined and sent
    when done (one message to the browser per refresh)."""
    with _LOCK:
        doc = layout.document
        if doc is not None:
            doc.hold("combine")
        try:
            yield
        finally:
            if doc is not None:
                doc.unhold()


class TaskGraphPlot:
    def __init__(self, max_tasks: int = data.MAX_TASKS, width: int = 760, height: int = 420):
        self.max_tasks = max_tasks
        nodes, edges, _ = data.graph(data.Snapshot())
        self.nodes = ColumnDataSource(nodes, name="task_graph_nodes")
        self.edges = ColumnDataSource(edges, name="task_graph_edges")
        self.graph = GraphRenderer(name="task_graph")
        self.graph.node_renderer.data_source = self.nodes
        self.graph.node_renderer.glyph = Scatter(
            size=11, line_width="width",
            fill_color=factor_cmap("state", list(data.STATE_COLOURS.values()),
                                   list(data.STATE_COLOURS)),
            line_color=factor_cmap("reconstructed", ["#000000", "#ffffff"], ["yes", "no"]))
        self.graph.edge_renderer.data_source = self.edges
        self.graph.edge_renderer.glyph.line_alpha = 0.35
        self.layout_provider = StaticLayoutProvider(graph_layout={})
        self.graph.layout_provider = self.layout_provider
        p = figure(width=width, height=height, title="task graph (newest tasks)",
                   name="task_graph_plot",
                   tools="pan,wheel_zoom,reset", toolbar_location="right")
        p.axis.visible = False
        p.grid.visible = False
        p.renderers.append(self.graph)
        p.add_tools(HoverTool(renderers=[self.graph.node_renderer], tooltips=[
            ("task", "@name (@state)"), ("ran (ms)", "@ran_ms"),
            ("waited (ms)", "@waited_ms"),
            ("node", "@node"), ("error", "@error")]), TapTool(renderers=[self.graph.node_renderer]))
        self.details = Div(text=_HINT, width=width, name="task_details")
        self.nodes.selected.js_on_change("indices", CustomJS(
            args=dict(src=self.nodes, div=self.details, hint=_HINT), code=_DETAILS_JS))
        self.status = Div(text="tasks: 0", name="task_graph_status")
        legend = " ".join(f"<span style='color:{c}'>&#9679;</span> {s}"
                          for s, c in data.STATE_COLOURS.items())
        self.layout = column(self.status, Div(text=legend + " &nbsp;&#9711; reconstructed"),
                             p, self.details)
        self.updates = 0

    def update(self, snap: data.Snapshot) -> None:
        nodes, edges, layout = data.graph(snap)
        with _changing(self.layout):
            old = self.nodes.data.get("task_id", [])
            chosen = [old[i] for i in self.nodes.selected.indices if i < len(old)]
            self.layout_provider.graph_layout = layout
            self.nodes.data = _columns(nodes)
            self.edges.data = _columns(edges)
            where = {t: i for i, t in enumerate(nodes["task_id"])}
            self.nodes.selected.indices = [where[t] for t in chosen if t in where]
            self._status(nodes, snap.notes.get("task_graph", ""))
        self.updates += 1

    def _status(self, nodes: dict, note: str = "") -> None:
        states = {}
        for s in nodes["state"]:
            states[s] = states.get(s, 0) + 1
        rebuilt = nodes["reconstructed"].count("yes")
        self.status.text = (f"tasks: {len(nodes['task_id'])} drawn (the newest, at most "
                            f"{self.max_tasks}): " + ", ".join(
                                f"{n} {s}" for s, n in sorted(states.items())) +
                            (f"; {rebuilt} reconstructed" if rebuilt else "") + _note(note))


class LatencyPlot:
    def __init__(self, width: int = 760):
        cols, hist, _ = data.latency(data.Snapshot())
        self.function: str | None = None
        self.phases = ColumnDataSource(cols, name="latency_phases")
        self.hist = ColumnDataSource(hist, name="latency_hist")
        self.bars = figure(width=width, height=220, y_range=FactorRange(factors=[]),
                           name="latency_bars",
                           title="mean time per phase, by function (ms)", tools="",
                           toolbar_location=None)
        self.bars.hbar_stack(list(PHASES), y="function", height=0.7, source=self.phases,
                             color=list(data.PHASE_COLOURS),
                             legend_label=[PHASE_LABELS[p] for p in PHASES])
        _legend_below(self.bars)
        self.bars.x_range.start = 0     # data ranges that start empty stay put otherwise
        self.histogram = figure(width=width, height=220, tools="", toolbar_location=None,
                                name="latency_histogram",
                                title="end-to-end latency (ms), submission to result",
                                x_axis_label="ms", y_axis_label="tasks")
        self.histogram.quad(top="count", bottom=0, left="left", right="right",
                            source=self.hist, fill_color="#6baed6", line_color="#ffffff")
        self.histogram.y_range.start = 0
        self.select = Select(title="function", value="all", options=["all"], width=240,
                             name="latency_function")
        self.select.on_change("value", self._chosen)
        self.status = Div(text="tasks: 0", name="latency_status")
        self.layout = column(row(self.select, self.status), self.bars, self.histogram)
        self.updates = 0

    def _chosen(self, attr, old, new) -> None:
        self.function = None if new == "all" else new

    def update(self, snap: data.Snapshot) -> None:
        cols, hist, pct = data.latency(snap, self.function)
        with _changing(self.layout):
            self._show(cols, hist, pct, snap.notes.get("latency", ""))
        self.updates += 1

    def _show(self, cols: dict, hist: dict, pct: dict, note: str = "") -> None:
        if list(self.bars.y_range.factors) != cols["function"]:
            self.bars.y_range.factors = list(cols["function"])
        self.phases.data = _columns(cols)
        self.hist.data = _columns(hist)
        options = ["all"] + cols["function"]
        if self.select.options != options:
            self.select.options = options
        which = self.function or "all functions"
        self.status.text = (f"{html.escape(which)}: {pct['count']} tasks" + (
            f", p50 {pct['p50']:.2f} ms, p90 {pct['p90']:.2f} ms, p99 {pct['p99']:.2f} ms"
            if pct["count"] else "") + _note(note))


class SchedulerPlot:
    def __init__(self, width: int = 760):
        per_node, table = data.placement(data.Snapshot())
        self.per_node = ColumnDataSource(per_node, name="scheduler_nodes")
        self.decisions = ColumnDataSource(table, name="scheduler_decisions")
        self.bars = figure(width=width, height=240, x_range=FactorRange(factors=[]),
                           name="scheduler_bars",
                           title="tasks by the node they ran on, and why they ran there",
                           tools="",
                           toolbar_location=None)
        self.bars.vbar_stack(list(data.PLACEMENTS), x="node", width=0.6, source=self.per_node,
                             color=list(data.PLACEMENT_COLOURS),
                             legend_label=list(data.PLACEMENTS))
        _legend_below(self.bars)
        self.bars.y_range.start = 0
        self.table = DataTable(source=self.decisions, width=width, height=200,
                               reorderable=False, index_position=None, columns=[
            TableColumn(field="time", title="time", width=90),
            TableColumn(field="from", title="spilled by", width=110),
            TableColumn(field="to", title="placed on", width=110),
            TableColumn(field="spilled because", title="spilled because", width=200),
            TableColumn(field="chosen because", title="chosen because", width=250)])
        self.status = Div(text="", name="scheduler_status")
        self.layout = column(self.status, self.bars,
                             Div(text="<b>the global scheduler's latest decisions</b>"),
                             self.table)
        self.updates = 0

    def update(self, snap: data.Snapshot) -> None:
        per_node, table = data.placement(snap)
        with _changing(self.layout):
            self._show(snap, per_node, table)
        self.updates += 1

    def _show(self, snap, per_node: dict, table: dict) -> None:
        if list(self.bars.x_range.factors) != per_node["node"]:
            self.bars.x_range.factors = list(per_node["node"])
        self.per_node.data = _columns(per_node)
        self.decisions.data = table
        note = snap.notes.get("scheduler", "")
        if note:            # the engine does not tell its decisions: no guess at them
            self.status.text = _note(note)[2:]
            return
        leases = ", ".join(f"{n['node_id'][:8]} kept {n['kept_local']} spilled {n['spilled']}"
                           for n in snap.scheduler.get("nodes", ()))
        pending = len(snap.scheduler.get("pending", ()))
        self.status.text = (f"lease requests per node: {leases or 'none yet'}" +
                            (f"; {pending} waiting for a node with the resources"
                             if pending else ""))


def _note(note: str) -> str:
    """What the engine does not tell, said after a plot's status."""
    return f"; <i>not shown: {html.escape(note)}</i>" if note else ""


def _legend_below(p) -> None:
    legend = p.legend[0]
    legend.orientation = "horizontal"
    p.add_layout(legend, "below")


def _columns(cols: dict) -> dict:
    """Numeric columns as numpy arrays: bokeh sends those as one binary buffer each, and
    lists item by item (a 2,000-task refresh took 0.24 s to encode as lists)."""
    import numpy as np
    out = {}
    for k, v in cols.items():
        out[k] = np.asarray(v) if v and all(type(x) in (int, float) for x in v) else v
    return out
