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
``Endpoint.recv``).
"""
from __future__ import annotations

import collections
import hmac
import socket
import struct

_LEN = struct.Struct("<Q")
_CHUNK = 256 * 1024                 # what one read takes from a link
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
    the polling thread does)."""

    __slots__ = ("sock", "fd", "backlog", "lock", "armed", "dead")

    def __init__(self, sock: socket.socket, lock=None):
        self.sock, self.fd = sock, sock.fileno()
        self.backlog: collections.deque = collections.deque()
        self.lock = lock
        self.armed = False          # registered for POLLOUT with the poller
        self.dead = False           # its receiver is gone

    @classmethod
    def connect(cls, address: str, first: bytes, lock=None) -> "Outbound | None":
        path = path_for(address)
        if path is None:
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(path)
        except OSError:             # nobody listens there (a node, the head) or it is full
            sock.close()
            return None
        link = cls(sock, lock)
        try:
            link.write(first)
        except OSError:
            sock.close()
            return None
        return link

    def write(self, frame) -> bool:
        """Send one frame; False when part of it waits in the backlog (an OSError: the
        receiver is gone)."""
        n = len(frame)
        if n < _CHUNK:
            return self._put(_LEN.pack(n) + frame)
        return self._put(_LEN.pack(n)) & self._put(frame)

    def _put(self, data) -> bool:
        if self.backlog:
            self.backlog.append(data)
            return False
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            self.backlog.append(memoryview(data)[sent:])
            return False
        return True

    def flush(self) -> bool:
        """Send what the backlog holds, as far as the socket takes it; True when it is empty."""
        backlog = self.backlog
        while backlog:
            head = backlog[0]
            try:
                sent = self.sock.send(head)
            except BlockingIOError:
                return False
            if sent < len(head):
                backlog[0] = memoryview(head)[sent:]
                return False
            backlog.popleft()
        return True

    def close(self) -> None:
        self.backlog.clear()
        self.sock.close()


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
            if self.peer is None and n > _MAX_HELLO:
                return None         # not a hello of ours: a large buffer for nobody
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
                self.big = bytearray(n)
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
