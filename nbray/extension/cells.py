"""A notebook cell as a remote task: which names it reads, and how it runs on a worker.

The driver finds the names the cell reads (``names_read``) and passes those the user namespace
holds as the task's arguments, so a variable holding an ``ObjectRef`` is an input the task waits
for, and receives as its value. On the worker ``run_cell`` executes the cell in a fresh
namespace made of those values, with the cell's source registered so tracebacks show its lines,
and returns either the named outputs or the value of the cell's last expression, as IPython
would display it.

``CellNamespace`` is the actor behind ``%%remote --actor NAME``: a namespace that lives on the
cluster, so that successive cells share state there, as in a remote kernel.

``run_setup`` runs a ``%%remote --all`` cell on a worker: in a namespace the worker keeps for
that notebook (its driver), which the notebook's later ``%%remote`` cells on that worker start
from, so that what a setup imports or defines is there for them.
"""
from __future__ import annotations

import ast
import builtins
import linecache
import symtable
import sys

#: names a cell may read that never travel: IPython's own, and the notebook's history
HIDDEN = frozenset({"In", "Out", "_", "__", "___", "_i", "_ii", "_iii", "_oh", "_ih", "_dh",
                    "get_ipython", "exit", "quit", "__builtins__", "__name__", "__doc__",
                    "__spec__", "__loader__", "__package__", "__builtin__"})


def names_read(code: str) -> list[str]:
    """The global names a cell's code reads, at its top level or from inside its functions,
    classes and comprehensions (their own parameters and locals are not), sorted."""
    found: set[str] = set()
    todo = [symtable.symtable(code, "<cell>", "exec")]
    while todo:
        table = todo.pop()
        top = table.get_type() == "module"
        for sym in table.get_symbols():
            if sym.is_referenced() and (top or sym.is_global() or sym.is_free()):
                found.add(sym.get_name())
        todo.extend(table.get_children())
    return sorted(found)


def inputs_from(code: str, user_ns: dict) -> tuple[list[str], list]:
    """The names the cell reads that the namespace holds (not builtins nor IPython's own),
    and their values: (names, values)."""
    names = []
    for name in names_read(code):
        if name in HIDDEN or (name.startswith("_") and name[1:].isdigit()):
            continue
        if name in user_ns:
            names.append(name)
    return names, [user_ns[n] for n in names]


def compile_cell(code: str, filename: str):
    """(body, last): the cell's statements, and its last expression (None if it ends with a
    statement, or with a ``;`` that hides it, as in IPython)."""
    tree = ast.parse(code, filename, "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr) and not code.rstrip().endswith(";"):
        last = ast.Expression(tree.body.pop().value)
        last = compile(last, filename, "eval")
    return compile(tree, filename, "exec"), last


#: driver address -> the namespace its setups made on this worker (the newest few drivers)
SETUP_NS: dict[str, dict] = {}
SETUP_DRIVERS_KEPT = 16


def _driver() -> str:
    from nbray import backends
    return backends.notebook().worker_driver()


def run_cell(code: str, filename: str, names: list, outputs: list, *values):
    """Run a cell in a namespace of its inputs (a task's body), on top of what the
    notebook's setups defined here. Returns the named outputs (a tuple when there are
    several) or the value of its last expression."""
    ns = dict(SETUP_NS.get(_driver(), ()))
    ns.update({"__name__": "__main__", "__builtins__": builtins})
    ns.update(zip(names, values))
    return _run_in(ns, code, filename, outputs)


def run_setup(code: str, filename: str, names: list, *values):
    """Run a ``%%remote --all`` cell in this worker's namespace for its notebook."""
    driver = _driver()
    ns = SETUP_NS.setdefault(driver, {"__name__": "__main__", "__builtins__": builtins})
    extra = len(SETUP_NS) - SETUP_DRIVERS_KEPT      # notebooks long gone: the oldest go
    for old in [d for d in SETUP_NS if d != driver][:max(0, extra)]:
        del SETUP_NS[old]
    ns.update(zip(names, values))
    return _run_in(ns, code, filename, [])


def _run_in(ns: dict, code: str, filename: str, outputs: list):
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    body, last = compile_cell(code, filename)
    exec(body, ns)      # a traceback starts in the cell: the worker hides this file's frames
    value = eval(last, ns) if last is not None else None
    if not outputs:
        return value
    missing = [o for o in outputs if o not in ns]
    if missing:
        raise NameError(f"the cell did not define {', '.join(missing)} (asked for by -o)")
    values = tuple(ns[o] for o in outputs)
    return values if len(values) > 1 else values[0]


class CellNamespace:
    """A namespace on the cluster: ``%%remote --actor NAME`` cells run in it, one at a time."""

    def __init__(self):
        self.ns = {"__name__": "__main__", "__builtins__": builtins}
        self.cells = 0

    def run(self, code: str, filename: str, names: list, outputs: list, *values):
        for name, value in zip(names, values):      # what lives here wins over the notebook's
            self.ns.setdefault(name, value)
        self.cells += 1
        return _run_in(self.ns, code, filename, outputs)

    def names(self) -> list[str]:
        return sorted(n for n in self.ns if not n.startswith("__"))

    def __nbray_state__(self) -> dict:
        return {"cells": self.cells, "names": self.names()[:50],
                "python": sys.version.split()[0]}
