"""The driver API: init, shutdown, get, put, wait, cancel, kill, get_actor. Ray's names and
signatures."""
from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from dataclasses import dataclass

from nbray import backends, config, progress as progress_bar
from nbray.config import CONFIG
from nbray.object_ref import ObjectRef
from nbray.runtime import cluster, core_client, protocol as P

log = logging.getLogger("nbray")
_lock = threading.RLock()


@dataclass
class ClusterContext:
    """What ``init`` returns: where the cluster is and what it has."""
    session: str
    address: str
    node_address: str
    num_workers: int
    resources: dict
    embedded: bool
    backend: str = "nbray"

    def __repr__(self) -> str:
        kind = "embedded" if self.embedded else "joined"
        on = "" if self.backend == "nbray" else f"{self.backend} "
        return (f"ClusterContext({on}{kind} session={self.session}, "
                f"workers={self.num_workers}, resources={self.resources})")


class _Driver:
    """The state of this process as a driver: its client and, if embedded, its cluster."""

    def __init__(self):
        self.client: core_client.CoreClient | None = None
        self.record: cluster.ClusterRecord | None = None
        self.procs: dict | None = None
        self.context: ClusterContext | None = None
        self.restore: dict | None = None    # the knobs an init() changed, for shutdown
        self.adopted: dict = {}             # the bounds as they were before the cluster's

    def restore_config(self) -> None:
        """The knobs as they were before init(): its overrides and the cluster's bounds."""
        for name, value in self.adopted.items():
            setattr(CONFIG, name, value)
        if self.restore is not None:
            config.restore(self.restore)
            self.restore = None


_driver = _Driver()


