"""The magics: ``%nbray`` (init, status, shutdown, refs, timeline, dashboard) and ``%%remote``.

``%%remote`` runs the cell on the cluster as a task (see ``cells.py``): the names it reads come
from the notebook's namespace (a ref is an input, and arrives as its value), ``-o a,b`` brings
names back, ``--async`` brings refs back at once, ``--actor NAME`` runs it in a namespace that
lives on the cluster, and resource flags place it.
"""
from __future__ import annotations

import json
import shlex

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

import nbray
from nbray import backends
from nbray.extension import cells, views


@magics_class
class NbrayMagics(Magics):

    # ---- %nbray --------------------------------------------------------------------------
    @line_magic
    def nbray(self, line: str = ""):
        """%nbray init|status|shutdown|refs|timeline|dashboard ...  (%nbray help)"""
        words = shlex.split(line)
        command, rest = (words[0], words[1:]) if words else ("status", [])
        handler = getattr(self, f"_cmd_{command}", None)
        if handler is None:
            raise UsageError(f"%nbray: unknown command {command!r}; commands: "
                             f"{', '.join(_COMMANDS)}")
        return handler(rest)

    def _cmd_help(self, args):
        print(__doc__.strip() + "\n\n" + "\n".join(f"  %nbray {c:<10} {h}"
                                                   for c, h in _COMMANDS.items()))

    def _cmd_init(self, args):
        opts = _parse(_INIT, args)
        kwargs = {}
        if opts.address:
            kwargs["address"] = opts.address
        if opts.workers is not None:
            kwargs["num_workers"] = opts.workers
        if opts.num_cpus is not None:
            kwargs["num_cpus"] = opts.num_cpus
        if opts.backend is not None:
            kwargs["backend"] = opts.backend
        if nbray.is_initialized():
            print("nbray: already initialized (%nbray shutdown first to start another)")
            return None
        ctx = nbray.init(**kwargs)

        session = _session(self.shell)
        if session is not None:         # this cell's work is this cell's on the new engine
            hooks = backends.notebook()
            hooks.route_output(session.write)
            hooks.begin_cell(session.scope)
        return views.ClusterView(ctx)

    def _cmd_status(self, args):
        _parse(_NOARGS, args, "status")
        report = views.status()
        hooks = backends.notebook()
        url = hooks.dashboard_url()
        if url:
            print(f"{hooks.dashboard_name}: {url}")
        return report

    def _cmd_shutdown(self, args):
        _parse(_NOARGS, args, "shutdown")
        if not nbray.is_initialized():
            print("nbray: not initialized")
            return
        nbray.shutdown()
        print("nbray: shut down")

    def _cmd_refs(self, args):
        opts = _parse(_REFS, args, "refs")
        return views.refs(self.shell, release_history=opts.release_history)

    def _cmd_timeline(self, args):
        if len(args) != 1:
            raise UsageError("usage: %nbray timeline FILE  (a Chrome trace: open it in "
                             "https://ui.perfetto.dev or chrome://tracing)")
        if not nbray.is_initialized():
            raise UsageError("%nbray timeline: not initialized (%nbray init)")
        trace = nbray.timeline(args[0])
        n = sum(1 for e in trace["traceEvents"] if e["ph"] == "X")
        print(f"nbray: wrote {n} task(s) to {args[0]} (open it in https://ui.perfetto.dev or "
              f"chrome://tracing)")

    def _cmd_dashboard(self, args):
        opts = _parse(_DASHBOARD, args, "dashboard")
        if not nbray.is_initialized():
            raise UsageError("%nbray dashboard: not initialized (%nbray init)")
        if opts.tab:
            hooks = backends.notebook()
            return views.dashboard_link(hooks.dashboard_url(), hooks.dashboard_name)
        from nbray.extension.widgets import Dashboard
        return Dashboard(opts.interval).start()

    # ---- %%remote ------------------------------------------------------------------------
    @magic_arguments()
    @argument("-o", "--outputs", default="",
              help="names the cell defines to bring back into the notebook: a,b")
    @argument("--async", dest="run_async", action="store_true",
              help="return at once; the names given with -o are bound to refs")
    @argument("--all", action="store_true",
              help="run once on every worker, and on every worker started later (setup)")
    @argument("--timeout", type=float, default=60.0,
              help="--all: how long to wait for every worker to report (seconds)")
    @argument("--actor", default="",
              help="run in the namespace kept by the named actor NAME (created if missing)")
    @argument("--num-cpus", type=float, default=None, help="CPUs the cell needs")
    @argument("--num-gpus", type=float, default=None, help="GPUs the cell needs")
    @argument("--resources", default=None, help='custom resources, as JSON: \'{"sim": 1}\'')
    @cell_magic
    def remote(self, line: str, cell: str):
        """Run this cell on the cluster as a task."""
        opts = parse_argstring(self.remote, line)
        if opts.all and (opts.actor or opts.outputs or opts.run_async):
            raise UsageError("%%remote --all runs a setup on every worker: it cannot be "
                             "combined with --actor, -o or --async")
        outputs = [o.strip() for o in opts.outputs.split(",") if o.strip()]
        bad = [o for o in outputs if not o.isidentifier()]
        if bad:
            raise UsageError(f"%%remote -o: not names: {', '.join(bad)}")
        resources = {}
        if opts.resources:
            raw = opts.resources
            if len(raw) > 1 and raw[0] == raw[-1] and raw[0] in "'\"":
                raw = raw[1:-1]         # the quotes a shell would have taken off
            try:
                resources = json.loads(raw)
            except ValueError as e:
                raise UsageError(f"%%remote --resources: not JSON: {e}") from None
            if not isinstance(resources, dict):
                raise UsageError("%%remote --resources: give a JSON object, e.g. '{\"sim\": 1}'")
        code = self.shell.transform_cell(cell)
        try:
            names, values = cells.inputs_from(code, self.shell.user_ns)
        except SyntaxError as e:
            raise UsageError(f"%%remote: the cell is not valid Python: {e}") from None
        n = self.shell.execution_count
        filename = f"<remote cell [{n}]>"
        if opts.all:
            return _run_everywhere(code, filename, names, values, opts.timeout)
        options = {"num_returns": max(1, len(outputs))}
        if opts.num_cpus is not None:
            options["num_cpus"] = opts.num_cpus
        if opts.num_gpus is not None:
            options["num_gpus"] = opts.num_gpus
        if resources:
            options["resources"] = resources
        if opts.actor:
            handle = _namespace_actor(opts.actor, options)
            refs = handle.run.options(num_returns=options["num_returns"]).remote(
                code, filename, names, outputs, *values)
        else:
            task = nbray.remote(name=f"cell[{n}]", **options)(cells.run_cell)
            refs = task.remote(code, filename, names, outputs, *values)
        refs = refs if isinstance(refs, list) else [refs]
        if opts.run_async:
            for name, ref in zip(outputs, refs):
                self.shell.user_ns[name] = ref
            if outputs:
                return None
            _session(self.shell).keep_in_history = True    # the only handle on the result
            return refs[0]
        results = nbray.get(refs)
        if outputs:
            for name, value in zip(outputs, results):
                self.shell.user_ns[name] = value
            return None
        return results[0]


