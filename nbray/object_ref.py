"""ObjectRef: a future for a value somewhere in the cluster.

A ref names its object (20 bytes: the owner's client id, a sequence number, a return index) and
its owner, the process that submitted the task or put the value. The owner keeps the value (or
where it lies) for as long as a ref to it exists anywhere; refs count themselves with the client
of the process they live in, and pickling one into a value or an argument makes the receiver a
borrower the owner knows about.
"""
from __future__ import annotations

from abc import ABCMeta

from nbray.runtime import serialization

ID_SIZE = 20        # the owner's client id (8), its task sequence number (8), return index (4)


class ObjectRef(metaclass=ABCMeta):   # ABC: another backend's refs register as ObjectRefs
    __slots__ = ("_id", "_owner", "_client", "__weakref__")

    def __init__(self, object_id: bytes, owner: str = "", _client=None):
        self._id = object_id
        self._owner = owner
        self._client = _client
        if _client is None:
            from nbray import backends
            if backends.engine is not None:
                raise TypeError(f"on the {backends.engine.name} backend refs are its own; "
                                f"build one with its API")
            if not isinstance(object_id, bytes) or len(object_id) != ID_SIZE:
                raise ValueError(f"an ObjectRef is built from the {ID_SIZE} bytes of an object "
                                 f"id (bytes.fromhex(ref.hex())), got {object_id!r}")
            _adopt(self, by_id=True)

    def binary(self) -> bytes:
        return self._id

    def hex(self) -> str:
        return self._id.hex()

    @property
    def owner_address(self) -> str:
        return self._owner

    def task_id(self) -> bytes:
        return self._id[:16]

    def __hash__(self) -> int:
        return hash(self._id)

    def __eq__(self, other) -> bool:
        return type(other) is ObjectRef and other._id == self._id

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    def __reduce__(self):
        collected = serialization.contained_refs()
        if collected is not None:
            collected.append((self._id, self._owner))
        return (_rebuild, (self._id, self._owner))

    def __del__(self):
        client = self._client
        if client is not None:
            client.released.append(self._id)

    def future(self):
        """A ``concurrent.futures.Future`` of the value (``nbray.futures``)."""
        from nbray import futures
        return futures.future(self)

    def __await__(self):
        import asyncio
        return asyncio.wrap_future(self.future()).__await__()


def _rebuild(object_id: bytes, owner: str) -> ObjectRef:
    ref = ObjectRef.__new__(ObjectRef)
    ref._id, ref._owner, ref._client = object_id, owner, None
    _adopt(ref)
    return ref


def _adopt(ref: ObjectRef, by_id: bool = False) -> None:
    """Count a ref that arrived in this process (or was built from an id: ``by_id``) with the
    process's client, if there is one."""
    from nbray.runtime import core_client
    client = core_client.current()
    if client is not None:
        client.adopt(ref, by_id)
