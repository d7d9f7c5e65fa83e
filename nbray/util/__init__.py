"""Utilities on top of the core API: ``ActorPool``, ``group()`` (submit many tasks as one
unit), ``scheduling_strategies``, ``queue.Queue`` (a queue shared by drivers, tasks and
actors) and ``multiprocessing.Pool`` (the standard library's pool on the cluster)."""
from nbray.util import multiprocessing, queue, scheduling_strategies
from nbray.util.actor_pool import ActorPool
from nbray.util.group import group

__all__ = ["ActorPool", "group", "scheduling_strategies", "queue", "multiprocessing"]
