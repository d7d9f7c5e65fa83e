"""``@nbray.remote`` on a class: actors, their handles and their methods.

``Cls.remote(*args)`` creates the actor on a worker of its own and returns an
:class:`ActorHandle` at once; ``handle.method.remote(*args)`` returns an ``ObjectRef``. Calls from
one caller run in the order they were made. A handle can be passed to tasks and other actors,
which call it too; the actor lives while a handle to it exists anywhere (or until
``nbray.kill``), and restarts after its worker dies if ``max_restarts`` says so.
"""
from __future__ import annotations

import hashlib
import inspect
from abc import ABCMeta

from nbray import backends
from nbray.errors import ClusterError, SerializationError
from nbray.object_ref import ObjectRef
from nbray.remote_function import GENERATOR_KINDS, check_num_returns, check_resources
from nbray.runtime import bundles, protocol as P, serialization

_ACTOR_OPTIONS = {"num_cpus", "num_gpus", "memory", "resources", "max_restarts", "max_task_retries",
                  "max_concurrency", "name", "namespace", "get_if_exists", "lifetime",
                  "scheduling_strategy", "max_pending_calls", "on_overload",
                  "overload_timeout"}


def method(*, num_returns: int | str = 1):
    """Declare how many values an actor method returns: ``@nbray.method(num_returns=2)``;
    ``"streaming"`` or ``"dynamic"`` for one that yields (``nbray/generators.py``)."""
    check_num_returns(num_returns)

    def mark(fn):
        fn.__nbray_num_returns__ = num_returns
        return fn
    return mark


def _validate(options: dict) -> dict:
    unknown = set(options) - _ACTOR_OPTIONS
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for an actor; valid options "
                         f"are {sorted(_ACTOR_OPTIONS)}")
    check_resources(options)
    for key, low in (("max_restarts", -1), ("max_task_retries", -1), ("max_concurrency", 1)):
        v = options.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
            raise ValueError(f"{key} must be an integer >= {low}"
                             f"{' (-1: without limit)' if low == -1 else ''}, got {v!r}")
    for key in ("name", "namespace"):
        v = options.get(key)
        if v is not None and (not isinstance(v, str) or (key == "name" and not v)):
            raise TypeError(f"{key} must be a non-empty string, got {v!r}")
    from nbray.util.scheduling_strategies import resolve
    resolve(options.get("scheduling_strategy"))
    from nbray.runtime import admission
    admission.check(options.get("max_pending_calls"), options.get("on_overload"),
                    options.get("overload_timeout"), name="max_pending_calls")
    if options.get("lifetime") not in (None, "non_detached", "detached"):
        raise ValueError(f"lifetime must be None, 'non_detached' or 'detached', got "
                         f"{options['lifetime']!r}")
    if options.get("get_if_exists") and not options.get("name"):
        raise ValueError("get_if_exists=True needs a name")
    return options


def _methods(cls) -> dict:
    """The methods a handle offers: name -> num_returns."""
    out = {}
    for name, member in inspect.getmembers(cls):
        if name.startswith("__") and name != "__call__":
            continue
        if inspect.isfunction(member) or inspect.ismethod(member):
            out[name] = getattr(member, "__nbray_num_returns__", None) or \
                ("streaming" if inspect.isgeneratorfunction(member) or
                 inspect.isasyncgenfunction(member) else 1)
    return out


