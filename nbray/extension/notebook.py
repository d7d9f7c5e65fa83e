"""What the extension does around every cell of the shell it is loaded in.

- Each cell is a *scope*: the tasks and actor calls it submits carry its number, so what they
  print (and what the tasks they start print) lands in that cell, even after the cell ended,
  and interrupting the cell (the kernel's stop button) cancels exactly that work.
- A ``RemoteError`` shows the remote traceback, highlighted as IPython shows a local one.
- Refs do not stay in the output history: a cell whose value is an ``ObjectRef`` (or a list of
  them) would otherwise pin the object for the life of the kernel through ``Out[n]``.
- An interrupt that lands while the runtime itself is busy (it holds its lock, or is taking
  messages off its sockets) waits until the runtime lets go (within 0.1 s), so it never leaves
  the runtime's state half changed or drops what it received. ipykernel sets its own SIGINT
  handler for each cell, so ours is put in place at the start of each cell and taken away at
  its end.
"""
from __future__ import annotations

import signal
import sys
import threading

from nbray import backends
from nbray.object_ref import ObjectRef

_NOTICE = ("nbray: Out[{n}] is not kept: it holds refs, which would keep their objects alive "
           "for the life of the kernel (assign them to a variable to keep them)")


class NotebookSession:
    """The extension's state in one shell."""

    def __init__(self, shell):
        self.shell = shell
        self.parents: dict[int, dict] = {}     # scope -> the cell's message header
        self.scope = 0
        self.cancelled: dict[int, int] = {}     # scope -> tasks cancelled by its interrupt
        self.noticed_history = False
        self.keep_in_history = False    # this cell's ref is the user's only handle on it
        self._sigint = None

    # ---- life --------------------------------------------------------------------------------
    def start(self) -> None:
        events = self.shell.events
        events.register("pre_run_cell", self.pre_run_cell)
        events.register("post_run_cell", self.post_run_cell)
        from nbray.errors import RemoteError
        self.shell.set_custom_exc((RemoteError,), _show_remote_error)
        backends.notebook().route_output(self.write)

    def stop(self) -> None:
        events = self.shell.events
        for name, fn in (("pre_run_cell", self.pre_run_cell),
                         ("post_run_cell", self.post_run_cell)):
            try:
                events.unregister(name, fn)
            except ValueError:
                pass
        self.shell.set_custom_exc((), None)
        hooks = backends.notebook()
        hooks.route_output(None)
        hooks.stop()
        self._restore_sigint()

    # ---- cells -------------------------------------------------------------------------------
    def pre_run_cell(self, info=None) -> None:
        self.scope = self.shell.execution_count
        hooks = backends.notebook()     # (the engine may have changed since the last cell)
        hooks.route_output(self.write)
        hooks.begin_cell(self.scope)
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if previous != self._on_sigint:
                self._sigint = previous
                signal.signal(signal.SIGINT, self._on_sigint)
        parent = getattr(sys.stdout, "parent_header", None)
        if parent:
            self.parents[self.scope] = parent
            while len(self.parents) > 1000:
                del self.parents[next(iter(self.parents))]

    def post_run_cell(self, result) -> None:
        self._restore_sigint()
        scope = self.scope
        hooks = backends.notebook()
        interrupted = isinstance(getattr(result, "error_in_exec", None), KeyboardInterrupt)
        if hooks.interrupt_pending:         # deferred, never raised
            hooks.interrupt_pending, interrupted = False, True
        n = hooks.end_cell(scope, interrupted)
        if n:
            self.cancelled[scope] = n
            print(f"nbray: interrupted: cancelled {n} remote task(s) and call(s) this cell "
                  f"started, and what they started", file=sys.stderr)
        self._keep_refs_out_of_history(result)

    def _restore_sigint(self) -> None:
        if self._sigint is not None and threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) == self._on_sigint:
            signal.signal(signal.SIGINT, self._sigint)
        self._sigint = None

    def _keep_refs_out_of_history(self, result) -> None:
        if self.keep_in_history:
            self.keep_in_history = False
            return
        value = getattr(result, "result", None)
        if value is None or not _holds_refs(value):
            return
        shell = self.shell
        n = shell.execution_count - 1 if getattr(result, "execution_count", None) is None \
            else result.execution_count
        out = shell.user_ns.get("Out")
        if isinstance(out, dict) and out.get(n) is value:
            del out[n]
        if shell.user_ns.get(f"_{n}") is value:
            del shell.user_ns[f"_{n}"]
        hook = getattr(shell, "displayhook", None)
        for name in ("_", "__", "___"):
            if shell.user_ns.get(name) is value:
                shell.user_ns[name] = ""
            if hook is not None and getattr(hook, name, None) is value:
                setattr(hook, name, "")
        if not self.noticed_history:
            self.noticed_history = True
            print(_NOTICE.format(n=n), file=sys.stderr)

    # ---- output ------------------------------------------------------------------------------
    def write(self, scope: int, stream: str, text: str) -> None:
        """Remote output of ``scope`` into the cell that started it."""
        out = sys.stderr if stream == "stderr" else sys.stdout
        parent = self.parents.get(scope)
        if parent is not None and hasattr(out, "set_thread_parent"):
            token = out.set_thread_parent(parent)
            try:
                out.write(text)     # it leaves with the stream's next flush, in that cell
            finally:
                out.reset_thread_parent(token)
        else:
            out.write(text)
            out.flush()

    # ---- interrupts --------------------------------------------------------------------------
    def _on_sigint(self, signum, frame) -> None:
        hooks = backends.notebook()
        if hooks.busy_in_runtime():
            hooks.interrupt_pending = True      # raised when the runtime lets go
            return
        previous = self._sigint
        if callable(previous) and previous is not self._on_sigint:
            previous(signum, frame)
        else:
            raise KeyboardInterrupt


def _holds_refs(value) -> bool:
    if isinstance(value, ObjectRef):
        return True
    if isinstance(value, (list, tuple, set)):
        return any(isinstance(v, ObjectRef) for v in list(value)[:1000])
    if isinstance(value, dict):
        return any(isinstance(v, ObjectRef) for v in list(value.values())[:1000])
    return False


def _show_remote_error(shell, etype, value, tb, tb_offset=None):
    """A task's exception: its remote traceback, highlighted, under a line naming the task."""
    from pygments import highlight
    from pygments.formatters import TerminalFormatter
    from pygments.lexers import PythonTracebackLexer
    text = getattr(value, "traceback_text", "") or ""
    cause = getattr(value, "cause", value)
    head = (f"\x1b[1;31m{type(cause).__name__}\x1b[0m raised in remote task "
            f"\x1b[1m{getattr(value, 'task_name', '?')}\x1b[0m")
    body = highlight(text, PythonTracebackLexer(), TerminalFormatter()).rstrip("\n")
    stb = [head, body]
    shell._showtraceback(etype, value, stb)
    return stb
