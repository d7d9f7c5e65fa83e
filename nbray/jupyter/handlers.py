"""The routes of the Jupyter server extension. Every handler answers 403 to a request without
Jupyter's credentials (token or password) before it looks at any cluster; no answer holds a
cluster's key (the state comes from ``remote_state``, which never returns it)."""
from __future__ import annotations

import asyncio
import json

from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.websocket import WebSocketHandler

from nbray.errors import ClusterError
from nbray.runtime import remote_state

from nbray.jupyter.dashboards import Dashboards

CLUSTER_ID = r"([0-9a-f]{1,64})"


class _Base:
    def get_login_url(self):
        raise web.HTTPError(403)        # never a redirect to the login page: a plain no

    def kernel_pids(self) -> set:
        """The processes of this server's kernels: the drivers whose clusters it lists."""
        pids = set()
        km = self.kernel_manager
        for kid in km.list_kernel_ids():
            provisioner = getattr(km.get_kernel(kid), "provisioner", None)
            pid = getattr(provisioner, "pid", None)
            if pid:
                pids.add(pid)
        return pids

    def record(self, cid: str):
        for r in remote_state.heads(self.kernel_pids()):
            if r.session == cid:
                return r
        raise web.HTTPError(404, f"no cluster {cid} is known to this server")


class ClustersHandler(_Base, APIHandler):
    @web.authenticated
    async def get(self):
        records = remote_state.heads(self.kernel_pids())
        rows = await asyncio.gather(*(asyncio.to_thread(remote_state.info, r)
                                      for r in records))
        base = self.settings.get("base_url", "/")
        for row in rows:
            row["dashboard"] = url_path_join(base, "nbray/dashboard", row["id"]) + "/"
        self.finish(json.dumps(rows))


class StateHandler(_Base, APIHandler):
    @web.authenticated
    async def get(self, cid: str, what: str):
        record = self.record(cid)
        limit = self.get_argument("limit", None)
        try:
            limit = None if limit is None else int(limit)
        except ValueError:
            raise web.HTTPError(400, "limit is a number")
        try:
            rows = await asyncio.to_thread(remote_state.query, record, what, limit)
        except ClusterError as e:
            raise web.HTTPError(503, str(e))
        self.finish(json.dumps(rows, default=str))


class DashboardPage(_Base, JupyterHandler):
    """The dashboard's pages and files, from its bokeh server (one per cluster, started on
    the first visit)."""

    @web.authenticated
    async def get(self, cid: str, path: str):
        record = self.record(cid)
        if not path:
            return self.redirect(self.request.path + "/")
        response = await self.settings["nbray_dashboards"].fetch(record, self.request, path)
        self.set_status(response.code)
        for name in ("Content-Type", "Cache-Control", "ETag", "Last-Modified"):
            if name in response.headers:
                self.set_header(name, response.headers[name])
        self.finish(response.body)


class DashboardSocket(_Base, WebSocketMixin, WebSocketHandler, JupyterHandler):
    """The dashboard's websocket, relayed message by message to its bokeh server."""

    def set_default_headers(self):
        pass                            # JupyterHandler's headers are not for websockets

    async def get(self, cid: str):
        if self.current_user is None:
            raise web.HTTPError(403)
        self.cluster = self.record(cid)
        await super().get(cid)

    def select_subprotocol(self, subprotocols):
        self.protocols = list(subprotocols)     # bokeh's session token travels in them
        return subprotocols[0] if subprotocols else None

    async def open(self, cid: str):
        super().open()
        self.upstream = await self.settings["nbray_dashboards"].connect(
            self.cluster, self.request, getattr(self, "protocols", []), self._from_upstream)

    def _from_upstream(self, message):
        if message is None:
            self.close()
        elif self.ws_connection is not None:
            self.write_message(message, binary=isinstance(message, bytes))

    async def on_message(self, message):
        await self.upstream.write_message(message, binary=isinstance(message, bytes))

    def on_close(self):
        upstream = getattr(self, "upstream", None)
        if upstream is not None:
            upstream.close()


def setup(serverapp) -> None:
    base = serverapp.web_app.settings["base_url"]
    serverapp.web_app.settings["nbray_dashboards"] = Dashboards(base)

    def route(*parts):
        return url_path_join(base, "nbray", *parts)
    serverapp.web_app.add_handlers(".*$", [
        (route("api", "clusters"), ClustersHandler),
        (route("api", "clusters", CLUSTER_ID, f"({'|'.join(remote_state.KINDS)})"),
         StateHandler),
        (route("dashboard", CLUSTER_ID, "ws"), DashboardSocket),
        (route("dashboard", CLUSTER_ID) + "(/.*)?", DashboardPage),
    ])
    serverapp.log.info("nbray: the clusters and their dashboards are under %s", route(""))
