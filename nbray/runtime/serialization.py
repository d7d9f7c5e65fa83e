"""Turning values into bytes and back.

Values are pickled with protocol 5; buffers that support it (numpy arrays) are kept out of band,
so a large value is written to shared memory once and read back as views of it. Plain ``pickle``
is tried first because it is several times faster than cloudpickle; cloudpickle handles what it
cannot (lambdas, classes defined in a notebook).

ObjectRefs nested in a value are recorded while it is pickled (``contained``): the value keeps
them alive for as long as it lives.
"""
from __future__ import annotations

import collections
import io
import linecache
import os
import pickle
import threading
import types

import cloudpickle

from nbray.errors import SerializationError, TaskCancelledError
from nbray.runtime import object_store
from nbray.runtime.protocol import ERROR, INLINE, SHM, ShmLocation, Value

_local = threading.local()


def contained_refs() -> list | None:
    """The list collecting refs pickled on this thread, if a collection is under way."""
    return getattr(_local, "refs", None)


class _Pickler(cloudpickle.Pickler):
    """cloudpickle, keeping each code object's file name (cloudpickle 3.1.3 and later write
    ``<dynamic-code>`` instead, which leaves remote tracebacks without files or source lines).
    The files it saw are collected in ``filenames``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.filenames: set = set()

    def reducer_override(self, obj):
        if type(obj) is types.CodeType:
            self.filenames.add(obj.co_filename)
            return _code_named, (_CODE_REDUCE(obj), obj.co_filename)
        return super().reducer_override(obj)


_CODE_REDUCE = cloudpickle.Pickler.dispatch_table[types.CodeType]


def _code_named(reduced, filename: str) -> types.CodeType:
    rebuild, args = reduced
    code = rebuild(*args)
    return code if code.co_filename == filename else code.replace(co_filename=filename)


def _cloudpickle_dumps(value, protocol=5, buffer_callback=None, filenames=None) -> bytes:
    with io.BytesIO() as f:
        pickler = _Pickler(f, protocol=protocol, buffer_callback=buffer_callback)
        pickler.dump(value)
        if filenames is not None:
            filenames.update(pickler.filenames)
        return f.getvalue()


def _names_by_value_module(data: bytes) -> bool:
    """Whether a plain pickle may name something of a module registered to go by value (a
    false positive only costs a second pickling, by cloudpickle)."""
    modules = cloudpickle.list_registry_pickle_by_value()
    return bool(modules) and any(name.encode() in data for name in modules)


def _dumps(value, buffer_callback=None) -> bytes:
    for dumps in (pickle.dumps, _cloudpickle_dumps):
        buffers: list = []
        try:
            data = dumps(value, protocol=5,
                         buffer_callback=None if buffer_callback is None else buffers.append)
        except TaskCancelledError:
            raise
        except Exception:
            if dumps is _cloudpickle_dumps:
                raise
            continue
        # plain pickle names classes and functions of __main__ (a notebook, a script) and of
        # modules registered with cloudpickle.register_pickle_by_value by reference, which
        # workers cannot resolve: those go by value, through cloudpickle
        if dumps is pickle.dumps and (b"__main__" in data or _names_by_value_module(data)):
            continue
        for b in buffers:
            buffer_callback(b)
        return data


def dumps_collecting(value, buffer_callback=None) -> tuple[bytes, tuple]:
    """Pickle ``value``; return the bytes and the refs found inside it."""
    outer = getattr(_local, "refs", None)
    _local.refs = refs = []
    try:
        data = _dumps(value, buffer_callback)
    finally:
        _local.refs = outer
    return data, tuple(refs)


#: at most this much source (characters, all files together) travels with a function
MAX_SOURCE_CHARS = 256 * 1024


def dumps_function(fn) -> bytes:
    """Pickle a function by value with the source lines of the files its code comes from, so
    a worker's traceback shows them even where the file does not exist (a notebook cell, a
    script on another machine)."""
    filenames: set = set()
    body = _cloudpickle_dumps(fn, filenames=filenames)
    sources, budget = {}, MAX_SOURCE_CHARS
    for name in sorted(filenames):
        lines = linecache.getlines(name)
        size = sum(map(len, lines))
        if lines and size <= budget:
            sources[name] = lines
            budget -= size
    return pickle.dumps((body, sources), protocol=5)


def loads_function(blob: bytes):
    """The other side of ``dumps_function``: register the shipped source lines, load the function."""
    body, sources = pickle.loads(blob)
    for name, lines in sources.items():
        if not os.path.exists(name):    # a notebook cell, or a file of another machine
            # no mtime: linecache.checkcache keeps entries it cannot check against a file
            linecache.cache[name] = (sum(map(len, lines)), None, lines, name)
    return pickle.loads(body)


#: types whose values pickle alone, with nothing nested, so they skip the general path
_SCALARS = frozenset({type(None), bool, int, float, complex, str, bytes})


def serialize(value, inline_threshold: int, shm_path=None) -> Value:
    """Encode a value: inline when small, else into a new shared-memory segment.

    ``shm_path`` is a zero-argument callable giving the path of the segment to create.
    """
    if type(value) in _SCALARS:     # most results: plain pickle always does, no refs inside
        data = pickle.dumps(value, protocol=5)
        if len(data) <= inline_threshold or shm_path is None:
            return Value(INLINE, data)
    buffers: list = []
    try:
        data, contained = dumps_collecting(value, buffers.append)
    except TaskCancelledError:      # a cancel that landed while it pickled: not its fault
        raise
    except Exception as e:
        raise SerializationError(f"a {type(value).__name__} cannot be serialized: {e}") from e
    size = len(data) + sum(memoryview(b).nbytes for b in buffers)
    if size <= inline_threshold or shm_path is None:
        if buffers:
            data, contained = dumps_collecting(value)
        return Value(INLINE, data, contained)
    path = shm_path()
    raw = [b.raw() for b in buffers]
    written = object_store.write_segment(path, data, raw)
    return Value(SHM, ShmLocation(b"", path, written), contained)


def serialize_error(exc: BaseException) -> Value:
    try:
        return Value(ERROR, _dumps(exc))
    except Exception as e:  # an exception that cannot be pickled still has to reach its caller
        fallback = RuntimeError(f"{type(exc).__name__}: {exc} (unpicklable: {e})")
        return Value(ERROR, pickle.dumps(fallback, protocol=5))


def deserialize(value: Value):
    """Decode a Value. ERROR values are returned as exception objects, not raised."""
    kind = value.kind
    if kind == INLINE:
        return pickle.loads(value.payload)
    if kind == SHM:
        data, buffers = object_store.read_segment(value.payload.path)
        return pickle.loads(data, buffers=buffers)
    if kind == ERROR:
        return pickle.loads(value.payload)
    raise ValueError(f"cannot deserialize a value of kind {kind}")


class ArgSlot:
    """Stands in the pickled arguments for a top-level ObjectRef; the worker puts the value there."""
    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index

    def __reduce__(self):
        return (ArgSlot, (self.index,))


EMPTY_ARGS = pickle.dumps(((), {}), protocol=5)


def pack_args(fn_name: str, args: tuple, kwargs: dict, is_ref,
              buffer_callback=None) -> tuple[bytes, list, tuple]:
    """Pickle a call's arguments. Returns (blob, top-level refs, refs nested deeper); large
    buffers (numpy arrays) go to ``buffer_callback`` out of band when one is given."""
    if not args and not kwargs:
        return EMPTY_ARGS, [], ()
    refs = []

    def slot(v):
        if is_ref(v):
            refs.append(v)
            return ArgSlot(len(refs) - 1)
        return v

    args = tuple(slot(a) for a in args)
    kwargs = {k: slot(v) for k, v in kwargs.items()}
    try:
        blob, nested = dumps_collecting((args, kwargs), buffer_callback)
    except TaskCancelledError:      # a cancel that landed while it pickled: not its fault
        raise
    except Exception as e:
        raise _name_bad_argument(fn_name, args, kwargs, e) from e
    return blob, refs, nested


def _name_bad_argument(fn_name, args, kwargs, err) -> SerializationError:
    named = [(f"position {i}", a) for i, a in enumerate(args)] + \
        [(f"keyword {k!r}", v) for k, v in kwargs.items()]
    for where, value in named:
        try:
            _dumps(value)
        except Exception as e:
            return SerializationError(
                f"argument at {where} of {fn_name} ({type(value).__name__}) cannot be "
                f"serialized: {e}")
    return SerializationError(f"arguments of {fn_name} cannot be serialized: {err}")


def unpack_args(blob, values: list) -> tuple[tuple, dict]:
    """``blob`` is the pickled arguments, or a Value in shared memory when they were large."""
    if blob is EMPTY_ARGS or blob == EMPTY_ARGS:
        return (), {}
    args, kwargs = deserialize(blob) if type(blob) is Value else pickle.loads(blob)
    if values:
        args = tuple(values[a.index] if type(a) is ArgSlot else a for a in args)
        kwargs = {k: values[v.index] if type(v) is ArgSlot else v for k, v in kwargs.items()}
    return args, kwargs
