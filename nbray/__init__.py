"""nbray: Ray for people who live in notebooks.

Tasks, futures and a shared-memory object store on a ZeroMQ runtime; the API speaks Ray::

    import nbray
    nbray.init()

    @nbray.remote
    def square(x):
        return x * x

    nbray.get([square.remote(i) for i in range(10)])
"""
from nbray.api import cancel, get, init, is_initialized, put, shutdown, wait
from nbray.errors import (ClusterError, GetTimeoutError, NbrayError, ObjectLostError,
                          OwnerDiedError, RemoteError, SerializationError, TaskCancelledError,
                          WorkerCrashedError)
from nbray.object_ref import ObjectRef
from nbray.remote_function import remote

__version__ = "0.1.0"

__all__ = [
    "init", "shutdown", "is_initialized",
    "remote", "get", "put", "wait", "cancel",
    "ObjectRef",
    "NbrayError", "RemoteError", "GetTimeoutError", "TaskCancelledError", "WorkerCrashedError",
    "ObjectLostError", "OwnerDiedError", "SerializationError", "ClusterError",
]
