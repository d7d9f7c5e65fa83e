"""``nbray.util.group()``: tasks and actor calls submitted inside the block are scheduled as
one unit when it ends: one pass of the scheduler, the tasks for each worker pushed in one
message, rather than each leaving as it is submitted.

    with nbray.util.group():
        refs = [f.remote(x) for x in xs]
"""
from __future__ import annotations

import contextlib


@contextlib.contextmanager
def group():
    from nbray import api, backends
    if backends.engine is not None:     # another engine schedules each task as it comes
        yield
        return
    client = api._client()
    client.hold_dispatch()
    try:
        yield
    finally:
        client.release_dispatch()
