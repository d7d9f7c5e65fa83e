"""Utilities on top of the core API: ``ActorPool``."""
from nbray.util.actor_pool import ActorPool

__all__ = ["ActorPool"]
