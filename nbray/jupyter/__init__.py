"""nbray inside Jupyter's own server: the clusters of this machine, their state as JSON and
the dashboard as a live page, under ``/nbray/``, behind Jupyter's authentication (no second
port, no second login).

    /nbray/api/clusters                          the clusters: this server's kernels' own and
                                                 those `nbray start` started here
    /nbray/api/clusters/<id>/<what>              tasks | actors | objects | nodes | summary
    /nbray/dashboard/<id>/                       the dashboard (the views of %nbray dashboard)

Installing nbray enables it (``jupyter-config/jupyter_server_config.d/nbray.json``);
``jupyter server extension list`` shows it.
"""


def _jupyter_server_extension_points():
    return [{"module": "nbray.jupyter"}]


def _load_jupyter_server_extension(serverapp):
    from nbray.jupyter import handlers
    handlers.setup(serverapp)
