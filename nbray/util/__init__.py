"""Utilities on top of the core API: ``ActorPool``, ``group()`` (submit many tasks as one
unit) and ``scheduling_strategies``."""
from nbray.util import scheduling_strategies
from nbray.util.actor_pool import ActorPool
from nbray.util.group import group

__all__ = ["ActorPool", "group", "scheduling_strategies"]
