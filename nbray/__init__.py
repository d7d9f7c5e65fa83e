"""nbray: Ray for people who live in notebooks.

Tasks, actors, futures and a shared-memory object store on a ZeroMQ runtime; the API speaks
Ray::

    import nbray
    nbray.init()

    @nbray.remote
    def square(x):
        return x * x

    nbray.get([square.remote(i) for i in range(10)])
"""
from nbray import chaos, dag, dataflow, exceptions, state, util
from nbray.actor import ActorHandle, method
from nbray.api import (available_resources, cancel, cluster_resources, get, get_actor, init,
                       is_initialized, kill, nodes, put, shutdown, wait)
from nbray.errors import (ActorDiedError, ClusterError, GetTimeoutError, NbrayError,
                          ObjectLostError, ObjectStoreFullError, OverloadedError,
                          OwnerDiedError, RemoteError, SerializationError,
                          TaskCancelledError, WorkerCrashedError)
from nbray.generators import DynamicObjectRefGenerator, ObjectRefGenerator
from nbray.object_ref import ObjectRef
from nbray.remote_function import remote
from nbray.runtime_context import get_runtime_context
from nbray.state import timeline


def load_ipython_extension(shell):
    """``%load_ext nbray``: the magics, and remote output and interrupts per cell."""
    from nbray.extension import load_ipython_extension as load
    load(shell)


def unload_ipython_extension(shell):
    from nbray.extension import unload_ipython_extension as unload
    unload(shell)


__version__ = "0.1.0"

from nbray import backends  # noqa: E402  (last: a backend's module imports the API above)
backends.attach_in_worker()

__all__ = [
    "init", "shutdown", "is_initialized",
    "remote", "get", "put", "wait", "cancel",
    "kill", "get_actor", "method",
    "nodes", "cluster_resources", "available_resources", "get_runtime_context",
    "ObjectRef", "ActorHandle", "ObjectRefGenerator", "DynamicObjectRefGenerator",
    "state", "util", "chaos", "timeline", "dataflow", "dag", "exceptions",
    "load_ipython_extension", "unload_ipython_extension",
    "NbrayError", "RemoteError", "GetTimeoutError", "TaskCancelledError", "WorkerCrashedError",
    "ActorDiedError", "ObjectLostError", "OwnerDiedError", "SerializationError", "ClusterError",
    "OverloadedError", "ObjectStoreFullError",
]
