"""The dashboard outside Jupyter: a bokeh server showing the notebook's views (the nodes, tasks
and actors tables, the task graph, the latency phases, the scheduler's decisions), each browser
tab a document refreshed from the state API by its own periodic callback.

``nbray start --head --dashboard-port P`` runs it as a process of the cluster:
``python -m nbray.dashboard.app --session S --port P``. It joins the cluster as a driver,
announces ``READY <url>`` on ``--ready-fd``, and exits when the cluster's head does or on
SIGTERM (``nbray stop``).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

#: refreshes of one browser tab, at most (ms between them)
MIN_INTERVAL_MS = 200


def make_document(doc, interval_ms: int = 1000) -> dict:
    """Fill a bokeh document with the views and refresh them every ``interval_ms``; returns
    the views (for tests)."""
    from bokeh.layouts import column
    from bokeh.models import Div

    from nbray.dashboard.data import Snapshot
    from nbray.dashboard.plots import LatencyPlot, SchedulerPlot, TaskGraphPlot
    from nbray.extension.widgets import ActorPanel, ClusterPanel, TaskPanel

    tables = [ClusterPanel(), TaskPanel(), ActorPanel()]
    divs = [Div(text=t.html(), name=t.css) for t in tables]
    plots = [TaskGraphPlot(), LatencyPlot(), SchedulerPlot()]
    status = Div(text="", name="dashboard_status")

    def refresh():
        try:
            snap = Snapshot.take()
            for table, div in zip(tables, divs):
                div.text = table.html()
            for plot in plots:
                plot.update(snap)
            status.text = ""
        except Exception as e:          # the cluster is going: say so, and keep serving
            status.text = f"<i>{type(e).__name__}: {e}</i>"

    refresh()
    doc.add_periodic_callback(refresh, max(MIN_INTERVAL_MS, int(interval_ms)))
    doc.title = "nbray dashboard"
    doc.add_root(column(Div(text="<h2>nbray</h2>"), status, *divs,
                        *[p.layout for p in plots]))
    return {"tables": tables, "divs": divs, "plots": plots, "refresh": refresh}


def serve(host: str, port: int, interval_ms: int = 1000, ready=None, watch_pid: int = 0):
    """Run the bokeh server until SIGTERM or until ``watch_pid`` exits."""
    import psutil
    from bokeh.application import Application
    from bokeh.application.handlers.function import FunctionHandler
    from bokeh.server.server import Server

    app = Application(FunctionHandler(lambda doc: make_document(doc, interval_ms)))
    if not port:
        import socket
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
    origins = [f"{h}:{port}" for h in {host, "127.0.0.1", "localhost"}] if port else ["*"]
    server = Server({"/": app}, address=host, port=port, allow_websocket_origin=origins,
                    num_procs=1)
    server.start()
    url = f"http://{host}:{port}/"
    if ready is not None:
        ready(url)

    def check():
        if watch_pid and not psutil.pid_exists(watch_pid):
            server.io_loop.stop()
    from tornado.ioloop import PeriodicCallback
    PeriodicCallback(check, 500).start()
    loop = server.io_loop.asyncio_loop
    signal.signal(signal.SIGTERM, lambda *_: loop.call_soon_threadsafe(server.io_loop.stop))
    server.io_loop.start()
    server.stop()


def main(argv=None) -> None:
    import nbray
    from nbray.runtime import cluster

    ap = argparse.ArgumentParser()
    ap.add_argument("--session", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--interval-ms", type=int, default=1000)
    ap.add_argument("--watch-pid", type=int, default=0)
    ap.add_argument("--ready-fd", type=int)
    args = ap.parse_args(argv)
    key = os.environ.pop("NBRAY_KEY", None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    nbray.init(address=args.session, key=key)
    try:
        serve(args.host, args.port, args.interval_ms, watch_pid=args.watch_pid,
              ready=(lambda url: cluster.announce_ready(args.ready_fd, url))
              if args.ready_fd is not None else None)
    finally:
        nbray.shutdown()
    sys.exit(0)


if __name__ == "__main__":
    main()
