"""Remote output: what tasks print goes to the driver that started them, as it happens.

Every task carries an *origin*, ``(driver address, scope)``: a task submitted by a driver gets
the driver's current scope (the notebook cell running, for the IPython extension; 0 in a
script), and a task submitted by a task inherits the origin of the task it runs in, so the
output of nested tasks goes to the cell that started the first one.

A worker replaces its ``sys.stdout`` and ``sys.stderr`` with ``TaskStream``s: text written
while a task runs is buffered under its origin and sent in one ``TaskOutput`` per origin and
stream every ``FLUSH_S`` or ``FLUSH_BYTES``, and when the task ends (before its result). Text
written outside any task goes to the worker's log, as before.

On the driver a ``Printer`` shows it, each line tagged with the task and the worker, and keeps
a flood in check per scope: the first ``HEAD_LINES`` lines of a scope are shown, then at most
``RATE_LINES`` a second; what it drops it counts and says so (``[nbray: N lines ...
dropped]``) at most once every ``NOTE_S`` while the flood lasts, and when the scope finishes,
followed then by the last ``TAIL_LINES`` lines it dropped. A line redrawn with ``\r`` (a
progress bar) counts as its last drawing.
"""
from __future__ import annotations

import collections
import contextvars
import io
import os
import signal
import socket
import sys
import threading
import time

from nbray.runtime import protocol as P

#: the task the current thread (or coroutine) runs: (origin, name, task id), or None
CURRENT: contextvars.ContextVar = contextvars.ContextVar("nbray_task", default=None)

FLUSH_S = 0.02
FLUSH_BYTES = 64 * 1024
HEAD_LINES = 200
RATE_LINES = 50
TAIL_LINES = 10
NOTE_S = 1.0                    # while a flood lasts, what it dropped is said once a second
PARTIAL_MAX = 64 * 1024         # an unfinished line is kept up to this many characters


# ---- the worker's side -------------------------------------------------------------------------
class WorkerOutput:
    """What a worker's tasks print, buffered per (origin, stream, task name) until sent."""

    def __init__(self, client):
        self.client = client
        self.buffers: dict[tuple, list] = {}
        self.size = 0
        self.first_at = 0.0
        self.main = threading.get_ident()
        self.lock = threading.RLock()       # the flush signal may land while it is held
        self._armed = threading.Event()
        self._flusher: threading.Thread | None = None
        self.source = f"pid={os.getpid()}, host={socket.gethostname()}"
        self.streams: list = []
        #: the task the main thread runs: its threads' text is its text
        self.running = None

    def install(self) -> None:
        self.streams = [TaskStream(self, "stdout", sys.stdout),
                        TaskStream(self, "stderr", sys.stderr)]
        sys.stdout, sys.stderr = self.streams
        signal.signal(signal.SIGUSR2, lambda signum, frame: self.send_if_safe())
        signal.siginterrupt(signal.SIGUSR2, False)      # system calls resume after it
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        """A process a task forked (multiprocessing) must not use the worker's sockets: it
        prints where the worker prints outside tasks."""
        sys.stdout, sys.stderr = (s.fallback for s in self.streams)
        self.buffers, self.streams = {}, []
        self.running = None
        CURRENT.set(None)

    def _flush_soon(self) -> None:
        """Text is waiting: a thread sees that it leaves within ``FLUSH_S`` even if the task
        prints nothing more. The worker's sockets are its main thread's: the thread signals
        it, and it sends at once if it is in the task's own code, else at the task's next
        step (a wait in get, or its end)."""
        if self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_loop, name="nbray-output",
                                             daemon=True)
            self._flusher.start()
        self._armed.set()

    def _flush_loop(self) -> None:
        while True:
            self._armed.wait()
            time.sleep(FLUSH_S)     # a timer: let the buffer fill, then send it as one
            if not (self.buffers or any(s._parts for s in self.streams)):
                self._armed.clear()
                continue
            # armed until it is sent: a main thread that could not send now (it waits in
            # get: that loop sends it) is asked again
            if self.client.threaded:
                self.end_task()
            elif self.client.in_user_code and not self.client.blocked_depth:
                os.kill(os.getpid(), signal.SIGUSR2)

    def send_if_safe(self) -> None:
        """Send now, if this is the main thread in a task's own code (not in the runtime's)."""
        client = self.client
        if client.threaded or (threading.get_ident() == self.main and client.in_user_code
                               and not client.blocked_depth and not client.lock._is_owned()
                               and not self.lock._is_owned()):
            self.end_task()

    def end_task(self) -> None:
        """Send all a task printed so far (it ended, or waits): before its result."""
        for stream in self.streams:
            if stream._parts:
                stream._spill()
        if self.buffers:
            self.flush()

    def add(self, current, stream: str, text: str) -> None:
        key = (current[0], stream, current[1])
        with self.lock:
            parts = self.buffers.get(key)
            if parts is None:
                parts = self.buffers[key] = []
                if len(self.buffers) == 1:
                    self.first_at = time.monotonic()
                    self._flush_soon()
            parts.append(text)
            self.size += len(text)
            due = self.size >= FLUSH_BYTES or time.monotonic() - self.first_at >= FLUSH_S
        if due:
            self.flush()

    def flush(self) -> None:
        """Send what is buffered. A worker whose sockets belong to its main thread sends from
        that thread only; text written by other threads waits for it."""
        client = self.client
        if not client.threaded and threading.get_ident() != self.main:
            return
        with self.lock:
            if not self.buffers:
                return
            buffers, self.buffers, self.size = self.buffers, {}, 0
        for (origin, stream, name), parts in buffers.items():
            address, scope = origin
            client._send(address, P.TaskOutput(scope, stream, "".join(parts),
                                               f"{name} {self.source}"))


