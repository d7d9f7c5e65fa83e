"""The Ray backend: nbray's API on a Ray cluster (``nbray.init(backend="ray")``).

Tasks, actors, refs and objects are Ray's own: ``RemoteFunction.remote`` calls Ray's remote
function made once from the same Python function, ``get`` is ``ray.get``, a handle is Ray's
``ActorHandle``. What nbray adds is only the mapping of names: options nbray spells as Ray does
pass through, nbray's scheduling strategies become Ray's, and Ray's errors become nbray's (a
task's exception still of its own type, as ``RemoteError`` is on nbray's runtime). Options only
nbray's runtime has (admission control) are a clear ``NotImplementedError``.

Ray's worker processes get ``NBRAY_ENGINE_WORKER=ray`` in their environment, so nbray's API
called inside a task (``nbray.get``, ``f.remote``) speaks to the same Ray cluster. Errors are
translated where nbray's API raises them (``get``, ``put``, ``.remote()``); ``await ref`` and
``ref.future()`` are Ray's own and raise Ray's errors.
"""
from __future__ import annotations

import inspect
import os
import re
import time
import weakref

import psutil

from nbray import backends, errors

try:
    import ray
    import ray.exceptions as rx
    import ray.util.scheduling_strategies as ray_strategies
except ImportError as e:     # pragma: no cover - depends on the installation
    raise ImportError('the ray backend needs Ray: pip install "nbray[ray]" (or pip install '
                      '"ray[default]")') from e

from nbray.backends import ray_notebook, ray_state    # noqa: E402 - they need Ray too

KILL_WAIT_S = 10.0         # at most so long for a killed actor to be seen dead
KILL_POLL_S = 0.05
DEPS_KEPT = 20_000         # tasks whose arguments' tasks are kept for the task graph

#: options nbray's runtime has and Ray does not
_NBRAY_ONLY = {"max_pending", "max_pending_calls", "on_overload", "overload_timeout"}

# Ray's error -> nbray's (most specific first: ActorDiedError is a RayActorError)
_ERRORS = [
    (rx.GetTimeoutError, errors.GetTimeoutError),
    (rx.TaskCancelledError, errors.TaskCancelledError),
    (rx.OwnerDiedError, errors.OwnerDiedError),
    (rx.ObjectLostError, errors.ObjectLostError),
    (rx.RayActorError, errors.ActorDiedError),
    (rx.ActorUnschedulableError, errors.ActorDiedError),
    (rx.WorkerCrashedError, errors.WorkerCrashedError),
    (rx.LocalRayletDiedError, errors.WorkerCrashedError),
    (rx.NodeDiedError, errors.WorkerCrashedError),
    (rx.OutOfMemoryError, errors.WorkerCrashedError),
    (rx.ObjectStoreFullError, errors.ObjectStoreFullError),
    (rx.OutOfDiskError, errors.ObjectStoreFullError),
    (rx.PendingCallsLimitExceeded, errors.OverloadedError),
]


_UNSERIALIZABLE = getattr(rx, "UnserializableException", ())    # Ray 2.50 on
_ANSI = re.compile(r"\x1b\[[0-9;]*m")       # Ray colours the task's name in its messages


def _raise(e: BaseException):
    """Raise nbray's error for ``e``: a task's own error as it is (its remote traceback
    says it all), a system error with Ray's as its cause."""
    mapped = translate(e)
    if isinstance(mapped, errors.RemoteError):
        raise mapped from None
    raise mapped from e


def translate(e: BaseException) -> BaseException:
    """nbray's error for one Ray raised (the Ray error is kept as ``__cause__``)."""
    if isinstance(e, rx.RayTaskError):
        cause = e.cause if isinstance(e.cause, BaseException) else e
        if isinstance(cause, tuple(ray_type for ray_type, _ in _ERRORS)):
            return translate(cause)      # a task that died of a system error, not its own
        # what ray.get raises is Ray's mix of RayTaskError and the cause's type, which keeps
        # only the cause and the whole message (the remote traceback under a "ray::f()" line)
        text = _ANSI.sub("", vars(e).get("traceback_str") or str(e))
        if "Traceback (most recent call last)" not in text:     # Ray leaves the header out
            text = "Traceback (most recent call last):\n" + text
        text = _without_nbray_frames(text)
        name = vars(e).get("function_name") or _function_name(text)
        return errors.RemoteError.from_parts(cause, text, name)
    if isinstance(e, _UNSERIALIZABLE):          # the task's error, in text only
        text = _ANSI.sub("", str(e))
        return errors.RemoteError(e, text, _function_name(text))
    for ray_type, nbray_type in _ERRORS:
        if isinstance(e, ray_type):
            mapped = nbray_type(str(e))
            mapped.__cause__ = e
            return mapped
    if isinstance(e, rx.RayError):
        mapped = errors.NbrayError(f"{type(e).__name__}: {e}")
        mapped.__cause__ = e
        return mapped
    return e