def init(address: str | None = None, *, backend: str | None = None,
         num_workers: int | None = None,
         num_cpus: int | None = None, num_gpus: float | None = None,
         resources: dict | None = None,
         ignore_reinit_error: bool = False, key: str | None = None,
         max_pending: int | None = None, on_overload: str = "block",
         overload_timeout: float | None = None,
         object_store_memory: int | None = None,
         _system_config: dict | None = None, **engine_options) -> ClusterContext:
    """Start an embedded cluster (no address) or join a running one (``address``).

    ``backend="ray"`` (or ``NBRAY_BACKEND=ray``): the same API on Ray (``nbray/backends/``):
    ``address`` is Ray's (None starts a local Ray instance, ``"auto"``, ``"ray://host:port"``)
    and further keyword arguments go to ``ray.init``.

    ``num_workers`` (or Ray's ``num_cpus``) sets the worker processes and CPUs of the embedded
    node; the default is the machine's cores (more is allowed: CPUs are logical, as in Ray).
    ``num_gpus`` and ``resources`` add logical resources to it.
    ``address`` is ``"auto"``, ``"host:port"`` printed by ``nbray start --head`` or a session
    id; the key comes from the cluster's record on this machine, ``key=`` or ``NBRAY_KEY``.

    ``max_pending``: at most so many of this driver's tasks unfinished at once (those of a
    function without a ``max_pending`` of its own); past it ``.remote()`` waits for room
    (``on_overload="block"``, at most ``overload_timeout`` seconds if given) or raises
    ``OverloadedError`` (``"raise"``). ``object_store_memory``: bytes of shared memory the
    embedded cluster's objects may take (Ray's name); a put or task result beyond it fails
    with ``ObjectStoreFullError``.

    ``_system_config`` (Ray's name): knobs of ``nbray.config.Config`` by name, for this
    process and, for an embedded cluster, its nodes and workers; among them the bounds of the
    queues: ``max_pending`` (every process's own bound), ``node_queue_max``,
    ``max_tasks_in_flight``, ``actor_inflight_max``. A driver joining a cluster takes the
    cluster's bounds; it may set its own, but not those only the nodes read.
    """
    from nbray.runtime import admission
    admission.check(max_pending, on_overload, overload_timeout)
    backend = backend or os.environ.get("NBRAY_BACKEND") or "nbray"
    if backend != "nbray":
        return _init_engine(backend, address, ignore_reinit_error, engine_options, {
            "num_cpus": num_workers if num_workers is not None else num_cpus,
            "num_gpus": num_gpus, "resources": resources,
            "object_store_memory": object_store_memory, "_system_config": _system_config},
            {"key": key, "max_pending": max_pending, "overload_timeout": overload_timeout,
             "on_overload": None if on_overload == "block" else on_overload})
    if engine_options:
        raise TypeError(f"nbray.init() got unexpected keyword argument(s) "
                        f"{', '.join(sorted(engine_options))} (those pass to another "
                        f"engine's init, with backend=)")
    with _lock:
        if _initialized_already(ignore_reinit_error):
            return _driver.context
        if num_workers is not None and num_cpus is not None and num_workers != num_cpus:
            raise ValueError("num_workers and num_cpus name the same thing; pass one of them")
        n = num_workers if num_workers is not None else num_cpus
        if n is None:
            n = os.cpu_count() or 1
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"num_workers must be a positive integer, got {n!r}")
        _check_resources(resources)
        if num_gpus is not None:
            if isinstance(num_gpus, bool) or not isinstance(num_gpus, (int, float)) or \
                    num_gpus < 0:
                raise ValueError(f"num_gpus must be a number >= 0, got {num_gpus!r}")
            if resources and "GPU" in resources:
                raise ValueError("give GPUs as num_gpus or as resources['GPU'], not both")
            resources = {**(resources or {}), "GPU": float(num_gpus)} if num_gpus else resources
        if address is not None and (num_workers is not None or num_cpus is not None or
                                    resources or num_gpus is not None):
            raise ValueError("num_workers/num_cpus/num_gpus/resources configure a new cluster; "
                             "they cannot be given when joining one at an address")
        overrides = _system_overrides(_system_config, object_store_memory, address)
        _driver.restore = config.apply(overrides)
        record = procs = client = None
        embedded = address is None
        _driver.adopted = config.limits()   # joining, the client takes the cluster's
        try:
            if embedded:
                record, procs = cluster.start(num_workers=n, resources=resources,
                                              watch_pid=os.getpid())
                # findable (a Jupyter server lists its kernels' clusters; a dashboard joins
                # one by its session), never stopped by `nbray stop`: it is this driver's
                record.role, record.driver_pid = "embedded", os.getpid()
                record.save()
            else:
                record = _join_record(address, key)
            client = core_client.CoreClient(
                key=bytes.fromhex(record.key), session=record.name,
                node_address=record.node_address,
                bind=f"tcp://{record.host}:*" if record.host else
                f"ipc://{record.rundir}/d-{os.getpid()}-{os.urandom(3).hex()}",
                threaded=True)
            core_client.set_current(client)
            client.connect()
        except BaseException:
            core_client.set_current(None)
            if client is not None:
                client.close()          # its I/O thread and sockets, if it got that far
            if procs is not None:
                cluster.stop(record, procs)
            _driver.restore_config()
            raise
        _driver.client, _driver.record, _driver.procs = client, record, procs
        if max_pending is not None or on_overload != "block" or overload_timeout is not None:
            # this driver's own bound, or the cluster's with this driver's policy
            client.default_limit = core_client.process_limit(
                max_pending, on_overload, overload_timeout, "this driver")
        from nbray.runtime import bundles
        res = bundles.visible(client.node_resources)
        _driver.context = ClusterContext(record.session, record.tcp_address or record.head_address,
                                         record.node_address, int(res.get("CPU", 0)), res,
                                         embedded)
        return _driver.context


def _initialized_already(ignore_reinit_error: bool) -> bool:
    """True if init() should return the context it made before; an error if it was called
    and may not be again."""
    if _driver.client is None and backends.engine is None:
        return False
    if ignore_reinit_error:
        return True
    raise RuntimeError("nbray.init() was already called; call nbray.shutdown() first or pass "
                       "ignore_reinit_error=True")


def _init_engine(name: str, address, ignore_reinit_error: bool, engine_options: dict,
                 common: dict, nbray_only: dict) -> ClusterContext:
    """``init`` of another engine: its backend connects and the API speaks to it."""
    with _lock:
        if _initialized_already(ignore_reinit_error):
            return _driver.context
        eng = backends.load(name)
        given = sorted(k for k, v in nbray_only.items() if v is not None)
        if given:
            raise eng.unsupported(f"init's {', '.join(given)}")
        _check_resources(common["resources"])
        options = {**{k: v for k, v in common.items() if v is not None}, **engine_options}
        _driver.context = eng.init(address, **options)
        backends.engine = eng
        return _driver.context


def _join_record(address: str, key: str | None) -> cluster.ClusterRecord:
    record = cluster.find(address)
    if key is not None or os.environ.get("NBRAY_KEY"):
        record.key = cluster.check_key(key or os.environ["NBRAY_KEY"])
    return record


