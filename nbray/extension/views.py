"""What the ``%nbray`` magics show: tables with an HTML face for Jupyter and a text one for a
terminal."""
from __future__ import annotations

import html
import sys
import time

from nbray.object_ref import ObjectRef


class Table:
    """Rows under a title, shown as HTML in Jupyter and as aligned text elsewhere."""

    def __init__(self, title: str, columns: list[str], rows: list[list], notes=()):
        self.title, self.columns, self.rows, self.notes = title, columns, rows, list(notes)

    def _repr_html_(self) -> str:
        head = "".join(f"<th style='text-align:left'>{html.escape(c)}</th>"
                       for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td style='text-align:left'>{html.escape(str(v))}"
                                        f"</td>" for v in row) + "</tr>" for row in self.rows)
        notes = "".join(f"<div>{html.escape(n)}</div>" for n in self.notes)
        return (f"<div><b>{html.escape(self.title)}</b><table><thead><tr>{head}</tr></thead>"
                f"<tbody>{body}</tbody></table>{notes}</div>")

    def __repr__(self) -> str:
        cells = [self.columns] + [[str(v) for v in row] for row in self.rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.columns))]
        lines = [self.title] + ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()
                                for r in cells]
        return "\n".join(lines + self.notes)


class Report:
    """Several tables, one after the other."""

    def __init__(self, *tables: Table):
        self.tables = tables

    def _repr_html_(self) -> str:
        return "".join(t._repr_html_() for t in self.tables)

    def __repr__(self) -> str:
        return "\n\n".join(repr(t) for t in self.tables)


class ClusterView(Table):
    """What ``%nbray init`` returns: the cluster it joined."""

    def __init__(self, ctx):
        info = [["address", ctx.address], ["session", ctx.session],
                ["workers", ctx.num_workers], ["resources", _amounts(ctx.resources,
                                                                     ctx.resources)],
                ["cluster", "embedded (it stops with this kernel)" if ctx.embedded else
                 "joined"]]
        if ctx.backend != "nbray":
            info.append(["backend", ctx.backend])
        super().__init__("nbray: connected", ["", ""], info)
        self.ctx = ctx


class Link:
    """A link, as an anchor in Jupyter (a new browser tab) and as the address elsewhere."""

    def __init__(self, text: str, url: str):
        self.text, self.url = text, url

    def _repr_html_(self) -> str:
        url = html.escape(self.url, quote=True)
        return (f"<div>{html.escape(self.text)}: <a href='{url}' target='_blank' "
                f"rel='noopener'>{url}</a></div>")

    def __repr__(self) -> str:
        return f"{self.text}: {self.url}"


def dashboard_link(url: str | None, name: str = "nbray dashboard"):
    """``%nbray dashboard --tab``: the dashboard page (on nbray's runtime the Jupyter
    server's, on Ray Ray's own), to open in a tab (a notebook cannot open a JupyterLab tab
    by itself, so it is a link)."""
    if url is None:
        return Table(f"nbray: no {name} this kernel can point to (on nbray's runtime: it "
                     "does not run under a Jupyter server with nbray's extension); "
                     "%nbray dashboard shows the dashboard here", [], [])
    return Link(f"{name} (opens in a new tab)", url)


def status() -> Report:
    import nbray
    if not nbray.is_initialized():
        return Report(Table("nbray: not initialized (%nbray init)", [], []))
    from nbray import api, backends
    mine = backends.notebook().summary()
    nodes = nbray.state.nodes()
    now = time.time()
    node_rows = [[n["node_id"][:8], n["host"], n["state"],
                  _amounts(n.get("resources_available", {}), n.get("resources", {})),
                  n.get("workers", "?"), _known(n.get("lease_queue", 0)),
                  _age(now - (n.get("registered_at") or now))] for n in nodes]
    actors = nbray.state.actors(detail=False)
    live = [a for a in actors if a["state"] != "dead"]
    rows = [["tasks unfinished", mine["tasks_unfinished"]],
            ["objects held (owned)",
             f"{mine['objects']} ({_known(mine['owned'])}), {_bytes(mine['owned_bytes'])}"],
            ["actors alive (of all known)", f"{len(live)} ({len(actors)})"]]
    unexposed = nbray.state.unexposed()     # what the engine does not tell, said
    return Report(
        Table(f"nbray cluster {api.context().session}", ["node", "host", "state",
                                                  "resources free / total", "workers",
                                                  "queue", "up"], node_rows,
              [unexposed["nodes"]] if "nodes" in unexposed else ()),
        Table("this notebook", ["", ""], rows,
              [unexposed["objects"]] if "objects" in unexposed else ()))