class ActorClass:
    """A class whose instances live on the cluster. Call ``.remote(...)``, not ``(...)``."""

    def __init__(self, cls, options: dict, _shared: dict | None = None):
        self._cls = cls
        self._options = _validate(dict(options))
        self._shared = _shared if _shared is not None else {}
        self._name = cls.__qualname__
        self.__doc__ = cls.__doc__

    def __call__(self, *args, **kwargs):
        raise TypeError(f"actor class {self._name} cannot be instantiated directly; use "
                        f"{self._name}.remote(...) to create an actor")

    def _pickled(self) -> tuple[bytes, bytes]:
        key = self._options.get("max_concurrency")
        if key not in self._shared:
            try:
                blob = serialization.dumps_function((self._cls, {"max_concurrency": key}))
            except Exception as e:
                raise SerializationError(f"actor class {self._name} cannot be serialized: "
                                         f"{e}") from e
            self._shared[key] = (hashlib.blake2b(blob, digest_size=16).digest(), blob)
        return self._shared[key]

    def remote(self, *args, **kwargs) -> "ActorHandle":
        if backends.engine is not None:
            return backends.engine.create_actor(self, args, kwargs)
        from nbray import api
        opts = self._options
        name, namespace = opts.get("name") or "", opts.get("namespace") or ""
        client = api._client()
        if opts.get("lifetime") == "detached":
            return self._create_detached(client, name, namespace, args, kwargs)
        if name and opts.get("get_if_exists"):
            found = api._lookup_actor(client, name, namespace)
            if found is not None:
                return found
        from nbray.util.scheduling_strategies import resolve
        cls_id, blob = self._pickled()
        resources = {"CPU": opts.get("num_cpus"), "GPU": opts.get("num_gpus", 0),
                     "memory": opts.get("memory", 0), **(opts.get("resources") or {})}
        hold = {k: float(v) for k, v in resources.items() if v}
        placement = dict(hold)
        if opts.get("num_cpus") is None:     # as in Ray: 1 CPU to place it, none held after
            placement["CPU"] = 1.0
        where = resolve(opts.get("scheduling_strategy"))
        group = where.group
        if group is None and opts.get("scheduling_strategy") is None and client.capture_pg:
            group, where = client.capture_pg, where._replace(capture=True)
        placement = where.resources(placement, group)
        if group is not None:
            hold = bundles.task_resources(hold, *group)
        node = client.spread_node(self._shared) if where.spread else where.node
        methods = _methods(self._cls)
        retries = opts.get("max_task_retries", 0)
        retries = 10 ** 9 if retries == -1 else retries
        try:
            actor_id, ref = client.create_actor(
                cls_id, blob, self._name, args, kwargs, placement=placement, hold=hold,
                max_restarts=opts.get("max_restarts", 0), max_task_retries=retries,
                name=name, namespace=namespace, meta={"methods": methods},
                node=node, placement_group=group if where.capture else ())
        except ClusterError as e:
            if "already exists" in str(e):
                raise ValueError(str(e)) from None
            raise
        bound = opts.get("max_pending_calls")
        bound = None if bound in (None, -1) else (bound, opts.get("on_overload") or "block",
                                                  opts.get("overload_timeout"))
        return ActorHandle(actor_id, client.address, self._name, methods, retries, ref, bound)

    def _create_detached(self, client, name: str, namespace: str, args, kwargs):
        """A detached actor is owned by the keeper of this process's node (a worker that is
        never leased), not by this process: it lives on when this process is gone, until
        ``nbray.kill``; a new driver finds it by name."""
        from nbray import api
        if name and self._options.get("get_if_exists"):
            found = api._lookup_actor(client, name, namespace)
            if found is not None:
                return found
        owned_by_keeper = ActorClass(self._cls, {**self._options, "lifetime": None,
                                                 "namespace": namespace}, self._shared)
        try:
            blob = serialization.dumps_function((owned_by_keeper, args, kwargs))
        except Exception as e:
            raise SerializationError(f"detached actor {self._name}: its class or arguments "
                                     f"cannot be serialized: {e}") from e
        keeper = client.request(client.node_address, lambda r: P.KeeperAddress(r), 30.0)
        try:
            return client.request(keeper, lambda r: P.CreateDetached(r, client.address, blob),
                                  30.0)
        except ClusterError as e:
            if "already exists" in str(e):
                raise ValueError(str(e).split(": ", 1)[-1]) from None
            raise

    @property
    def __name__(self) -> str:
        return self._cls.__name__

    def bind(self, *args, **kwargs):
        """A lazy actor for the DAG API (``nbray.dag``), made when the graph is executed."""
        from nbray.dag import ClassNode
        return ClassNode(self, args, kwargs)

    def options(self, **options) -> "ActorClass":
        """A copy with some options changed, e.g. ``Cls.options(name="learner").remote()``."""
        return ActorClass(self._cls, {**self._options, **options}, self._shared)

    def __repr__(self) -> str:
        return f"<nbray actor class {self._name}>"


