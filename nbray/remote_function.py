"""``@nbray.remote``: a function becomes a remote function, ``f.remote(...)`` a task."""
from __future__ import annotations

import functools
import hashlib
import inspect

from nbray import backends
from nbray.config import CONFIG
from nbray.errors import SerializationError
from nbray.runtime import bundles, protocol as P, serialization

_TASK_OPTIONS = {"num_cpus", "num_gpus", "memory", "resources", "num_returns", "max_retries",
                 "name",
                 "retry_exceptions", "scheduling_strategy", "max_pending", "on_overload",
                 "overload_timeout"}


def check_resources(options: dict) -> None:
    """``num_cpus``, ``num_gpus`` and ``resources`` of a task's or an actor's options."""
    for name in ("num_cpus", "num_gpus", "memory"):
        v = options.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
            raise ValueError(f"{name} must be a non-negative number, got {v!r}")
    res = options.get("resources")
    if res is not None:
        if not isinstance(res, dict):
            raise TypeError(f"resources must be a dict of name -> amount, got {res!r}")
        for k, v in res.items():
            if k in ("CPU", "GPU", "memory"):
                raise ValueError(f"use num_cpus/num_gpus/memory, not resources={{{k!r}: ...}}")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"resource {k!r} must be a non-negative number, got {v!r}")


GENERATOR_KINDS = {"streaming": P.STREAMING, "dynamic": P.DYNAMIC}


def check_num_returns(n) -> None:
    if n is not None and n not in GENERATOR_KINDS and (
            isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"num_returns must be a positive integer, 'streaming' or 'dynamic', "
                         f"got {n!r}")


def generator_kind(fn, num_returns) -> tuple[int, int]:
    """(num_returns as the runtime counts it, generator kind) for a function or method:
    one that yields streams by default, as in Ray."""
    if num_returns is None:
        num_returns = "streaming" if inspect.isgeneratorfunction(fn) or \
            inspect.isasyncgenfunction(fn) else 1
    if num_returns in GENERATOR_KINDS:
        return 1, GENERATOR_KINDS[num_returns]
    return num_returns, P.NOT_GENERATOR


def _validate(options: dict) -> dict:
    unknown = set(options) - _TASK_OPTIONS
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for a remote function; valid "
                         f"options are {sorted(_TASK_OPTIONS)}")
    check_resources(options)
    check_num_returns(options.get("num_returns"))
    r = options.get("max_retries")
    if r is not None and (isinstance(r, bool) or not isinstance(r, int) or r < -1):
        raise ValueError(f"max_retries must be an integer >= -1 (-1: retry forever), got {r!r}")
    e = options.get("retry_exceptions")
    if e is not None and not isinstance(e, bool) and not (
            isinstance(e, (list, tuple)) and e and
            all(isinstance(t, type) and issubclass(t, BaseException) for t in e)):
        raise TypeError(f"retry_exceptions must be True, False or a list of exception types, "
                        f"got {e!r}")
    from nbray.util.scheduling_strategies import resolve
    resolve(options.get("scheduling_strategy"))
    from nbray.runtime import admission
    admission.check(options.get("max_pending"), options.get("on_overload"),
                    options.get("overload_timeout"))
    return options


def _limit(opts: dict, key: tuple, what: str):
    """The admission limit that options ``max_pending``/``on_overload``/``overload_timeout``
    set (None: no limit of its own; -1: none at all, not even the process's)."""
    from nbray.runtime.admission import Limit
    n = opts.get("max_pending")
    if n is None:
        return None
    return Limit(key, n, opts.get("on_overload") or "block", opts.get("overload_timeout"),
                 what)


