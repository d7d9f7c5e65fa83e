"""A progress bar for a long ``get`` of many refs: a widget in a notebook, text elsewhere.

``nbray.get(refs)`` on a list of at least ``progress_min_refs`` refs (100) that is not all
ready after ``progress_after_s`` (1 s) shows how many are done, until all are, then the values
are read as usual; ``nbray.wait(refs, num_returns=k)`` likewise until ``k`` are. ``progress=
True`` shows it for any list at once, ``progress=False`` never.
Tasks (workers) never show one: their output would land in the notebook.
"""
from __future__ import annotations

import sys
import time

from nbray.config import CONFIG

STEP_S = 0.2


def wanted(in_worker: bool, refs: list, progress) -> bool:
    if progress is False or in_worker:
        return False
    return bool(progress) or len(refs) >= CONFIG.progress_min_refs


def wait_with_bar(wait, refs: list, timeout: float | None, show_now: bool,
                  num_returns: int | None = None) -> None:
    """Wait for ``num_returns`` of ``refs`` (all by default) with a bar; returns at the
    deadline too (the caller's get raises, its wait returns what is ready). ``wait(refs, n,
    timeout)`` is the engine's: ``(ready, not ready)``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pending = list(dict.fromkeys(refs))
    goal = len(pending) if num_returns is None else num_returns
    first = 0.0 if show_now else CONFIG.progress_after_s
    if deadline is not None:
        first = min(first, max(0.0, deadline - time.monotonic()))
    ready, pending = wait(pending, min(goal, len(pending)), first)
    done = len(ready)
    if done >= goal:
        return
    bar = _bar(goal, done, "nbray.get" if num_returns is None else "nbray.wait")
    try:
        while done < goal:
            step = STEP_S if deadline is None else min(STEP_S, deadline - time.monotonic())
            if step <= 0:
                return
            ready, pending = wait(pending, min(goal - done, len(pending)), step)
            if ready:
                done += len(ready)
                bar.update(min(len(ready), goal - bar.n))
    finally:
        bar.close()


def _bar(total: int, done: int, desc: str):
    if _in_notebook():
        try:
            from tqdm.notebook import tqdm
            return tqdm(total=total, initial=done, desc=desc, unit="obj")
        except ImportError:         # no ipywidgets: text, below
            pass
    from tqdm import tqdm
    return tqdm(total=total, initial=done, desc=desc, unit="obj", file=sys.stderr,
                dynamic_ncols=True)


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None or "ipykernel" not in sys.modules:
        return False
    try:
        ip = shell.get_ipython()
    except Exception:
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"
