"""The dashboard's plots (bokeh), shared by the notebook widgets (``nbray.extension.widgets``)
and the bokeh server of ``nbray start --head --dashboard-port`` (``nbray.dashboard.app``):
``data`` makes their columns from the state API, ``plots`` draws them."""