class RemoteFunction:
    """A function that runs as a task on the cluster. Call ``.remote(...)``, not ``(...)``."""

    def __init__(self, fn, options: dict, _shared: dict | None = None):
        self._function = fn
        self._options = _validate(dict(options))
        self._shared = _shared if _shared is not None else {}   # the pickled function, once
        functools.update_wrapper(self, fn)
        opts = self._options
        resources = {"CPU": opts.get("num_cpus", 1), "GPU": opts.get("num_gpus", 0),
                     "memory": opts.get("memory", 0), **(opts.get("resources") or {})}
        self._resources = {k: float(v) for k, v in resources.items() if v}
        self._num_returns, self._generator = generator_kind(fn, opts.get("num_returns"))
        retries = opts.get("max_retries", CONFIG.default_max_retries)
        self._max_retries = 10 ** 9 if retries == -1 else retries
        self._name = opts.get("name") or getattr(fn, "__qualname__", repr(fn))
        on = opts.get("retry_exceptions")
        self._retry_on = None if not on else (True if on is True else tuple(on))
        from nbray.util.scheduling_strategies import resolve
        where = resolve(opts.get("scheduling_strategy"))
        self._node, self._spread = where.node, where.spread
        self._base_resources = self._resources
        self._placement = ()            # the bundle its tasks' children run in, if captured
        self._resources = where.resources(self._resources)
        if where.group is not None and where.capture:
            self._placement = where.group
        #: with no strategy of its own, a task run in a group that captures runs in it too
        self._inherit = opts.get("scheduling_strategy") is None
        self._limit = _limit(opts, ("fn", self._name), f"remote function {self._name}")

    def __call__(self, *args, **kwargs):
        raise TypeError(f"remote function {self._name} cannot be called directly; use "
                        f"{self._name}.remote(...) to run it as a task")

    def _pickled(self) -> tuple[bytes, bytes]:
        if "blob" not in self._shared:
            try:
                blob = serialization.dumps_function(self._function)
            except Exception as e:
                raise SerializationError(
                    f"remote function {self._name} cannot be serialized (it may capture "
                    f"something unpicklable, like a lock or an open file): {e}") from e
            # the id first: another thread that sees the blob may read the id at once
            self._shared["id"] = hashlib.blake2b(blob, digest_size=16).digest()
            self._shared["blob"] = blob
        return self._shared["id"], self._shared["blob"]

    def remote(self, *args, **kwargs):
        if backends.engine is not None:
            return backends.engine.submit(self, args, kwargs)
        from nbray import api
        fn_id, blob = self._pickled()
        client = api._client()
        resources, node, placement = self._resources, self._node, self._placement
        if self._inherit and client.capture_pg:
            placement = client.capture_pg
            resources = bundles.task_resources(self._base_resources, *placement)
        elif self._spread:
            node = client.spread_node(self._shared)
        refs = client.submit(fn_id, blob, self._name, args, kwargs, self._num_returns,
                             resources, self._max_retries, self._retry_on, node,
                             self._limit, self._generator, placement)
        if self._generator == P.STREAMING:
            from nbray.generators import ObjectRefGenerator
            return ObjectRefGenerator(refs[0], client)
        return refs[0] if self._num_returns == 1 else refs

    def bind(self, *args, **kwargs):
        """A lazy call for the DAG API (``nbray.dag``): runs when the graph is executed."""
        from nbray.dag import FunctionNode
        return FunctionNode(self, args, kwargs)

    def options(self, **options) -> "RemoteFunction":
        """A copy with some options changed, e.g. ``f.options(num_cpus=2).remote(x)``."""
        return RemoteFunction(self._function, {**self._options, **options}, self._shared)

    def __repr__(self) -> str:
        return f"<nbray remote function {self._name}>"


def remote(*args, **options):
    """``@remote`` or ``@remote(num_cpus=..., num_returns=..., max_retries=..., resources=...)``
    on a function (a remote function) or a class (an actor class)."""
    if len(args) == 1 and not options and callable(args[0]):
        return _make(args[0], {})
    if args:
        raise TypeError("@nbray.remote takes keyword options only, e.g. "
                        "@nbray.remote(num_cpus=2)")
    return lambda fn: _make(fn, options)


def _make(target, options: dict):
    if inspect.isclass(target):
        from nbray.actor import ActorClass
        return ActorClass(target, options)
    if not callable(target):
        raise TypeError(f"@nbray.remote decorates a function or a class, got "
                        f"{type(target).__name__}")
    return RemoteFunction(target, options)
