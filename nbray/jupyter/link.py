"""From a kernel: the address of its cluster's dashboard page on the Jupyter server that
started the kernel (None outside one). The link carries no token and no key: the browser that
opened the notebook is already logged in to that server."""
from __future__ import annotations

import os


def server_info() -> dict | None:
    """The running Jupyter server whose kernel this process is, from its info file."""
    parent = os.environ.get("JPY_PARENT_PID")
    if not parent or not parent.isdigit():
        return None
    try:
        from jupyter_server.serverapp import list_running_servers
        for info in list_running_servers():
            if info.get("pid") == int(parent):
                return info
    except Exception:               # no server files, or unreadable: no link
        return None
    return None


def dashboard_url(cluster_id: str) -> str | None:
    info = server_info()
    if info is None:
        return None
    from jupyter_server.utils import url_path_join
    return url_path_join(info["url"], "nbray", "dashboard", cluster_id) + "/"
