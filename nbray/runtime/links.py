"""Links: Unix stream sockets that drivers and workers on one machine send each other's
messages on, instead of ZeroMQ.

A message through ZeroMQ wakes four threads on its way: the sender's, the sender's I/O thread,
the receiver's I/O thread and the receiver's. A link is a plain socket between the two
processes, so a message wakes only the receiver (measured here: a one-message round trip over a
Unix socket 50 us, over ZeroMQ ipc 94 us). Actor calls and their results, one at a time, are
what this is for.

A client whose ROUTER is bound at ``ipc://P`` listens at ``P.link`` as well. A sender that
talks to such an address the first time connects there, and sends every later message to that
address on the link; an address with no listener (a node, the head, a TCP address) gets none,
and its messages go through ZeroMQ as before. Each link carries messages one way, so the
messages one sender sends one address stay in order, as on a DEALER.

On the wire a message is its length (8 bytes, little-endian) and the same signed frame the
ROUTER gets. A link's first frame is its hello: the sender's address, signed; a link whose hello
is not authentic is closed before anything on it is read as a message, and the sender's address
is what its messages answer to (``(False, address)``, like a message on a DEALER).

Sends never block: what the socket does not take now waits in the link's backlog, in order,
and goes when the socket is writable again (the thread that polls arms it; see
``Endpoint.recv``). The backlog holds whole frames, so a link torn by an exception in the middle
of a send (a KeyboardInterrupt) is closed, never left out of step, and the frames it had not
begun go on through ZeroMQ. A receiver closes a link on the first frame that is not authentic
or not of a sane length: a stream out of step is never read on. A process forked from one with
links drops its copies of them (``os.register_at_fork``), so a child can neither write into its
parent's streams nor keep a dead parent's links open.
"""
from __future__ import annotations

import collections
import hmac
import select
import socket
import struct

_LEN = struct.Struct("<Q")
_CHUNK = 256 * 1024                 # what one read takes from a link
_MAX_FRAME = 1 << 30                # a longer "frame": a stream out of step, not a message
_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)     # a gone receiver is EPIPE, never SIGPIPE
_HELLO = b"link:"
_MAX_HELLO = 4096
_SIG_LEN = 32                       # HMAC-SHA256, as transport.py signs
SUFFIX = ".link"


def path_for(address: str) -> str | None:
    """Where the client bound at ``address`` listens for links (None: it cannot)."""
    return address[len("ipc://"):] + SUFFIX if address.startswith("ipc://") else None


def hello(sign, version: bytes, address: str) -> bytes:
    body = version + _HELLO + address.encode()
    return sign(body) + body