def _as_function(target, name: str):
    """Ray's ``remote`` takes Python functions only; nbray any callable (``os.getpid``, a
    ``functools.partial``, an object with ``__call__``)."""
    if inspect.isfunction(target):
        return target

    def call(*args, **kwargs):
        return target(*args, **kwargs)
    call.__name__ = call.__qualname__ = name
    return call


def _serialization_error(e: TypeError) -> TypeError:
    """Ray's "Could not serialize ..." as nbray's SerializationError (other TypeErrors as
    they are)."""
    if "serialize" not in str(e):
        return e
    mapped = errors.SerializationError(str(e))
    mapped.__cause__ = e
    return mapped


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_FRAME = re.compile(r'^\s*File "([^"]+)", line \d+')


def _without_nbray_frames(text: str) -> str:
    """A remote traceback without the frames of nbray's own code (a ``%%remote`` cell's
    runner), as nbray's workers show it: it starts in the user's code."""
    out, skipping = [], False
    for line in text.splitlines(keepends=True):
        frame = _FRAME.match(line)
        if frame:
            skipping = frame.group(1).startswith(_PACKAGE + os.sep)
        elif skipping and not line.startswith("    "):
            skipping = False            # past the frame's source lines
        if not skipping:
            out.append(line)
    return "".join(out)


def _function_name(text: str) -> str:
    found = re.search(r"ray::([\w.<>]+)\(", text)
    return found.group(1) if found else "?"