def refs(shell, release_history: bool = False) -> Table:
    """Every object this kernel holds a ref to, its size, and what keeps it alive."""
    import nbray
    if not nbray.is_initialized():
        return Table("nbray: not initialized", [], [])
    holders: dict[bytes, list] = {}
    released = 0
    out = shell.user_ns.get("Out", {})
    if release_history and isinstance(out, dict):
        for n in [n for n, v in out.items() if _refs_in(v)]:
            del out[n]
            shell.user_ns.pop(f"_{n}", None)
            released += 1
    for name, value in list(shell.user_ns.items()):
        if name.startswith("_") and not name[1:].isdigit() or name in ("Out", "In"):
            continue
        for where, ref in _refs_in(value, name):
            holders.setdefault(ref.binary(), []).append(where)
    tb = getattr(sys, "last_traceback", None)
    while tb is not None:           # IPython keeps the last error, and its frames' variables
        for name, value in list(tb.tb_frame.f_locals.items()):
            for where, ref in _refs_in(value, name):
                holders.setdefault(ref.binary(), []).append(
                    f"{where} in the last error's traceback (sys.last_traceback)")
        tb = tb.tb_next
    if isinstance(out, dict):
        for n, value in out.items():
            for where, ref in _refs_in(value, f"Out[{n}]"):
                holders.setdefault(ref.binary(), []).append(where + " (output history)")
    rows = []
    from nbray import backends
    for o in backends.notebook().held_objects():
        if o["refs"] <= 0 and not o["pinned_by_tasks"]:
            continue
        why = list(holders.get(bytes.fromhex(o["object_id"]), []))
        if o["pending_tasks"]:
            why.append("input of pending " + ", ".join(o["pending_tasks"][:3]))
        if o["borrowers"]:
            why.append(f"borrowed by {o['borrowers']} process(es)")
        if not why:
            why.append("a ref elsewhere (inside an object, a task, or a dropped variable "
                       "not yet collected)")
        rows.append([o["object_id"], _bytes(o["size"]), o["state"],
                     {True: "owned", False: "borrowed"}.get(o["owned"], "-"),
                     "; ".join(why)])
    rows.sort(key=lambda r: r[0])
    notes = [f"released {released} output-history entries holding refs"] if released else []
    return Table(f"nbray: {len(rows)} object(s) held by this kernel",
                 ["object", "size", "state", "", "kept alive by"], rows, notes)


def _refs_in(value, name: str = ""):
    """(where, ref) for refs in ``value`` or one level inside it."""
    if isinstance(value, ObjectRef):
        return [(name, value)]
    found = []
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value[:10_000]):
            if isinstance(v, ObjectRef):
                found.append((f"{name}[{i}]", v))
    elif isinstance(value, dict):
        for k, v in list(value.items())[:10_000]:
            if isinstance(v, ObjectRef):
                found.append((f"{name}[{k!r}]", v))
    return found


def _bytes(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _known(value) -> str:
    """A figure, or ``-`` where the engine does not tell it."""
    return "-" if value is None else value


def _amounts(free: dict, total: dict) -> str:
    """``CPU 1/2, memory 11.2/16.5 GB``: what is free of what there is."""
    def one(k):
        if k == "memory":           # logical bytes
            return f"memory {free.get(k, 0) / 2**30:.1f}/{total[k] / 2**30:.1f} GB"
        return f"{k} {free.get(k, 0):g}/{total[k]:g}"
    return ", ".join(one(k) for k in sorted(total)) or "-"


def _age(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"