def _system_overrides(system_config, object_store_memory, address) -> dict:
    overrides = config.check_overrides(system_config or {})
    if object_store_memory is not None:
        if isinstance(object_store_memory, bool) or \
                not isinstance(object_store_memory, int) or object_store_memory < 1:
            raise ValueError(f"object_store_memory must be a positive number of bytes, "
                             f"got {object_store_memory!r}")
        overrides["object_store_memory"] = object_store_memory
    if address is not None:
        wide = sorted(set(overrides) & set(config.CLUSTER_WIDE))
        if wide:
            raise ValueError(f"{', '.join(wide)} configure{'s' if len(wide) == 1 else ''} a "
                             f"new cluster, not one joined at an address (for one started "
                             f"with `nbray start`: its --system-config)")
    return overrides


def _check_resources(resources) -> None:
    if resources is None:
        return
    if not isinstance(resources, dict):
        raise TypeError(f"resources must be a dict of name -> amount, got {resources!r}")
    for k, v in resources.items():
        if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)) \
                or v < 0:
            raise ValueError(f"resources must map names to non-negative numbers, got {k!r}: {v!r}")


def shutdown() -> None:
    """Leave the cluster; an embedded cluster is stopped and leaves nothing behind."""
    with _lock:
        client, record, procs = _driver.client, _driver.record, _driver.procs
        _driver.client = _driver.record = _driver.procs = _driver.context = None
        eng, backends.engine = backends.engine, None
        if eng is not None:
            eng.shutdown()
        if client is None:
            return
        core_client.set_current(None)
        client.close()
        client.printer.finish_all()         # what was held back of a flood of output
        if procs is not None:
            cluster.stop(record, procs)
        _driver.restore_config()


atexit.register(shutdown)


def is_initialized() -> bool:
    return backends.engine is not None or _driver.client is not None or (
        core_client.current() is not None and core_client.current().worker_id is not None)


def _client() -> core_client.CoreClient:
    client = core_client.current()
    if client is not None:
        return client
    if backends.engine is not None:     # a part of the API only nbray's runtime has
        raise backends.engine.unsupported(_public_caller())
    with _lock:
        if _driver.client is None:
            chosen = os.environ.get("NBRAY_BACKEND") or "nbray"
            if chosen != "nbray":
                from nbray.errors import NotInitializedError
                raise NotInitializedError(f"NBRAY_BACKEND={chosen}: call nbray.init() first "
                                          f"(it connects to {chosen})")
            log.warning("nbray: starting an embedded cluster (nbray.init() was not called)")
            init()
        return _driver.client


def _public_caller() -> str:
    """The function of nbray's API that needed nbray's runtime: the first caller outside
    this module."""
    import sys
    frame = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame = frame.f_back
    if frame is None:
        return "this part of nbray's API"
    return f"{frame.f_globals.get('__name__', '?')}.{frame.f_code.co_name}()"


def context() -> ClusterContext | None:
    return _driver.context


# ---- the cluster ---------------------------------------------------------------------------
def nodes() -> list[dict]:
    """Every node the head knows, with Ray's keys: ``NodeID``, ``Alive``,
    ``NodeManagerAddress``, ``NodeManagerHostname``, ``Resources`` (what it declares), and
    nbray's own fields (``nbray.state.nodes()``) under ``"nbray"``."""
    if backends.engine is not None:
        return backends.engine.nodes()
    from nbray import state
    return [{"NodeID": n["node_id"], "Alive": n["state"] == "alive",
             "NodeManagerAddress": n.get("address", ""), "NodeManagerHostname": n.get("host"),
             "Resources": dict(n.get("resources") or {}), "nbray": n}
            for n in state.nodes()]


def cluster_resources() -> dict:
    """The resources the live nodes declare, summed (``{"CPU": 8.0, "GPU": 1.0, ...}``)."""
    if backends.engine is not None:
        return backends.engine.cluster_resources()
    return _summed("resources")


def available_resources() -> dict:
    """What the live nodes have free now, summed, as of their latest heartbeats (about every
    half second)."""
    if backends.engine is not None:
        return backends.engine.available_resources()
    return _summed("resources_available")


def _summed(field: str) -> dict:
    from nbray import state
    total: dict = {}
    for n in state.nodes({"state": "alive"}):
        for k, v in (n.get(field) or n.get("resources") or {}).items():
            total[k] = total.get(k, 0.0) + float(v)
    return total


# ---- objects ---------------------------------------------------------------------------------
def put(value) -> ObjectRef:
    """Store a value in the cluster; returns a ref to it."""
    if isinstance(value, ObjectRef):
        raise TypeError("nbray.put() of an ObjectRef is not allowed; pass the ref itself")
    if backends.engine is not None:
        return backends.engine.put(value)
    return _client().put(value)


