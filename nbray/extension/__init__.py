"""The IPython extension: ``%load_ext nbray``.

Loading it registers the magics (``magics.py``), puts ``remote``, ``get``, ``put`` and ``wait``
in the user namespace, and wraps every cell (``notebook.py``): remote output lands in the cell
that started the work, an interrupt cancels that cell's remote work, remote tracebacks are
highlighted, and refs stay out of the output history. ``%unload_ext nbray`` undoes all of it;
loading twice is harmless.
"""
from __future__ import annotations

#: names put in the user namespace
NAMES = ("remote", "get", "put", "wait")
_MISSING = object()
_loaded: dict = {}      # id(shell) -> (session, magics, {name: previous value})


def load_ipython_extension(shell) -> None:
    if id(shell) in _loaded:
        return
    import nbray
    from nbray.extension.magics import NbrayMagics
    from nbray.extension.notebook import NotebookSession
    magics = NbrayMagics(shell)
    shell.register_magics(magics)
    previous = {name: shell.user_ns.get(name, _MISSING) for name in NAMES}
    for name in NAMES:
        shell.user_ns[name] = getattr(nbray, name)
    session = NotebookSession(shell)
    session.start()
    _loaded[id(shell)] = (session, magics, previous)


def unload_ipython_extension(shell) -> None:
    entry = _loaded.pop(id(shell), None)
    if entry is None:
        return
    import nbray
    session, magics, previous = entry
    session.stop()
    registry = shell.magics_manager.magics
    for kind, names in magics.magics.items():
        for name in names:
            registry[kind].pop(name, None)
    shell.magics_manager.registry.pop(type(magics).__name__, None)
    for name, value in previous.items():
        if shell.user_ns.get(name) is getattr(nbray, name):
            if value is _MISSING:
                del shell.user_ns[name]
            else:
                shell.user_ns[name] = value
