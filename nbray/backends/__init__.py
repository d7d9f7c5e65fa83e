"""Which engine runs nbray's API.

By default nbray's own runtime (``nbray.api`` over ``nbray/runtime/``) runs every task. Another
engine plugs in behind the same public API as a :class:`Backend`: ``nbray.init(backend="ray")``
makes :data:`engine` that backend, and every public call (``remote``, ``get``, ``put``,
``wait``, ``cancel``, ``kill``, ``get_actor``, the cluster's resources) goes to it instead::

    nbray.get(ref)  ->  api.get  ->  engine.get(ref)     (engine set: Ray's own objects)
                                 ->  nbray's runtime      (engine None: the default)

A backend never copies values through nbray: refs, handles and objects are the engine's own.
Adding an engine is one module with a ``Backend`` subclass, named in :data:`ENGINES`.
"""
from __future__ import annotations

import importlib
import os
import sys

#: engine name -> the module holding its Backend (class ``Backend`` in it)
ENGINES = {"ray": "nbray.backends.ray_backend"}

#: the backend in use, or None for nbray's own runtime
engine: "Backend | None" = None


class Backend:
    """What an engine provides. ``rf`` is an ``nbray.remote_function.RemoteFunction`` and
    ``ac`` an ``nbray.actor.ActorClass``: their ``_function``/``_cls`` and ``_options`` (as
    validated by nbray) are what a backend reads."""
    name = "?"

    def init(self, address: str | None, **kwargs):
        """Start or join a cluster of this engine; returns an ``nbray.api.ClusterContext``."""
        raise NotImplementedError

    def attach(self) -> bool:
        """In a worker process of this engine: take the connection the engine already made
        (True), or say there is none (False)."""
        return False

    def shutdown(self) -> None:
        raise NotImplementedError

    # tasks and actors
    def submit(self, rf, args: tuple, kwargs: dict):
        raise NotImplementedError

    def create_actor(self, ac, args: tuple, kwargs: dict):
        raise NotImplementedError

    # objects
    def get(self, refs, timeout: float | None):
        raise NotImplementedError

    def put(self, value):
        raise NotImplementedError

    def wait(self, refs: list, num_returns: int, timeout: float | None, fetch_local: bool):
        raise NotImplementedError

    def progress_wait(self, refs: list, num_returns: int, timeout: float) -> tuple:
        """For a progress bar: (ready, not ready) once ``num_returns`` are or ``timeout``
        passed, in any order, without fetching the values."""
        return self.wait(refs, num_returns, timeout, False)

    def cancel(self, ref, force: bool, recursive: bool) -> None:
        raise NotImplementedError

    # actors by handle and by name
    def kill(self, actor, no_restart: bool) -> None:
        raise NotImplementedError

    def get_actor(self, name: str, namespace: str | None):
        raise NotImplementedError

    # the cluster
    def nodes(self) -> list[dict]:
        raise NotImplementedError

    def cluster_resources(self) -> dict:
        raise NotImplementedError

    def available_resources(self) -> dict:
        raise NotImplementedError

    def runtime_context(self):
        raise NotImplementedError

    # fault injection (nbray.chaos): what the engine allows, else unsupported()
    def kill_worker(self, pid: int | None, running, node: str | None, rng,
                    include_actors: bool) -> dict:
        raise self.unsupported("nbray.chaos.kill_worker()")

    def kill_node(self, node_id: str | None, rng, spare_driver: bool) -> dict:
        raise self.unsupported("nbray.chaos.kill_node()")

    #: what the IPython extension asks of this engine around a notebook's cells
    notebook: "Notebook"
    #: what ``nbray.state`` reads of this engine
    state: "State"

    def unsupported(self, what: str) -> NotImplementedError:
        return unsupported(self.name, what)


def unsupported(name: str, what: str) -> NotImplementedError:
    """The error for what nbray's own runtime has and engine ``name`` does not."""
    return NotImplementedError(f"{what} is not available on the {name} backend (nbray's own "
                               f"runtime has it: nbray.init() without backend=)")