def get(refs, *, timeout: float | None = None, progress: bool | None = None):
    """The value of a ref, or a list of values for a list of refs, waiting as needed.

    Raises the task's exception (a ``RemoteError`` that is also of the task's own type),
    ``GetTimeoutError`` after ``timeout`` seconds, ``ObjectLostError`` if the object is gone.
    A long wait for many refs shows a progress bar (``nbray/progress.py``): ``progress=True``
    always, ``False`` never.
    """
    _check_timeout(timeout)
    one = isinstance(refs, ObjectRef)
    if not one:
        if not isinstance(refs, (list, tuple)):
            raise TypeError(f"nbray.get() takes an ObjectRef or a list of them, got "
                            f"{type(refs).__name__}")
        _check_refs(refs, "get")
        refs = list(refs)
    if backends.engine is not None:
        if not one and refs and progress_bar.wanted(backends.in_engine_worker(), refs,
                                                     progress):
            timeout = _with_bar(_engine_wait, refs, timeout, bool(progress))
        return backends.engine.get(refs, timeout)
    _warn_if_in_an_async_actor()
    if one:
        return _client().get_values([refs], timeout)[0]
    if not refs:
        return []
    client = _client()
    if progress_bar.wanted(client.worker_id is not None, refs, progress):
        timeout = _with_bar(client.wait, refs, timeout, bool(progress))
    return client.get_values(refs, timeout)


def _with_bar(wait, refs: list, timeout, show_now: bool, num_returns: int | None = None):
    """Wait with a progress bar (``nbray/progress.py``); the time left of ``timeout``."""
    started = time.monotonic()
    progress_bar.wait_with_bar(wait, refs, timeout, show_now, num_returns)
    return None if timeout is None else max(0.0, timeout - (time.monotonic() - started))


def _engine_wait(refs: list, num_returns: int, timeout):
    return backends.engine.progress_wait(refs, num_returns, timeout)


def _warn_if_in_an_async_actor() -> None:
    """A blocking get in an async actor's method stops every other call on its event loop."""
    client = core_client.current()
    if client is None or not client.actor_id:
        return
    import asyncio
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return                          # a sync method, or a thread of its own
    import warnings
    warnings.warn("nbray.get() in an async actor method blocks the actor's event loop (its "
                  "other calls wait); use `await ref` or `await asyncio.gather(*refs)`",
                  RuntimeWarning, stacklevel=3)


def wait(refs, *, num_returns: int = 1, timeout: float | None = None, fetch_local: bool = True,
         progress: bool | None = None):
    """Wait until ``num_returns`` of ``refs`` are ready or ``timeout`` passes.

    Returns ``(ready, not_ready)``, both in the order of ``refs``. A long wait for many shows a
    progress bar, as ``get`` does. ``refs`` may hold ``ObjectRefGenerator``s (of streaming
    tasks): one is ready when its next item, or its end, is there.
    """
    if isinstance(refs, ObjectRef) or not isinstance(refs, (list, tuple)):
        raise TypeError("nbray.wait() takes a list of ObjectRefs")
    from nbray.generators import ObjectRefGenerator
    if backends.engine is None:     # (type, not isinstance: ObjectRefGenerator is an ABC)
        streams = [r for r in refs if type(r) is ObjectRefGenerator]
        _check_refs([r for r in refs if type(r) is not ObjectRefGenerator], "wait")
    else:
        streams = ()
        _check_refs([r for r in refs if not isinstance(r, ObjectRefGenerator)], "wait")
    if len(set(refs)) != len(refs):
        raise ValueError("nbray.wait() got the same ObjectRef more than once")
    if isinstance(num_returns, bool) or not isinstance(num_returns, int) or num_returns < 0:
        raise ValueError(f"num_returns must be a non-negative integer, got {num_returns!r}")
    if num_returns > len(refs):
        raise ValueError(f"num_returns ({num_returns}) exceeds the number of refs ({len(refs)})")
    _check_timeout(timeout)
    if not refs:
        return [], []
    if backends.engine is not None:
        if (num_returns >= CONFIG.progress_min_refs or progress) and progress_bar.wanted(
                backends.in_engine_worker(), refs, progress) and not any(
                isinstance(r, ObjectRefGenerator) for r in refs):
            timeout = _with_bar(_engine_wait, list(refs), timeout, bool(progress),
                                num_returns)
        return backends.engine.wait(list(refs), num_returns, timeout, fetch_local)
    client, refs = _client(), list(refs)
    if streams:
        return _wait_with_streams(client, refs, num_returns, timeout)
    if num_returns >= CONFIG.progress_min_refs or progress:
        if progress_bar.wanted(client.worker_id is not None, refs, progress):
            timeout = _with_bar(client.wait, refs, timeout, bool(progress), num_returns)
    return client.wait(refs, num_returns, timeout)