def listen(address: str) -> socket.socket | None:
    path = path_for(address)
    if path is None:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
    except OSError:                 # a path too long for a Unix socket: no links to us
        sock.close()
        return None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class Outbound:
    """The sending end of a link. ``lock`` is held by whoever writes or flushes it (None: only
    the polling thread does). ``backlog`` holds whole frames; ``sent`` is how much of the first
    one (its 8-byte length, then the frame) has gone."""

    __slots__ = ("sock", "fd", "address", "backlog", "sent", "lock", "armed", "dead")

    def __init__(self, sock: socket.socket, address: str, lock=None):
        self.sock, self.fd, self.address = sock, sock.fileno(), address
        self.backlog: collections.deque = collections.deque()
        self.sent = 0
        self.lock = lock
        self.armed = False          # registered for POLLOUT with the poller
        self.dead = False           # its receiver is gone, or it was torn: never written again

    @classmethod
    def connect(cls, address: str, first: bytes, lock=None) -> "Outbound | None":
        path = path_for(address)
        if path is None:
            return None
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError:             # out of descriptors: ZeroMQ, whose sockets exist already
            return None
        sock.setblocking(False)
        try:
            sock.connect(path)
        except OSError:             # nobody listens there (a node, the head) or it is full
            sock.close()
            return None
        link = cls(sock, address, lock)
        try:
            link.write(first)
        except OSError:
            link.close()
            return None
        return link

    def write(self, frame) -> bool:
        """Send one frame; False when it (or part of it) waits in the backlog. An OSError: the
        receiver is gone. Any other exception (an interrupt) leaves the link torn: closed,
        dead, with what it had not begun in ``unsent()``."""
        if self.backlog:
            self.backlog.append(frame)
            return False
        try:
            n = len(frame)
            try:        # a small frame joined to its length: one plain send, the cheapest
                sent = self.sock.send(_LEN.pack(n) + frame, _NOSIGNAL) if n < _CHUNK else \
                    self.sock.sendmsg((_LEN.pack(n), frame), (), _NOSIGNAL)
            except BlockingIOError:
                sent = 0
            if sent < 8 + n:
                self.backlog.append(frame)
                self.sent = sent
                return False
            return True
        except OSError:
            raise
        except BaseException:
            self.tear()
            raise

    def flush(self) -> bool:
        """Send what the backlog holds, as far as the socket takes it; True when it is empty."""
        backlog = self.backlog
        try:
            while backlog:
                frame, done = backlog[0], self.sent
                if done < 8:
                    parts = (_LEN.pack(len(frame))[done:], frame)
                else:
                    parts = (memoryview(frame)[done - 8:],)
                try:
                    n = self.sock.sendmsg(parts, (), _NOSIGNAL)
                except BlockingIOError:
                    return False
                if done + n < 8 + len(frame):
                    self.sent = done + n
                    return False
                backlog.popleft()
                self.sent = 0
        except OSError:
            raise
        except BaseException:
            self.tear()
            raise
        return True

    def tear(self) -> None:
        """An exception in the middle of a send: whatever of the first frame went stays
        unfinished on the stream, so the stream ends here (its receiver drops that part)."""
        self.dead = True
        self.sock.close()

    def unsent(self) -> list:
        """The frames of a torn link that must still go (through ZeroMQ): every frame of its
        backlog, the first too, which its receiver never took whole."""
        frames = list(self.backlog)
        self.backlog.clear()
        self.sent = 0
        return frames

    def hung_up(self) -> bool:
        """Whether its receiver has closed it (it never writes back: readable means closed)."""
        try:
            r, _, _ = select.select([self.fd], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(r)

    def finish(self, deadline_s: float) -> None:
        """Send the backlog, waiting up to ``deadline_s`` seconds in all (the process stops)."""
        import time
        end = time.monotonic() + deadline_s
        while self.backlog and not self.dead:
            left = end - time.monotonic()
            if left <= 0:
                return
            try:
                select.select([], [self.fd], [], left)
                self.flush()
            except OSError:
                return

    def close(self) -> None:
        self.backlog.clear()
        self.sock.close()


def sweep(table: dict) -> None:
    """Drop the links of ``table`` whose receivers have gone (closing them), so a process that
    talked to many short-lived peers does not keep a descriptor for each. Links with a backlog
    are the polling thread's, which finds out by itself."""
    for address, link in list(table.items()):
        if link is not None and not link.backlog and not link.armed and                 (link.dead or link.hung_up()):
            link.close()
            del table[address]


class Inbound:
    """The receiving end of a link: frames out of a byte stream."""

    __slots__ = ("sock", "fd", "peer", "rest", "big", "got", "sign", "version")

    def __init__(self, sock: socket.socket, sign, version: bytes):
        sock.setblocking(False)
        self.sock, self.fd = sock, sock.fileno()
        self.sign, self.version = sign, version
        self.peer = None            # (False, the sender's address), once its hello is read
        self.rest = b""             # the start of a frame not all here yet
        self.big = None             # a large frame being read into its own buffer
        self.got = 0

    def read(self) -> list | None:
        """The frames that are complete now (memoryviews); None when the link is closed."""
        try:
            if self.big is not None:
                n = self.sock.recv_into(memoryview(self.big)[self.got:])
                if n == 0:
                    return None
                self.got += n
                if self.got < len(self.big):
                    return []
                frame, self.big = self.big, None
                return [memoryview(frame)]
            data = self.sock.recv(_CHUNK)
        except BlockingIOError:
            return []
        except OSError:
            return None
        if not data:
            return None
        if self.rest:
            data, self.rest = self.rest + data, b""
        frames = []
        view = memoryview(data)
        off, end = 0, len(data)
        while end - off >= 8:
            n = _LEN.unpack_from(data, off)[0]
            if self.peer is None and n > _MAX_HELLO or n > _MAX_FRAME:
                return None         # not a hello of ours, or a stream out of step
            if end - off - 8 >= n:
                frame = view[off + 8:off + 8 + n]
                off += 8 + n
                if self.peer is None:   # the hello, checked before anything is a message
                    if not self._hello(frame):
                        return None
                else:
                    frames.append(frame)
            elif n > _CHUNK:        # a large frame: the rest goes straight into its buffer
                part = view[off + 8:]
                try:
                    self.big = bytearray(n)
                except MemoryError:
                    return None
                self.big[:len(part)] = part
                self.got = len(part)
                off = end
                break
            else:
                break
        if off < end:
            self.rest = bytes(view[off:])
        return frames

    def _hello(self, frame) -> bool:
        sig = _SIG_LEN
        head = len(self.version) + len(_HELLO)
        body = frame[sig:]
        if len(frame) <= sig + head or bytes(body[:head]) != self.version + _HELLO or \
                not hmac.compare_digest(frame[:sig], self.sign(body)):
            return False
        try:
            self.peer = (False, bytes(body[head:]).decode())
        except UnicodeDecodeError:
            return False
        return True

    def close(self) -> None:
        self.sock.close()
