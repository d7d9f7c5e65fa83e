"""Admission control per caller: how many of a process's tasks (of one function, or of all
without a limit of their own), or of its calls to one actor, may be unfinished at once, and
what ``.remote()`` does when that many are: wait for room (``"block"``, the default; with
``overload_timeout`` at most that long, then raise), or raise ``OverloadedError`` at once
(``"raise"``). A refused submission never leaves the caller: nothing is queued or lost.

Pure: the counting and the policy; the client (``core_client.admit``) does the waiting.
"""
from __future__ import annotations

from dataclasses import dataclass

POLICIES = ("block", "raise")


@dataclass(frozen=True)
class Limit:
    key: tuple                  # what is counted: ("fn", id), ("actor", id) or ("*",)
    max_pending: int
    policy: str = "block"
    timeout: float | None = None
    what: str = ""              # for the error: "remote function f", "actor A"


def check(max_pending, policy, timeout, *, name: str = "max_pending") -> None:
    """Raise for options that make no sense (None: not set)."""
    if max_pending is not None and (isinstance(max_pending, bool) or
                                    not isinstance(max_pending, int) or
                                    (max_pending < 1 and max_pending != -1)):
        raise ValueError(f"{name} must be a positive integer (or -1: no limit), got "
                         f"{max_pending!r}")
    if policy is not None and policy not in POLICIES:
        raise ValueError(f"on_overload must be one of {POLICIES}, got {policy!r}")
    if timeout is not None and (isinstance(timeout, bool) or
                                not isinstance(timeout, (int, float)) or timeout < 0):
        raise ValueError(f"overload_timeout must be a number of seconds >= 0, got "
                         f"{timeout!r}")


class Counts:
    """Unfinished submissions per key (used under the client's lock)."""

    def __init__(self):
        self.pending: dict = {}
        self.refused = 0

    def take(self, limit: Limit) -> bool:
        n = self.pending.get(limit.key, 0)
        if n >= limit.max_pending:
            return False
        self.pending[limit.key] = n + 1
        return True

    def room(self, limit: Limit) -> bool:
        return self.pending.get(limit.key, 0) < limit.max_pending

    def give_back(self, key: tuple) -> None:
        n = self.pending.get(key, 0) - 1
        if n > 0:
            self.pending[key] = n
        else:
            self.pending.pop(key, None)
