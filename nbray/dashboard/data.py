"""What the plots draw, made from the state API. Pure: no sockets, no bokeh.

``Snapshot.take()`` reads the cluster once per refresh (the newest ``max_tasks`` task records,
the reconstructions, the nodes and the scheduler's decisions); ``graph``, ``latency`` and
``placement`` turn it into the columns of the plots. However long the run, a refresh reads and
draws at most ``max_tasks`` tasks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from nbray.records import PHASES, phases

#: tasks drawn at most (the newest)
MAX_TASKS = 2000
#: a layer of the task graph taller than this wraps into several columns
LAYER_ROWS = 40

_ENDED = ("finished", "failed", "cancelled")
STATE_COLOURS = {"finished": "#2ca02c", "failed": "#d62728", "cancelled": "#7f7f7f",
                 "running": "#ff7f0e", "queued": "#bcbd22", "waiting": "#9ecae1"}
PHASE_COLOURS = ("#c6dbef", "#fdae6b", "#fdd0a2", "#9e9ac8", "#31a354")
#: why a task's worker lease was where it was (``placement`` of a task record)
PLACEMENTS = ("kept local", "spilled: resources", "spilled: queue", "spilled: locality",
              "not told by the engine")
PLACEMENT_COLOURS = ("#2ca02c", "#d62728", "#ff7f0e", "#1f77b4", "#bdbdbd")


@dataclass
class Snapshot:
    tasks: list = field(default_factory=list)
    reconstructed: set = field(default_factory=set)     # task ids run again to rebuild
    nodes: list = field(default_factory=list)
    scheduler: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)           # nbray.state.unexposed()

    @classmethod
    def take(cls, max_tasks: int = MAX_TASKS, *, scheduler: bool = True) -> "Snapshot":
        """The newest ``max_tasks`` tasks: the unfinished ones (up to half of them), then
        the newest of those that ended."""
        import nbray
        rebuilt = nbray.state.events(kinds="task_reconstructed", limit=max_tasks)
        rows = nbray.state.tasks(limit=max_tasks)
        unfinished = [r for r in rows if r["state"] not in _ENDED]
        unfinished = unfinished[len(unfinished) - max(1, max_tasks // 2):] \
            if len(unfinished) > max(1, max_tasks // 2) else unfinished
        room = max_tasks - len(unfinished)
        ended = [r for r in rows if r["state"] in _ENDED]
        ended = ended[len(ended) - room:] if len(ended) > room else ended
        return cls(tasks=ended + unfinished,
                   reconstructed={e["task_id"] for e in rebuilt},
                   nodes=nbray.state.nodes(),
                   scheduler=nbray.state.scheduler() if scheduler else {},
                   notes=nbray.state.unexposed())


# ---- the task graph --------------------------------------------------------------------------
def graph(snap: Snapshot) -> tuple[dict, dict, dict]:
    """(node columns, edge columns, layout {index: (x, y)}) of the DAG of the snapshot's
    tasks: a task once (its newest record), an edge from each task to those that took its
    results, x its depth in the DAG (wide layers wrap), y its place in its layer."""
    newest: dict = {}
    for r in snap.tasks:
        newest[r["task_id"]] = r            # oldest first: a rerun's record wins
    ids = list(newest)
    index = {tid: i for i, tid in enumerate(ids)}
    depth = [0] * len(ids)
    starts, ends = [], []
    for i, tid in enumerate(ids):
        for dep in newest[tid].get("deps") or ():
            j = index.get(dep)
            if j is None or j == i:
                continue
            starts.append(j)
            ends.append(i)
            if j < i:                       # deps were submitted first
                depth[i] = max(depth[i], depth[j] + 1)
    layers: dict = {}
    for i, d in enumerate(depth):
        layers.setdefault(d, []).append(i)
    layout = {}
    for d, members in layers.items():
        cols = math.ceil(len(members) / LAYER_ROWS)
        for k, i in enumerate(members):
            layout[i] = (d + 0.8 * (k // LAYER_ROWS) / cols, -(k % LAYER_ROWS))
    nodes = {"index": list(range(len(ids))), "task_id": ids, "name": [], "state": [],
             "width": [], "reconstructed": [], "node": [],
             "worker": [], "attempts": [], "arg_bytes": [], "result_bytes": [], "ran_ms": [],
             "waited_ms": [], "error": [], "placement": []}
    for tid in ids:
        r = newest[tid]
        rebuilt = tid in snap.reconstructed
        ran = (r["ended"] - r["started"]) if r.get("ended") and r.get("started") else None
        waited = (r["started"] - r["submitted"]) if r.get("started") else None
        nodes["name"].append(r["name"])
        nodes["state"].append(r["state"])
        nodes["width"].append(3 if rebuilt else 1)
        nodes["reconstructed"].append("yes" if rebuilt else "no")
        nodes["node"].append((r.get("node_id") or "")[:8])
        nodes["worker"].append(r.get("worker_pid") or 0)
        nodes["attempts"].append(r.get("attempts", 0))
        nodes["arg_bytes"].append(r.get("arg_bytes", 0))
        nodes["result_bytes"].append(r.get("result_bytes", 0))
        nodes["ran_ms"].append(_ms(ran))
        nodes["waited_ms"].append(_ms(waited))
        nodes["error"].append(r.get("error") or "")
        placed = r.get("placement", "")
        nodes["placement"].append("not told by the engine" if placed is None else placed or "")
    edges = {"start": starts, "end": ends}
    return nodes, edges, layout


# ---- latency ---------------------------------------------------------------------------------
def latency(snap: Snapshot, function: str | None = None, bins: int = 30
            ) -> tuple[dict, dict, dict]:
    """(phase columns: per function the mean seconds of each of ``PHASES`` in ms,
    histogram columns of the end-to-end latency in ms of ``function`` (all when None),
    percentiles {p50, p90, p99, count} of that histogram)."""
    per: dict = {}
    totals = []
    for r in snap.tasks:
        ph = phases(r)
        if ph is None:
            continue
        acc = per.setdefault(r["name"], [0.0] * len(PHASES) + [0])
        for k, name in enumerate(PHASES):
            acc[k] += ph[name]
        acc[-1] += 1
        if function is None or r["name"] == function:
            end = r.get("returned") or r["ended"]      # the owner's clock, as submitted
            totals.append(max(0.0, 1000 * (end - r["submitted"])))
    names = sorted(per)
    cols: dict = {"function": names, "count": [per[n][-1] for n in names]}
    for k, name in enumerate(PHASES):
        cols[name] = [round(1000 * per[n][k] / per[n][-1], 3) for n in names]
    hist = {"left": [], "right": [], "count": []}
    pct = {"count": len(totals)}
    if totals:
        totals.sort()
        hi = totals[min(len(totals) - 1, int(0.99 * len(totals)))] or totals[-1] or 1.0
        width = hi / bins
        counts = [0] * bins
        for t in totals:
            counts[min(bins - 1, int(t / width)) if width > 0 else 0] += 1
        hist = {"left": [i * width for i in range(bins)],
                "right": [(i + 1) * width for i in range(bins)], "count": counts}
        for q in (50, 90, 99):
            pct[f"p{q}"] = round(totals[min(len(totals) - 1, int(q / 100 * len(totals)))], 3)
    return cols, hist, pct


# ---- the hybrid scheduler --------------------------------------------------------------------
def placement_kind(placement: str) -> str:
    """One of ``PLACEMENTS`` for a task record's ``placement`` (None: the engine does not
    tell)."""
    if placement is None:
        return PLACEMENTS[-1]
    if not placement:
        return PLACEMENTS[0]
    reason = placement.split(":", 1)[0].strip()
    return f"spilled: {reason}" if f"spilled: {reason}" in PLACEMENTS else "spilled: queue"


def placement(snap: Snapshot) -> tuple[dict, dict]:
    """(per node the snapshot's tasks ran on, how many ran on a lease kept by the node first
    asked and how many on one the global scheduler placed there, by why the first node
    spilled it; the newest decisions of the global scheduler as table columns)."""
    alias = {n["node_id"]: f"{n['node_id'][:8]} {n.get('host', '')}".strip()
             for n in snap.nodes}
    counts: dict = {}
    for r in snap.tasks:
        if r["state"] not in ("finished", "failed") or not r.get("node_id"):
            continue
        node = alias.get(r["node_id"], r["node_id"][:8])
        row = counts.setdefault(node, [0] * len(PLACEMENTS))
        row[PLACEMENTS.index(placement_kind(r.get("placement", "")))] += 1
    names = sorted(counts)
    per_node = {"node": names}
    for k, kind in enumerate(PLACEMENTS):
        per_node[kind] = [counts[n][k] for n in names]
    decisions = list(snap.scheduler.get("decisions", ()))[-200:][::-1]     # newest first
    table = {"time": [_clock(d["time"]) for d in decisions],
             "from": [alias.get(d["origin"], d["origin"][:8]) for d in decisions],
             "to": [alias.get(d["node"], d["node"][:8]) for d in decisions],
             "spilled because": [d["spilled_because"] for d in decisions],
             "chosen because": [d["why"] for d in decisions]}
    return per_node, table


def _ms(seconds) -> float:
    """Milliseconds, -1 when not known (numbers travel to the browser as one binary
    buffer; text would be encoded item by item)."""
    return -1.0 if seconds is None else round(1000 * seconds, 3)


def _clock(t: float) -> str:
    import time
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"
