"""Every error a user of nbray can see.

A task that raised comes back from ``get`` as a :class:`RemoteError` that is *also* an instance
of the exception the task raised, so ``except ValueError`` catches a remote ``ValueError``.
Each way a task can fail without raising (its worker died, it was cancelled, its object is gone)
has its own named error.
"""
from __future__ import annotations


class NbrayError(Exception):
    """Base class of every error raised by nbray itself."""


class RemoteError(NbrayError):
    """A task raised an exception; ``cause`` is that exception, ``traceback_text`` its remote
    traceback and ``task_name`` the function that ran."""

    def __init__(self, cause: BaseException, traceback_text: str, task_name: str):
        # not super(): in a mixed class the next __init__ is the user's exception's own
        BaseException.__init__(self, cause, traceback_text, task_name)
        self.cause = cause
        self.traceback_text = traceback_text
        self.task_name = task_name

    def __str__(self) -> str:
        return (f"task {self.task_name} raised {type(self.cause).__name__}: {self.cause}\n\n"
                f"Remote traceback:\n{self.traceback_text}")

    def __reduce__(self):
        return (RemoteError.from_parts, (self.cause, self.traceback_text, self.task_name))

    @staticmethod
    def from_parts(cause: BaseException, traceback_text: str, task_name: str) -> "RemoteError":
        """The error to raise: a subclass of both RemoteError and the cause's type if possible."""
        cls = type(cause)
        if isinstance(cause, RemoteError):
            return cause
        try:
            mixed = _mixed_class(cls)
            err = mixed.__new__(mixed, *cause.args)
        except TypeError:           # final classes, or layouts that cannot be mixed
            return RemoteError(cause, traceback_text, task_name)
        try:        # the cause's own __init__ restores what lives in C slots (OSError.errno)
            cls.__init__(err, *cause.args)
        except Exception:
            err.args = cause.args
        if isinstance(cause, OSError):     # filename is not part of OSError.args
            err.filename, err.filename2 = cause.filename, cause.filename2
        err.__dict__.update(getattr(cause, "__dict__", {}))
        err.cause, err.traceback_text, err.task_name = cause, traceback_text, task_name
        return err


_MIXED: dict[type, type] = {}


def _mixed_class(cls: type) -> type:
    if cls not in _MIXED:
        _MIXED[cls] = type(f"RemoteError[{cls.__name__}]", (RemoteError, cls),
                           {"__str__": RemoteError.__str__, "__reduce__": RemoteError.__reduce__,
                            "__module__": __name__})
    return _MIXED[cls]


class GetTimeoutError(NbrayError, TimeoutError):
    """``get`` did not see the object before its timeout."""


class TaskCancelledError(NbrayError):
    """The task was cancelled with ``nbray.cancel`` before it produced its result."""


class WorkerCrashedError(NbrayError):
    """The worker running the task died (and retries, if any, were exhausted)."""


class ActorDiedError(NbrayError):
    """The actor is gone (killed, its worker or owner died, restarts used up, or every handle
    to it was dropped); calls to it fail with this error, which says why."""


class OverloadedError(NbrayError):
    """A submission was refused: its caller already has ``max_pending`` unfinished tasks (or
    ``max_pending_calls`` calls to the actor) and its policy says raise, or the wait for room
    ran past ``overload_timeout``. Nothing was submitted."""


class ObjectStoreFullError(NbrayError):
    """The node's object store cannot hold the value (``object_store_memory``, or the shared
    memory left on the machine), even after freeing what it could. Nothing was stored."""


class ObjectLostError(NbrayError):
    """The object's only copy is gone and it cannot be rebuilt."""


class OwnerDiedError(ObjectLostError):
    """The process that owned the object (its submitter or putter) died."""


class SerializationError(NbrayError, TypeError):
    """A value could not be serialized to travel to the cluster."""


class NotInitializedError(NbrayError, RuntimeError):
    """The API was used before ``nbray.init()`` and could not start a cluster."""


class ClusterError(NbrayError, RuntimeError):
    """The cluster could not be started, joined or reached."""


class AuthenticationError(ClusterError):
    """The cluster did not answer messages signed with this key."""