class ActorHandle(metaclass=ABCMeta):     # ABC: another backend's handles register
    """A reference to an actor: ``handle.method.remote(...)`` calls it."""
    __slots__ = ("_actor_id", "_owner", "_class_name", "_methods", "_retries", "_ref",
                 "_bound", "_limit", "__weakref__")

    def __init__(self, actor_id: bytes, owner: str, class_name: str, methods: dict,
                 retries: int, ref: ObjectRef, bound: tuple | None = None):
        self._actor_id, self._owner, self._class_name = actor_id, owner, class_name
        self._methods, self._retries, self._ref = methods, retries, ref
        self._bound = bound             # (max_pending_calls, on_overload, overload_timeout)
        if bound is None:
            self._limit = None
        else:
            from nbray.runtime.admission import Limit
            self._limit = Limit(("actor", actor_id), bound[0], bound[1], bound[2],
                                f"actor {class_name}")

    def __getattr__(self, name: str) -> "ActorMethod":
        if name.startswith("__") and name != "__call__":
            raise AttributeError(name)
        try:
            num_returns = self._methods[name]
        except KeyError:
            raise AttributeError(f"actor {self._class_name} has no method {name!r}") from None
        return ActorMethod(self, name, num_returns)

    def _actor_id_hex(self) -> str:
        return self._actor_id.hex()

    def __reduce__(self):
        return (_rebuild, (self._actor_id, self._owner, self._class_name, self._methods,
                           self._retries, self._ref, self._bound))

    def __eq__(self, other) -> bool:
        return type(other) is ActorHandle and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)

    def __repr__(self) -> str:
        return f"Actor({self._class_name}, {self._actor_id.hex()})"


def _rebuild(actor_id, owner, class_name, methods, retries, ref, bound=None) -> ActorHandle:
    from nbray.runtime import core_client
    client = core_client.current()
    if client is not None:      # ask where the actor is now, before the first call needs it
        client.adopt_actor(actor_id, owner, class_name, retries)
    return ActorHandle(actor_id, owner, class_name, methods, retries, ref, bound)


class ActorMethod:
    """``handle.method``: call it with ``.remote(...)``."""
    __slots__ = ("_handle", "_name", "_num_returns")

    def __init__(self, handle: ActorHandle, name: str, num_returns: int):
        self._handle, self._name, self._num_returns = handle, name, num_returns

    def __call__(self, *args, **kwargs):
        raise TypeError(f"actor method {self._handle._class_name}.{self._name} cannot be called "
                        f"directly; use .{self._name}.remote(...)")

    def remote(self, *args, **kwargs):
        from nbray import api
        h, n = self._handle, self._num_returns
        generator = GENERATOR_KINDS.get(n, P.NOT_GENERATOR)
        client = api._client()
        refs = client.call_actor(h._actor_id, h._owner, h._class_name, h._retries,
                                 self._name, args, kwargs, 1 if generator else n, h._limit,
                                 generator)
        if generator == P.STREAMING:
            from nbray.generators import ObjectRefGenerator
            return ObjectRefGenerator(refs[0], client)
        return refs[0] if n == 1 or generator else refs

    def bind(self, *args, **kwargs):
        """A lazy call of this live actor for the DAG API (``nbray.dag``)."""
        from nbray.dag import ClassMethodNode
        return ClassMethodNode(self._handle, self._name, self._num_returns, args, kwargs)

    def options(self, *, num_returns: int | None = None, **other) -> "ActorMethod":
        if other:
            raise ValueError(f"unknown option(s) {sorted(other)} for an actor method; the "
                             f"only one is num_returns")
        if num_returns is None:
            return self
        method(num_returns=num_returns)      # validates it
        return ActorMethod(self._handle, self._name, num_returns)

    def __repr__(self) -> str:
        return f"<nbray actor method {self._handle._class_name}.{self._name}>"