class Backend(backends.Backend):
    name = "ray"

    def __init__(self):
        self.connected = False      # this backend called ray.init (not attached in a worker)
        self.notebook = ray_notebook.RayNotebook()
        self.state = ray_state.RayState(self)
        #: the actors this process created, by id (for their ``__nbray_state__()``)
        self.handles = weakref.WeakValueDictionary()
        #: task id -> the ids of the tasks whose refs it was given (Ray's task events do
        #: not say; the task graph's edges), the newest ``DEPS_KEPT``
        self.task_deps: dict = {}
        self._registered()

    @staticmethod
    def _registered() -> None:
        """``isinstance(ref, nbray.ObjectRef)`` and friends hold for Ray's own types."""
        from nbray.actor import ActorHandle
        from nbray.generators import ObjectRefGenerator
        from nbray.object_ref import ObjectRef
        ObjectRef.register(ray.ObjectRef)
        ActorHandle.register(ray.actor.ActorHandle)
        ObjectRefGenerator.register(ray.ObjectRefGenerator)

    # ---- connecting --------------------------------------------------------------------
    def init(self, address, **kwargs):
        from nbray.api import ClusterContext
        env = dict(kwargs.pop("runtime_env", None) or {})
        env["env_vars"] = {**(env.get("env_vars") or {}), backends.WORKER_ENV: "ray"}
        kwargs.setdefault("log_to_driver", True)
        # one namespace for every driver, as on nbray's runtime: a named actor is found from
        # another notebook
        kwargs.setdefault("namespace", "nbray")
        # no address: a Ray instance of its own (Ray's None would join RAY_ADDRESS or the
        # latest `ray start` cluster instead)
        info = ray.init(address=address or "local", runtime_env=env, **kwargs)
        self.connected = True
        resources = ray.cluster_resources()
        gcs = getattr(info, "address_info", {}).get("gcs_address") or address or ""
        return ClusterContext(session=ray.get_runtime_context().get_job_id(), address=gcs,
                              node_address=ray.get_runtime_context().get_node_id(),
                              num_workers=int(resources.get("CPU", 0)),
                              resources=resources, embedded=address is None, backend="ray")

    def attach(self) -> bool:
        return ray.is_initialized()

    def shutdown(self) -> None:
        self.notebook.close()
        if self.connected and ray.is_initialized():   # a worker's connection is Ray's
            ray.shutdown()

    # ---- tasks and actors --------------------------------------------------------------
    def submit(self, rf, args, kwargs):
        cell = self.notebook.cell or ray_notebook.current_cell()
        if cell is not None:
            return self._submit_in_cell(rf, cell, args, kwargs)
        try:
            fn = rf._engine_fn
        except AttributeError:
            fn = rf._engine_fn = self._remote_function(rf).remote
        try:
            ref = fn(*args, **kwargs)
        except TypeError as e:
            raise _serialization_error(e) from None
        self._note_deps(ref, args, kwargs)
        return ref

    def _note_deps(self, ref, args, kwargs) -> None:
        """The tasks whose refs a task was given (only its top-level arguments, those Ray
        resolves), for the task graph."""
        deps = [a.task_id().hex() for a in args if type(a) is ray.ObjectRef]
        if kwargs:
            deps += [a.task_id().hex() for a in kwargs.values() if type(a) is ray.ObjectRef]
        if not deps or ref is None:
            return
        first = ref[0] if isinstance(ref, list) else ref
        if type(first) is not ray.ObjectRef:        # (a generator's)
            return
        self.task_deps[first.task_id().hex()] = deps
        if len(self.task_deps) > DEPS_KEPT:
            for old in list(self.task_deps)[:DEPS_KEPT // 2]:
                del self.task_deps[old]

    def _submit_in_cell(self, rf, cell, args, kwargs):
        """A task of a notebook cell (ray_notebook.py): it carries the cell."""
        try:
            fn = rf._engine_cell_fn
        except AttributeError:
            tagged = self._remote_function(rf, in_cell=True)
            if tagged is not None:
                fn = tagged.remote              # its first argument: the cell
            else:       # (a generator or coroutine function: Ray's own, untagged)
                plain = self._remote_function(rf).remote

                def fn(cell, *args, **kwargs):
                    return plain(*args, **kwargs)
            rf._engine_cell_fn = fn
        try:
            ref = fn(cell, *args, **kwargs)
        except TypeError as e:
            raise _serialization_error(e) from None
        self._note_deps(ref, args, kwargs)
        if cell is self.notebook.cell:      # the driver's own cell: its interrupt cancels it
            self.notebook.submitted(cell, ref)
        return ref

    def _remote_function(self, rf, in_cell: bool = False):
        shared = rf._shared
        key = "ray-in-cell" if in_cell else "ray"
        if key not in shared:
            fn = _as_function(rf._function, rf._name)
            if in_cell:
                fn = ray_notebook.in_cell(fn)
                if fn is None:      # (a generator or coroutine function: Ray's own)
                    shared[key] = None
                    return None
            shared[key] = ray.remote(fn)
        if shared[key] is None:
            return None
        options = self._options(rf._options, "remote function")
        return shared[key].options(**options) if options else shared[key]

    def create_actor(self, ac, args, kwargs):
        shared = ac._shared
        if "ray" not in shared:
            _mark_methods(ac._cls)
            shared["ray"] = ray.remote(ac._cls)
        opts = self._options(ac._options, "actor")
        try:
            handle = shared["ray"].options(**opts).remote(*args, **kwargs)
        except ValueError as e:
            if opts.get("name") and "already taken" in str(e):    # as nbray's runtime says it
                raise ValueError(f"an actor named {opts['name']!r} already exists "
                                 f"({e})") from None
            raise
        except TypeError as e:
            raise _serialization_error(e) from None
        self.handles[handle._actor_id.hex()] = handle
        return handle

    def _options(self, options: dict, what: str) -> dict:
        nbray_only = sorted(set(options) & _NBRAY_ONLY)
        if nbray_only:
            raise self.unsupported(f"the {what} option(s) {', '.join(nbray_only)}")
        opts = dict(options)
        if "scheduling_strategy" in opts:
            opts["scheduling_strategy"] = self._strategy(opts["scheduling_strategy"])
        return opts

    def _strategy(self, strategy):
        from nbray.util import scheduling_strategies as ours
        if isinstance(strategy, ours.NodeAffinitySchedulingStrategy):
            return ray_strategies.NodeAffinitySchedulingStrategy(strategy.node_id,
                                                                 soft=strategy.soft)
        if isinstance(strategy, ours.PlacementGroupSchedulingStrategy):
            raise self.unsupported("nbray's placement groups")
        return strategy                 # None, "DEFAULT", "SPREAD" or one of Ray's own

    # ---- objects -----------------------------------------------------------------------
    def get(self, refs, timeout):
        try:
            return ray.get(refs, timeout=timeout)
        except rx.RayError as e:
            _raise(e)

    def put(self, value):
        try:
            return ray.put(value)
        except rx.RayError as e:
            _raise(e)
        except TypeError as e:
            raise _serialization_error(e) from None

    def progress_wait(self, refs, num_returns, timeout):
        return ray.wait(refs, num_returns=num_returns, timeout=timeout, fetch_local=False)

    def wait(self, refs, num_returns, timeout, fetch_local):
        if num_returns == 0:            # nbray allows it (Ray does not): nothing to wait for
            return [], refs
        ready = ray.wait(refs, num_returns=num_returns, timeout=timeout,
                         fetch_local=fetch_local)[0]
        if len(ready) < len(refs):
            # nbray's contract: the first num_returns of refs that are ready (Ray returns
            # the first it saw ready), both lists in the order of refs
            ready = set(ready) | set(ray.wait(refs, num_returns=len(refs), timeout=0,
                                              fetch_local=fetch_local)[0])
        chosen = [r for r in refs if r in ready][:num_returns]
        taken = set(chosen)
        return chosen, [r for r in refs if r not in taken]

    def cancel(self, ref, force, recursive):
        ray.cancel(ref, force=force, recursive=recursive)

    # ---- actors ------------------------------------------------------------------------
    def kill(self, actor, no_restart):
        """As on nbray's runtime, the actor is dead when this returns (``ray.kill`` only asks
        for it): a call made after it fails."""
        ray.kill(actor, no_restart=no_restart)
        if not no_restart:
            return
        deadline = time.monotonic() + KILL_WAIT_S
        while time.monotonic() < deadline:
            try:
                ray.get(actor.__ray_ready__.remote(), timeout=max(0.0, deadline -
                                                                   time.monotonic()))
            except (rx.RayActorError, rx.GetTimeoutError):
                return
            time.sleep(KILL_POLL_S)     # it still answers: the kill has not landed yet
        import warnings
        warnings.warn(f"nbray.kill: Ray still runs the actor {KILL_WAIT_S:.0f}s after "
                      f"ray.kill", RuntimeWarning, stacklevel=3)

    def get_actor(self, name, namespace):
        try:
            return ray.get_actor(name, namespace=namespace)
        except ValueError as e:
            raise ValueError(f"no actor named {name!r}" + (
                f" in namespace {namespace!r}" if namespace else "") + f" is alive ({e})") \
                from None

    # ---- the cluster -------------------------------------------------------------------
    def nodes(self):
        return ray.nodes()

    def cluster_resources(self):
        return ray.cluster_resources()

    def available_resources(self):
        return ray.available_resources()

    def runtime_context(self):
        return ray.get_runtime_context()

    # ---- fault injection ---------------------------------------------------------------
    def kill_worker(self, pid, running, node, rng, include_actors):
        """SIGKILL one of this cluster's Ray worker processes on this machine (the raylets
        of its nodes here are their parents)."""
        if running is not None:
            raise self.unsupported("nbray.chaos.kill_worker(running=...)")
        if not include_actors:
            raise self.unsupported("nbray.chaos.kill_worker(include_actors=False)")
        candidates = [(n, w) for n, w in _local_workers()
                      if (node is None or n == node) and (pid is None or w.pid == pid)]
        if not candidates:
            raise LookupError("no Ray worker of this cluster on this machine to kill" +
                              (f" with pid {pid}" if pid else ""))
        n, w = rng.choice(sorted(candidates, key=lambda c: c[1].pid))
        try:
            w.kill()
        except psutil.NoSuchProcess:
            raise LookupError(f"worker {w.pid} exited before it could be killed") from None
        return {"worker_id": None, "pid": w.pid, "node_id": n}


    def kill_node(self, node_id, rng, spare_driver):
        """SIGKILL the raylet of one of this cluster's nodes on this machine, and every
        process it started (its workers and agents), as when its machine fails."""
        raylets = _local_raylets()
        if node_id is not None:
            raylets = {n: p for n, p in raylets.items() if n == node_id}
        elif spare_driver:
            raylets.pop(ray.get_runtime_context().get_node_id(), None)
        if not raylets:
            raise LookupError("no node of this Ray cluster on this machine to kill" + (
                f" with id {node_id} (Ray's nodes on other machines cannot be killed from "
                f"here)" if node_id else ""))
        node = rng.choice(sorted(raylets))
        raylet = raylets[node]
        try:
            tree = raylet.children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        for p in [raylet] + tree:       # the raylet first: nothing it owns is restarted
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        return {"node_id": node, "pid": raylet.pid}


_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def _local_raylets() -> dict:
    """node id -> raylet process, of this cluster's live nodes that run on this machine."""
    ours = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    out = {}
    for p in psutil.process_iter(["name", "cmdline"]):
        if p.info["name"] != "raylet":
            continue
        node = next((a.split("=", 1)[1] for a in p.info["cmdline"] or ()
                     if a.startswith("--node_id=")), None)
        if node in ours:
            out[node] = p
    return out


def _local_workers() -> list:
    """(node id, process) of the Ray workers on this machine that belong to this cluster:
    the ``ray::...`` children of its raylets here."""
    out = []
    for node, p in _local_raylets().items():
        try:
            out += [(node, c) for c in p.children()
                    if c.name().startswith("ray::") and c.name() not in _AGENTS]
        except psutil.NoSuchProcess:
            continue
    return out


def _mark_methods(cls) -> None:
    """``@nbray.method(num_returns=...)`` as Ray reads it (``@ray.method`` sets the same)."""
    for klass in cls.__mro__:
        for member in vars(klass).values():
            n = getattr(member, "__nbray_num_returns__", None)
            if n is not None and not hasattr(member, "__ray_num_returns__"):
                member.__ray_num_returns__ = n