class Notebook:
    """What the IPython extension (``nbray/extension/``) asks of the engine around a
    notebook's cells. Each cell is a *scope*: what it submits carries its number, so that its
    remote output lands in it and its interrupt cancels that work. The extension reaches the
    engine only through this class: ``backends.notebook()``."""

    name = "?"      # the engine's
    #: a SIGINT came while the engine was in its own code: raised when it lets go
    interrupt_pending = False

    def begin_cell(self, scope: int) -> None:
        """Cell ``scope`` starts: what the driver submits from now on is its."""

    def end_cell(self, scope: int, interrupted: bool) -> int:
        """Cell ``scope`` ended (by an interrupt: cancel, recursively, what it started that
        has not finished; returns how many)."""
        return 0

    def stop(self) -> None:
        """The extension is unloaded."""

    def busy_in_runtime(self) -> bool:
        """Whether this thread is in the engine's own code, where an exception raised by an
        interrupt would leave it half way through a change."""
        return False

    def route_output(self, write) -> None:
        """Remote output goes to ``write(scope, stream, text)`` (None: this process's own
        stdout and stderr)."""

    def worker_driver(self) -> str:
        """In a task: the driver whose cell it serves ('' outside any)."""
        return ""

    #: where ``run_everywhere`` runs a setup now, and what runs it later
    setup_unit = "worker"
    setup_later = "workers started later run it before their first task"

    def run_everywhere(self, fn, args: tuple, key: str, timeout: float) -> tuple[list, int]:
        """``%%remote --all``: ``fn(*args)`` on every worker, now and on those started later
        (before their first task); ([(where, error text or '', value)], how many expected).
        ``key`` names the setup: run again, it replaces the one of that key."""
        raise unsupported(self.name, "%%remote --all")

    def summary(self) -> dict:
        """This driver's work for ``%nbray status``: ``tasks_unfinished``, ``objects``
        (held), ``owned``, ``owned_bytes``."""
        raise unsupported(self.name, "%nbray status")

    #: what ``%nbray dashboard --tab`` and ``%nbray status`` call the page ``dashboard_url``
    #: gives
    dashboard_name = "nbray dashboard"

    def dashboard_url(self) -> str | None:
        """A web page of this cluster's dashboard (None: none this kernel can point to)."""
        return None

    def held_objects(self) -> list[dict]:
        """The objects this driver holds refs to, as ``nbray.state.objects()`` lists them:
        ``object_id`` (hex), ``owned``, ``state``, ``size`` (None: unknown), ``refs``,
        ``pinned_by_tasks``, ``pending_tasks``, ``borrowers``."""
        raise unsupported(self.name, "%nbray refs")


class State:
    """What ``nbray.state`` (and through it the widgets, the dashboard, ``nbray.timeline`` and
    ``%nbray status``) reads of the engine, in nbray's own row formats: tasks as the records of
    ``nbray/records.py``, actors, nodes and the rest as ``nbray.state`` documents them.

    Where the engine does not expose a datum, ``unexposed`` says so, by view (``"tasks"``,
    ``"task_graph"``, ``"latency"``, ``"scheduler"``, ``"events"``, ``"nodes"``,
    ``"actors"``, ``"objects"``): the views show that note instead of an empty or guessed
    figure."""

    name = "?"
    unexposed: dict = {}

    def tasks(self, limit: int | None, pending: bool, finished: bool) -> list[dict]:
        """Task records: the ended ones oldest first (the newest ``limit``), then, with
        ``pending``, the unfinished ones oldest first (the newest ``limit``)."""
        raise unsupported(self.name, "nbray.state.tasks()")

    def task_summary(self) -> dict:
        """{function: {finished, failed, cancelled, running, queued, waiting, mean_run_s,
        mean_wait_s}} over every task the engine still knows."""
        raise unsupported(self.name, "nbray.state.summary()")

    def actors(self, detail: bool) -> list[dict]:
        raise unsupported(self.name, "nbray.state.actors()")

    def nodes(self) -> list[dict]:
        raise unsupported(self.name, "nbray.state.nodes()")

    def events(self, kinds, since_seq: int, limit: int | None) -> list[dict]:
        raise unsupported(self.name, "nbray.state.events()")

    def scheduler(self) -> dict:
        """{"nodes": per node, "decisions": [...], "pending": [...]}."""
        raise unsupported(self.name, "nbray.state.scheduler()")

    def objects(self) -> list[dict]:
        raise unsupported(self.name, "nbray.state.objects()")

    def object_counts(self) -> tuple[int, int]:
        """(objects this process holds refs to, how many of them it owns)."""
        objs = self.objects()
        return len(objs), sum(1 for o in objs if o["owned"])


def state() -> State:
    """The state of the engine in use (nbray's own runtime's by default)."""
    if engine is not None:
        return engine.state
    from nbray.backends import native_state
    return native_state.STATE


def notebook() -> Notebook:
    """The notebook hooks of the engine in use (nbray's own runtime's by default)."""
    if engine is not None:
        return engine.notebook
    from nbray.backends import native
    return native.NOTEBOOK


def load(name: str) -> Backend:
    """A new, unconnected backend of engine ``name``; a clear error if it is unknown or its
    package is not installed."""
    if name not in ENGINES:
        raise ValueError(f"unknown backend {name!r}; the backends are 'nbray' (the default) "
                         f"and {', '.join(repr(n) for n in ENGINES)}")
    return importlib.import_module(ENGINES[name]).Backend()


#: set by a backend in the environment of the worker processes its engine starts
WORKER_ENV = "NBRAY_ENGINE_WORKER"


def in_engine_worker() -> bool:
    """Whether this process is a worker of the engine in use (which shows no progress bar:
    its output would land in the notebook)."""
    return os.environ.get(WORKER_ENV) == getattr(engine, "name", None)


def attach_in_worker() -> None:
    """In a worker process of an engine (it has ``NBRAY_ENGINE_WORKER=<name>`` in its
    environment and has loaded the engine), the API speaks to that engine from the first call
    on. A process such a worker starts inherits the variable but not the engine, and stays
    on nbray's own runtime."""
    global engine
    name = os.environ.get(WORKER_ENV)
    if engine is not None or name not in ENGINES or name not in sys.modules:
        return
    try:
        backend = load(name)
    except ImportError:
        return
    if backend.attach():
        engine = backend
