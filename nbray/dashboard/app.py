"""The dashboard outside Jupyter: a bokeh server showing the notebook's views (the nodes, tasks
and actors tables, the task graph, the latency phases, the scheduler's decisions). One thread
reads the cluster every second (``Feed``); each browser tab is a document that draws the newest
read.

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
import threading

#: how often a browser tab looks for a newer snapshot (ms)
TAB_POLL_MS = 200


class Feed:
    """One read of the cluster for every browser tab: a thread of its own takes a snapshot
    and the tables every ``interval_s``; the tabs' callbacks, in the server's event loop, only
    draw the newest one (so a slow or dead head never blocks the loop)."""

    def __init__(self, interval_s: float = 1.0):
        from nbray.extension.widgets import ActorPanel, ClusterPanel, TaskPanel
        self.interval_s = max(0.2, interval_s)
        self.tables = [ClusterPanel(), TaskPanel(), ActorPanel()]
        self.latest: tuple = (0, None, ["" for _ in self.tables], "")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nbray-dashboard-feed",
                                        daemon=True)

    def start(self) -> "Feed":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)      # a daemon: one stuck on a dead head is left

    def read(self) -> None:
        from nbray.dashboard.data import Snapshot
        version = self.latest[0] + 1
        try:
            snap = Snapshot.take()
            self.latest = (version, snap, [t.html() for t in self.tables], "")
        except Exception as e:          # the cluster is going: say so, and keep serving
            self.latest = (version, self.latest[1], self.latest[2], f"{type(e).__name__}: {e}")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.read()
            self._stop.wait(self.interval_s)


def make_document(doc, feed: Feed) -> dict:
    """Fill a bokeh document with the views, drawn from ``feed`` whenever it has a newer
    snapshot; returns the views (for tests)."""
    from bokeh.layouts import column
    from bokeh.models import Div

    from nbray.dashboard.plots import LatencyPlot, SchedulerPlot, TaskGraphPlot

    divs = [Div(text="", name=t.css) for t in feed.tables]
    plots = [TaskGraphPlot(), LatencyPlot(), SchedulerPlot()]
    status = Div(text="", name="dashboard_status")
    seen = [0]

    def draw():
        version, snap, tables, error = feed.latest
        if version == seen[0]:
            return
        seen[0] = version
        status.text = f"<i>{error}</i>" if error else ""
        for div, text in zip(divs, tables):
            div.text = text
        if snap is not None:
            for plot in plots:
                plot.update(snap)

    draw()
    doc.add_periodic_callback(draw, TAB_POLL_MS)
    doc.title = "nbray dashboard"
    doc.add_root(column(Div(text="<h2>nbray</h2>"), status, *divs,
                        *[p.layout for p in plots]))
    return {"divs": divs, "plots": plots, "draw": draw}


def serve(host: str, port: int, interval_ms: int = 1000, ready=None, watch_pids=(),
          unix_socket: str = "", prefix: str = ""):
    """Run the bokeh server until SIGTERM or until one of ``watch_pids`` exits. With ``unix_socket``
    it listens there instead (for the Jupyter server, which serves it under ``prefix`` to the
    browsers it has authenticated)."""
    import psutil
    from bokeh.application import Application
    from bokeh.application.handlers.function import FunctionHandler
    from bokeh.server.server import Server

    feed = Feed(interval_ms / 1000).start()
    app = Application(FunctionHandler(lambda doc: make_document(doc, feed)))
    if unix_socket:
        # only this user reaches the socket (a 0700 directory); the Jupyter server in front
        # of it checks the browser's credentials and origin, so any origin may pass here
        server = Server({"/": app}, unix_socket=unix_socket, prefix=prefix,
                        allow_websocket_origin=["*"], num_procs=1)
        url = f"unix:{unix_socket}"
    else:
        server, url = _tcp_server(app, host, port)
    server.start()
    if ready is not None:
        ready(url)

    def check():
        if any(not psutil.pid_exists(pid) for pid in watch_pids):
            server.io_loop.stop()
    from tornado.ioloop import PeriodicCallback
    PeriodicCallback(check, 500).start()
    loop = server.io_loop.asyncio_loop
    signal.signal(signal.SIGTERM, lambda *_: loop.call_soon_threadsafe(server.io_loop.stop))
    server.io_loop.start()
    server.stop()
    feed.stop()


def _tcp_server(app, host: str, port: int) -> tuple:
    import socket

    from bokeh.server.server import Server
    if not port:                        # a free port (bokeh needs a number)
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
    wildcard = host in ("0.0.0.0", "::", "")
    # a browser names the page by the host it used: on every interface that is any name
    origins = ["*"] if wildcard else [f"{h}:{port}" for h in {host, "127.0.0.1", "localhost"}]
    server = Server({"/": app}, address=None if wildcard else host, port=port,
                    allow_websocket_origin=origins, num_procs=1)
    name = socket.getfqdn() if wildcard else host
    return server, f"http://{f'[{name}]' if ':' in name else name}:{port}/"


def main(argv=None) -> None:
    import nbray
    from nbray.runtime import cluster

    ap = argparse.ArgumentParser()
    ap.add_argument("--session", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--interval-ms", type=int, default=1000)
    ap.add_argument("--watch-pid", type=int, action="append", default=[],
                    help="exit when this process does (repeatable)")
    ap.add_argument("--ready-fd", type=int)
    ap.add_argument("--unix-socket", default="", help="listen here instead of --host/--port")
    ap.add_argument("--prefix", default="", help="the URL path it is served under")
    args = ap.parse_args(argv)
    key = os.environ.pop("NBRAY_KEY", None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    nbray.init(address=args.session, key=key)
    try:
        serve(args.host, args.port, args.interval_ms, watch_pids=args.watch_pid,
              ready=(lambda url: cluster.announce_ready(args.ready_fd, url))
              if args.ready_fd is not None else None,
              unix_socket=args.unix_socket, prefix=args.prefix)
    finally:
        nbray.shutdown()
    sys.exit(0)


if __name__ == "__main__":
    main()