class TaskStream(io.TextIOBase):
    """A worker's sys.stdout or sys.stderr: a task's text goes to its driver, other text to
    the stream it replaced (the worker's log). Text written by a thread the task started
    goes with the task the worker's main thread runs. Pieces of a line are joined here and
    handed on a line (or a flush) at a time."""

    def __init__(self, output: WorkerOutput, name: str, fallback):
        self.output, self.name, self.fallback = output, name, fallback
        self._current = None
        self._parts: list = []

    def write(self, text: str) -> int:
        current = CURRENT.get() or self.output.running
        if current is None or not current[0]:
            return self.fallback.write(text)
        if current is not self._current:
            self._spill()
            self._current = current
        self._parts.append(text)
        if "\n" in text or len(self._parts) > 64:
            self._spill()
        return len(text)

    def _spill(self) -> None:
        parts, current = self._parts, self._current
        if parts and current is not None:
            self._parts = []
            self.output.add(current, self.name, "".join(parts))

    def flush(self) -> None:
        if CURRENT.get() is None and self.output.running is None:
            self.fallback.flush()
        else:
            self._spill()
            self.output.send_if_safe()

    def isatty(self) -> bool:
        return False

    @property
    def buffer(self):
        """``sys.stdout.buffer``: bytes written there are decoded and go the same way."""
        return _Bytes(self)

    def fileno(self) -> int:
        return self.fallback.fileno()

    @property
    def encoding(self):
        return getattr(self.fallback, "encoding", "utf-8")

    def writable(self) -> bool:
        return True


class _Bytes(io.RawIOBase):
    def __init__(self, stream: TaskStream):
        self.stream = stream

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.stream.write(bytes(data).decode(self.stream.encoding or "utf-8", "replace"))
        return len(data)

    def flush(self) -> None:
        self.stream.flush()


# ---- the driver's side -------------------------------------------------------------------------
class _Flood:
    """One scope's budget of lines."""
    __slots__ = ("shown", "tokens", "at", "dropped", "noted_at", "tail", "partial")

    def __init__(self):
        self.shown = 0
        self.tokens = float(RATE_LINES)
        self.at = time.monotonic()
        self.dropped = 0
        self.noted_at = 0.0
        self.tail: collections.deque = collections.deque(maxlen=TAIL_LINES)
        self.partial: dict = {}          # (stream, source) -> text after the last newline


