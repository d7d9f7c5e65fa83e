"""nbray's errors under Ray's names too, so ``from ray.exceptions import ...`` becomes
``from nbray.exceptions import ...``. Each Ray name is the nbray class itself, not a copy:
``except RayTaskError`` and ``except RemoteError`` catch the same errors, and a task's error is
still an instance of the exception the task raised (its ``cause``)."""
from nbray.errors import (ActorDiedError, AuthenticationError, ClusterError, GetTimeoutError,
                          NbrayError, NotInitializedError, ObjectLostError,
                          ObjectStoreFullError, OverloadedError, OwnerDiedError, RemoteError,
                          SerializationError, TaskCancelledError, WorkerCrashedError)

RayError = NbrayError
RayTaskError = RemoteError
RayActorError = ActorDiedError      # nbray has one actor error: the actor is gone, and why

__all__ = [
    "RayError", "RayTaskError", "RayActorError",
    "NbrayError", "RemoteError", "ActorDiedError", "TaskCancelledError", "GetTimeoutError",
    "ObjectLostError", "OwnerDiedError", "WorkerCrashedError", "ObjectStoreFullError",
    "OverloadedError", "SerializationError", "ClusterError", "AuthenticationError",
    "NotInitializedError",
]
