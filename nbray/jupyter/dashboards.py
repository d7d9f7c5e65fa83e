"""The dashboards the Jupyter server shows: one bokeh server process per cluster (the app of
``nbray start --dashboard-port``), started on the first visit, listening on a Unix socket in
the cluster's own 0700 run directory, so only this user's processes reach it; the browser
reaches it only through the server's authenticated routes. Each exits with its cluster's head
or with the Jupyter server."""
from __future__ import annotations

import asyncio
import os
import socket

from jupyter_server.utils import url_path_join
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.netutil import Resolver
from tornado.websocket import websocket_connect

from nbray.runtime import cluster

_HOST = "nbray-dashboard"           # a name for the socket, in the URLs sent to it


class _SocketResolver(Resolver):
    """Every host name resolves to one Unix socket."""

    def initialize(self, path: str):
        self.path = path

    async def resolve(self, host, port, family=socket.AF_UNSPEC):
        return [(socket.AF_UNIX, self.path)]


class Dashboards:
    def __init__(self, base_url: str):
        self.base_url = base_url
        self.running: dict = {}         # cluster id -> (Popen, socket path)
        self._lock = asyncio.Lock()

    def prefix(self, cid: str) -> str:
        return url_path_join(self.base_url, "nbray", "dashboard", cid)

    async def socket_for(self, record) -> str:
        async with self._lock:
            proc, path = self.running.get(record.session, (None, ""))
            if proc is None or proc.poll() is not None:
                path = os.path.join(record.rundir, f"dashboard-{os.getpid()}.sock")
                proc = await asyncio.to_thread(self._start, record, path)
                self.running[record.session] = (proc, path)
            return path

    def _start(self, record, path: str):
        try:
            os.unlink(path)             # of a dashboard that died
        except FileNotFoundError:
            pass
        proc, _ = cluster.spawn_dashboard(
            record, ["--unix-socket", path, "--prefix", self.prefix(record.session)],
            os.path.join(record.rundir, f"dashboard-{os.getpid()}.log"),
            watch_pids=(os.getpid(),))
        return proc

    async def fetch(self, record, request, path: str):
        sock = await self.socket_for(record)
        client = AsyncHTTPClient(force_instance=True, resolver=_SocketResolver(path=sock))
        url = f"http://{_HOST}{self.prefix(record.session)}{path}"
        try:
            return await client.fetch(url + (f"?{request.query}" if request.query else ""),
                                      headers={"Host": request.host}, raise_error=False,
                                      follow_redirects=False, request_timeout=60)
        finally:
            client.close()

    async def connect(self, record, request, protocols: list, on_message):
        sock = await self.socket_for(record)
        url = f"ws://{_HOST}{self.prefix(record.session)}/ws"
        req = HTTPRequest(url + (f"?{request.query}" if request.query else ""),
                          headers={"Host": request.host,
                                   "Origin": request.headers.get("Origin", "")})
        return await websocket_connect(req, resolver=_SocketResolver(path=sock),
                                       subprotocols=protocols or None,
                                       on_message_callback=on_message)