class Printer:
    """Shows remote output on the driver. ``write(scope, stream, text)`` is where it goes:
    the extension sends it to the notebook cell of the scope; by default it is this process's
    stdout or stderr."""

    def __init__(self, write=None):
        self.write = write or _write_local
        self.scopes: dict[int, _Flood] = {}
        self.lock = threading.Lock()

    def __call__(self, msg: P.TaskOutput) -> None:
        with self.lock:
            flood = self.scopes.get(msg.scope)
            if flood is None:
                flood = self.scopes[msg.scope] = _Flood()
            key = (msg.stream, msg.source)
            text = flood.partial.pop(key, "") + msg.text
            lines = text.split("\n")
            rest = lines.pop()
            if rest:        # an unfinished line waits for its end; a progress bar redraws
                rest = rest[rest.rfind("\r") + 1:] if "\r" in rest.rstrip("\r") else rest
                flood.partial[key] = rest[-PARTIAL_MAX:]
            shown = []
            for line in lines:
                if "\r" in line.rstrip("\r"):
                    line = line[line.rstrip("\r").rfind("\r") + 1:]
                if not self._admit(flood, key, line):
                    continue
                now = time.monotonic()
                if flood.dropped and now - flood.noted_at >= NOTE_S:
                    if shown:           # lines were dropped before this one: say so first
                        self._emit(msg.scope, msg.stream, msg.source, shown)
                        shown = []
                    flood.noted_at = now
                    self._report(msg.scope, flood, tail=False)
                shown.append(line)
            if shown:
                self._emit(msg.scope, msg.stream, msg.source, shown)

    def _admit(self, flood: _Flood, key: tuple, line: str) -> bool:
        """Whether a line is shown: the first HEAD_LINES are, then RATE_LINES a second."""
        if flood.shown < HEAD_LINES:
            flood.shown += 1
            return True
        now = time.monotonic()
        flood.tokens = min(RATE_LINES, flood.tokens + (now - flood.at) * RATE_LINES)
        flood.at = now
        if flood.tokens >= 1:
            flood.tokens -= 1
            flood.shown += 1
            flood.tail.clear()      # the last lines shown at the end come after this one
            return True
        flood.dropped += 1
        flood.tail.append((key, line))
        return False

    def _emit(self, scope: int, stream: str, source: str, lines: list) -> None:
        self.write(scope, stream, "".join(f"({source}) {line}\n" for line in lines))

    def _report(self, scope: int, flood: _Flood, tail: bool = True) -> None:
        """Say how many lines were dropped since the last time (and show the last of them)."""
        last = list(flood.tail) if tail else []
        hidden = flood.dropped - len(last)
        flood.tail.clear()
        flood.dropped = 0
        self.write(scope, "stderr", f"[nbray: {hidden:,} lines of remote output dropped" + (
            f"; the last {len(last)} follow]\n" if tail else "]\n"))
        for (stream, source), line in last:
            self._emit(scope, stream, source, [line])

    def finish(self, scope: int) -> None:
        """The scope is over (its cell ended): unfinished lines are shown, and what was
        dropped is said."""
        with self.lock:
            flood = self.scopes.pop(scope, None)
            if flood is None:
                return
            for key, rest in flood.partial.items():
                if flood.dropped:
                    flood.dropped += 1
                    flood.tail.append((key, rest))
                else:
                    self._emit(scope, key[0], key[1], [rest])
            if flood.dropped:
                self._report(scope, flood)

    def finish_all(self) -> None:
        for scope in list(self.scopes):
            self.finish(scope)


#: where a driver's remote output goes instead of its own stdout and stderr (the IPython
#: extension sets it): ``route(scope, stream, text)``
route = None


def _write_local(scope: int, stream: str, text: str) -> None:
    if route is not None:
        route(scope, stream, text)
        return
    out = sys.stderr if stream == "stderr" else sys.stdout
    out.write(text)
    out.flush()