_COMMANDS = {
    "init": "[--workers N] [--address A] [--num-cpus N]: start (or join) the cluster",
    "status": "the cluster: nodes, workers, resources, tasks and objects of this notebook",
    "shutdown": "leave the cluster (an embedded one stops)",
    "refs": "[--release-history]: the objects this notebook holds, and what keeps each",
    "timeline": "FILE: a Chrome trace of recent tasks",
    "dashboard": "[--interval S] [--tab]: live panels of the nodes, tasks and actors (--tab: "
                 "the dashboard page of the Jupyter server, in a browser tab)",
    "help": "this list",
}

_NAMESPACE_ACTORS: dict = {}


def _run_everywhere(code: str, filename: str, names: list, values: list, timeout: float):
    """``%%remote --all``: the cell runs on every worker of the cluster (and on those started
    later); returns a table of how it went on each."""
    import hashlib
    import sys
    from nbray import backends
    values = [nbray.get(v) if isinstance(v, nbray.ObjectRef) else v for v in values]
    hooks = backends.notebook()
    unit = hooks.setup_unit
    results, expected = hooks.run_everywhere(
        cells.run_setup, (code, filename, names, *values),
        hashlib.sha256(code.encode()).hexdigest(), timeout)
    rows = [[source, "error" if error else "ok",
             error.strip().splitlines()[-1] if error else repr(value)]
            for source, error, value in results]
    failed = [error for _, error, _ in results if error]
    notes = []
    if len(results) < expected:
        notes.append(f"{expected - len(results)} {unit}(s) did not answer within {timeout:g} "
                     f"s (busy): they run it before their next task")
    notes.append(hooks.setup_later)
    if failed:
        print(f"nbray: the setup failed on {len(failed)} {unit}(s); the first error:\n"
              f"{failed[0]}", file=sys.stderr)
    return views.Table(f"%%remote --all: ran on {len(results)} of {expected} {unit}(s)",
                       [unit, "", "value"], rows, notes)


def _namespace_actor(name: str, options: dict):
    """The actor holding the remote namespace ``name``: found, or made on first use (placed
    by the cell's resource flags, which an existing one ignores)."""
    from nbray import api, backends
    if backends.engine is None:
        api._client()           # started (with a warning) if nbray.init() was not called
    ctx = api.context()
    key = (id(ctx), name)       # a new connection (a new context), new handles
    kept = _NAMESPACE_ACTORS.get(key)
    if kept is not None:
        return kept[1]
    try:
        handle = nbray.get_actor(name)
    except ValueError:
        place = {k: v for k, v in options.items() if k in ("num_cpus", "num_gpus", "resources")}
        cls = nbray.remote(cells.CellNamespace)
        handle = cls.options(name=name, **place).remote()
    for old in [k for k in _NAMESPACE_ACTORS if k[0] != key[0]]:
        del _NAMESPACE_ACTORS[old]
    _NAMESPACE_ACTORS[key] = (ctx, handle)     # the context held: its id stays its own
    return handle


def _session(shell):
    from nbray.extension import _loaded
    return _loaded[id(shell)][0]


def _parser(prog: str, *args):
    import argparse
    ap = argparse.ArgumentParser(prog=f"%nbray {prog}", add_help=False)
    for flags, kwargs in args:
        ap.add_argument(*flags, **kwargs)
    return ap


_INIT = _parser("init", (("--workers",), {"type": int, "default": None}),
                (("--address",), {"default": None}),
                (("--num-cpus",), {"type": float, "default": None}),
                (("--backend",), {"default": None}))
_REFS = _parser("refs", (("--release-history",), {"action": "store_true"}))
_DASHBOARD = _parser("dashboard", (("--interval",), {"type": float, "default": 1.0}),
                     (("--tab",), {"action": "store_true"}))


_NOARGS = None


def _parse(parser, args, command=""):
    if parser is None:
        if args:
            raise UsageError(f"%nbray {command} takes no arguments, got {' '.join(args)}")
        return None
    try:
        return parser.parse_args(args)
    except SystemExit:
        raise UsageError(f"{parser.prog}: bad arguments {' '.join(args)!r}; "
                         f"usage: {parser.format_usage().strip()}") from None