def _wait_with_streams(client, refs: list, num_returns: int, timeout):
    """``wait`` over refs and generators: each pass asks the refs without waiting (which also
    asks their owners) and the generators' streams, until enough are ready."""
    from nbray.generators import ObjectRefGenerator
    client._check_not_held()
    plain = [r for r in refs if not isinstance(r, ObjectRefGenerator)]

    def ready_now() -> list:
        done = set(client.wait(plain, len(plain), 0)[0]) if plain else set()
        return [r for r in refs if (r._ready() if isinstance(r, ObjectRefGenerator)
                                    else r in done)]

    def ready():
        out = ready_now()
        return out if len(out) >= num_returns else None
    deadline = None if timeout is None else time.monotonic() + timeout
    found = client.wait_for(ready, deadline, lend_cpu=True) or ready_now()    # at the timeout:
    # what is ready, however few
    found = found[:num_returns] if num_returns else found
    chosen = {id(r) for r in found}
    return found, [r for r in refs if id(r) not in chosen]


def cancel(ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task that produces ``ref`` (or an ``ObjectRefGenerator``'s task): dropped
    if not started, interrupted if running (``force=True`` kills its worker). ``get`` on it
    then raises ``TaskCancelledError``."""
    from nbray.generators import ObjectRefGenerator
    if backends.engine is not None:
        if not isinstance(ref, (ObjectRef, ObjectRefGenerator)):
            raise TypeError(f"nbray.cancel() takes an ObjectRef, got {type(ref).__name__}")
        return backends.engine.cancel(ref, force, recursive)
    if isinstance(ref, ObjectRefGenerator):
        ref = ref.completed()
    if not isinstance(ref, ObjectRef):
        raise TypeError(f"nbray.cancel() takes an ObjectRef, got {type(ref).__name__}")
    _client().cancel(ref, force=force)


# ---- actors ----------------------------------------------------------------------------------
def kill(actor, *, no_restart: bool = True) -> None:
    """End an actor now: calls in flight and later ones fail with ``ActorDiedError``. With
    ``no_restart=False`` it is killed as if its worker crashed, and restarts if it may."""
    from nbray.actor import ActorHandle
    if not isinstance(actor, ActorHandle):
        raise TypeError(f"nbray.kill() takes an actor handle, got {type(actor).__name__} "
                        f"(use nbray.cancel() for a task's ObjectRef)")
    if backends.engine is not None:
        return backends.engine.kill(actor, no_restart)
    _client().kill_actor(actor._actor_id, actor._owner, no_restart)


def get_actor(name: str, namespace: str | None = None):
    """The handle of the live actor registered under ``name`` (from any driver or task);
    ``ValueError`` if there is none."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"nbray.get_actor() takes an actor's name, got {name!r}")
    if backends.engine is not None:
        return backends.engine.get_actor(name, namespace)
    found = _lookup_actor(_client(), name, namespace or "")
    if found is None:
        raise ValueError(f"no actor named {name!r}" + (
            f" in namespace {namespace!r}" if namespace else "") + " is alive")
    return found


def _lookup_actor(client, name: str, namespace: str):
    from nbray.actor import ActorHandle
    row = client.request(client.head_address, lambda r: P.LookupActor(r, name, namespace))
    if row is None:
        return None
    meta = row["meta"]
    client.adopt_actor(row["actor_id"], row["owner"], row["class_name"],
                       meta["max_task_retries"])
    ref = ObjectRef(meta["creation_id"], row["owner"])    # keeps it alive while held
    return ActorHandle(row["actor_id"], row["owner"], row["class_name"], meta["methods"],
                       meta["max_task_retries"], ref)


def _check_refs(refs, fn: str) -> None:
    for r in refs:
        if not isinstance(r, ObjectRef):
            raise TypeError(f"nbray.{fn}() takes ObjectRefs, got a {type(r).__name__} in the list")


def _check_timeout(timeout) -> None:
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or timeout < 0):
        raise ValueError(f"timeout must be None or a non-negative number, got {timeout!r}")


