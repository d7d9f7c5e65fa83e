"""Utilities on top of the core API: ``ActorPool``, ``group()`` (submit many tasks as one
unit), ``scheduling_strategies``, ``placement_group`` (resources reserved as bundles),
``queue.Queue`` (a queue shared by drivers, tasks and actors) and ``multiprocessing.Pool``
(the standard library's pool on the cluster). The last three load on first use: every
worker imports nbray, and few use them."""
import importlib

from nbray.util import scheduling_strategies
from nbray.util.actor_pool import ActorPool
from nbray.util.group import group

_LAZY = {"queue", "multiprocessing", "placement_group"}


def __getattr__(name: str):
    if name in _LAZY:
        return importlib.import_module(f"nbray.util.{name}")
    raise AttributeError(f"module 'nbray.util' has no attribute {name!r}")


__all__ = ["ActorPool", "group", "scheduling_strategies", "queue", "multiprocessing",
           "placement_group"]
