"""Signed messages over ZeroMQ: authenticate, then unpickle.

Every process owns one :class:`Endpoint`: a ROUTER socket that peers connect to, plus a DEALER
per peer it talks to first. A message is one frame, ``hmac_sha256(key, body) + body`` where
``body`` is the protocol version (one byte) and the pickled message (one frame, not two: on a
2-core machine each extra frame costs a wake-up of ZeroMQ's I/O thread). A message with large
buffers (``send_bulk``) sends each as a frame of its own after the first, which then holds a
signature over everything, a nonce per buffer and the body (see ``Signer.parts``). A frame
whose signature does not match is dropped and counted before anything is unpickled, so a peer without the
cluster key can make us do nothing but a hash; an authentic frame of another protocol version,
or one that does not unpickle to a message, is dropped and counted too, never raised.

Between drivers and workers on one machine the same signed frames go on links instead (Unix
stream sockets, links.py), where the receiver listens for them; everywhere else, ZeroMQ. The
messages ``send`` sends one address stay in order either way. ``send_bulk`` always goes by
ZeroMQ (nodes use it, and nodes have no links), so it keeps no order with ``send`` to the
same address.

Sockets are not thread-safe: one thread polls and sends. Other threads hand work to it through
their own queues and :meth:`Endpoint.wake`.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import itertools
import os
import pickle
import struct
import sys
import threading
import weakref

import zmq
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from nbray.runtime import links, wire
from nbray.runtime.protocol import PROTOCOL_VERSION

_DIGEST = "sha256"
_SIG_LEN = 32
_NONCE_LEN = 12
_VERSION = bytes([PROTOCOL_VERSION])
_IDS = itertools.count()
# plain ints: pyzmq's constants are IntFlags, and ``getsockopt(EVENTS) & POLLIN`` with them
# builds an enum member per message (measured: 4 per round trip, a few microseconds here)
_NOBLOCK, _RCVMORE, _EVENTS, _POLLIN = (int(c) for c in (zmq.NOBLOCK, zmq.RCVMORE, zmq.EVENTS,
                                                          zmq.POLLIN))
#: the most out-of-band buffers one message may carry (more: not a message of ours)
_MAX_BUFFERS = 16
_NEW = object()                     # an address not yet tried for a link
_NO_LOCK = contextlib.nullcontext()


_WITH_LINKS: "weakref.WeakSet[Endpoint]" = weakref.WeakSet()


def _forget_links_in_child() -> None:
    for ep in list(_WITH_LINKS):
        ep._after_fork()


os.register_at_fork(after_in_child=_forget_links_in_child)


def _advertised(endpoint: str) -> str:
    """What peers should connect to: a socket bound to every interface is reached at this
    machine's address on the network, not at 0.0.0.0."""
    for wildcard in ("0.0.0.0", "[::]"):
        if f"://{wildcard}:" in endpoint:
            return endpoint.replace(wildcard, _routable_ip(), 1)
    return endpoint


def _routable_ip() -> str:
    import socket
    try:        # the interface of the default route (a UDP socket sends nothing to connect)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            return s.getsockname()[0]
    except OSError:
        return socket.gethostbyname(socket.gethostname())


def sign(key: bytes, body) -> bytes:
    return hmac.digest(key, body, _DIGEST)


class Signer:
    """HMAC-SHA256 with the keyed state computed once: each message copies it and hashes only
    the body. (A fresh ``hmac.digest`` re-derives the key pads each time: measured here, that
    is about 25 us more per round trip on an idle machine, where caches are cold.)"""

    def __init__(self, key: bytes):
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)
        self._gmac = AESGCM(hmac.digest(key, b"nbray: the key of bulk buffers", _DIGEST))

    def __call__(self, body) -> bytes:
        h = self._keyed.copy()
        h.update(body)
        return h.digest()

    def bulk(self, body, buffers) -> bytes:
        """What the first frame of a message sent as several frames starts with: the
        signature, then a fresh random nonce per buffer (see ``parts``)."""
        nonces = os.urandom(_NONCE_LEN * len(buffers))
        return self.parts(body, buffers, nonces) + nonces

    def parts(self, body, buffers, nonces) -> bytes:
        """The signature of a message sent as several frames: HMAC over the number and lengths
        of its frames (so no byte can move between them unnoticed), the buffers' nonces, its
        body, and each buffer's GMAC tag. A buffer's bytes go through GMAC (AES-GCM with
        nothing to encrypt, under a key of its own derived from the cluster key) instead of
        HMAC-SHA256: measured here, 16.7 GB/s against 1.34, and both ends of a transfer
        between nodes hash every byte."""
        h = self._keyed.copy()
        views = [memoryview(b).cast("B") for b in buffers]
        h.update(struct.pack(f"<{len(views) + 2}Q", len(views), memoryview(body).nbytes,
                             *(v.nbytes for v in views)))
        h.update(nonces)
        h.update(body)
        for i, v in enumerate(views):
            h.update(self._gmac.encrypt(nonces[i * _NONCE_LEN:(i + 1) * _NONCE_LEN], b"", v))
        return h.digest()


def dumps(msg, buffer_callback=None) -> bytes:
    """The signed part of a frame: the protocol version, then the pickled message (in the
    form ``wire.py`` gives it; its buffers out of band when ``buffer_callback`` is given)."""
    return _VERSION + pickle.dumps(wire.encode(msg), protocol=5,
                                   buffer_callback=buffer_callback)


class Endpoint:
    """The sockets of one process. ``recv`` yields ``(peer, msg)``; answer with ``reply(peer, m)``.

    ``peer`` is ``(True, identity)`` for a message that arrived on our ROUTER and
    ``(False, address)`` for one that arrived on a DEALER we opened.
    """

    def __init__(self, key: bytes, identity: bytes, bind: list[str] = (), link: bool = False):
        self.key = key
        self.sign = Signer(key)
        self.identity = identity
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.RCVHWM, 0)
        self.router.setsockopt(zmq.SNDHWM, 0)
        self.addresses: list[str] = []
        for addr in bind:
            self.router.bind(addr)
            self.addresses.append(_advertised(self.router.getsockopt(zmq.LAST_ENDPOINT).decode()))
        self.dealers: dict[str, zmq.Socket] = {}
        self.poller = zmq.Poller()
        self.poller.register(self.router, zmq.POLLIN)
        self._by_socket = {self.router: None}
        self.rejected = 0
        self.malformed = 0          # authentic, but another version or not a message
        self.sent = 0
        self.received = 0
        # wake-up pipe for other threads of this process
        name = f"inproc://wake-{os.getpid()}-{next(_IDS)}"
        self._wake_r = self.ctx.socket(zmq.PULL)
        self._wake_r.bind(name)
        self._wake_w = self.ctx.socket(zmq.PUSH)
        self._wake_w.connect(name)
        self._wake_lock = threading.Lock()
        self.poller.register(self._wake_r, zmq.POLLIN)
        # links (links.py): a listener when ``link`` and bound at an ipc address; sending ends
        # by address (None: that address has no listener, so ZeroMQ) when ``link``
        self._listener = links.listen(self.addresses[0]) if link and self.addresses else None
        self._listener_fd = -1
        self._forked = False            # a copy in a forked child (see _after_fork)
        self._spare = None              # a descriptor kept to refuse links when out of them
        self.refused_links = 0
        if self._listener is not None:
            self._listener_fd = self._listener.fileno()
            self.poller.register(self._listener_fd, zmq.POLLIN)
            self._spare = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._hello = links.hello(self.sign, _VERSION, self.addresses[0]) \
            if link and self.addresses else None
        self._out: dict | None = {} if self._hello is not None else None
        self._link_of: dict = {}                # descriptor -> Inbound / Outbound polled
        self._backlog: set = set()              # Outbounds with a backlog, or dead
        self._pushers: list = []
        if self._hello is not None:
            _WITH_LINKS.add(self)

    def _after_fork(self) -> None:
        """In a forked child: let go of the parent's links (the streams and the listener stay
        the parent's alone) and send by ZeroMQ only."""
        self._forked = True
        held = [*self._link_of.values(), *(self._out or {}).values(), *self._backlog,
                *(v for p in self._pushers for v in p.links.values())]
        for link in held:
            if link is not None:
                link.sock.close()
        for p in self._pushers:
            p.links.clear()
        if self._listener is not None:
            self._listener.close()
        if self._spare is not None:
            os.close(self._spare)
        self._listener = self._spare = self._hello = self._out = None
        self._link_of, self._backlog = {}, set()

    @property
    def address(self) -> str:
        return self.addresses[0]

    # ---- sending ---------------------------------------------------------------------------
    def connect(self, address: str) -> zmq.Socket:
        sock = self.dealers.get(address)
        if sock is None:
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.IDENTITY, self.identity)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, 0)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.connect(address)
            self.dealers[address] = sock
            self._by_socket[sock] = address
            self.poller.register(sock, zmq.POLLIN)
        return sock

    def disconnect(self, address: str) -> None:
        sock = self.dealers.pop(address, None)
        if sock is not None:
            self.poller.unregister(sock)
            del self._by_socket[sock]
            sock.close(0)

    def _frame(self, msg) -> bytes:
        body = dumps(msg)
        return self.sign(body) + body

    def send(self, address: str, msg) -> None:
        frame = self._frame(msg)
        out = self._out
        if out is not None:
            link = self._link_to(out, address, None)
            if link is not None:
                self._write(out, address, link, frame, self._resend)
                self.sent += 1
                return
        self.connect(address).send(frame, copy=True)
        self.sent += 1

    def _link_to(self, table: dict, address: str, lock):
        """The link to ``address`` (None: ZeroMQ), connected the first time. A torn link's
        address goes by ZeroMQ from then on."""
        link = table.get(address, _NEW)
        if link is _NEW:
            links.sweep(table)          # first the links whose receivers have gone
            link = table[address] = links.Outbound.connect(address, self._hello, lock)
        elif link is not None and link.dead and not link.backlog:
            link = table[address] = None
        return link

    def _resend(self, address: str, frames: list) -> None:
        """The frames a torn link had not sent, through ZeroMQ (the polling thread's)."""
        sock = self.connect(address)
        for frame in frames:
            sock.send(frame, copy=True)

    def _write(self, table: dict, address: str, link, frame, resend) -> bool:
        """Send a frame on a link; True when the link now needs the polling thread (a backlog
        to send when the socket is writable, or a receiver gone). Called under ``link.lock``.
        A link torn by an exception sends the frames it had not begun with ``resend``."""
        try:
            if link.write(frame):
                return False
        except OSError:                 # the receiver is gone: what it was sent is lost, as
            link.dead = True            # through ZeroMQ; later messages go there by ZeroMQ
            table[address] = None
        except BaseException:
            table[address] = None
            resend(address, link.unsent())
            raise
        if link in self._backlog:
            return False
        self._backlog.add(link)
        return True

    def _drain(self, link) -> None:
        """The polling thread: send a link's backlog, (un)register it for POLLOUT, or close
        it when its receiver is gone."""
        with link.lock or _NO_LOCK:
            if not link.dead:
                try:
                    if not link.flush():
                        if not link.armed:
                            link.armed = True
                            self._link_of[link.fd] = link
                            self.poller.register(link.fd, zmq.POLLOUT)
                        return
                except OSError:
                    link.dead = True
                except BaseException:   # torn (it is dead now): the rest goes by ZeroMQ
                    self._resend(link.address, link.unsent())
                    self._forget(link)
                    raise
            self._forget(link)

    def _forget(self, link) -> None:
        """Stop polling a link that has no backlog left; close it when it is dead."""
        self._backlog.discard(link)
        if link.armed:
            link.armed = False
            del self._link_of[link.fd]
            self.poller.unregister(link.fd)
        if link.dead:
            link.close()

    def send_bulk(self, to, msg) -> None:
        """Send a message whose large buffers (``pickle.PickleBuffer`` fields) travel as frames
        of their own, not copied (zmq sends them from where they are); ``to`` is an address or
        a peer. The signature covers the body and every buffer."""
        buffers: list = []
        body = dumps(msg, buffers.append)
        raws = [b.raw() for b in buffers]
        frames = [self.sign.bulk(body, raws) + body, *raws]
        if type(to) is tuple and to[0]:
            self.router.send_multipart([to[1], *frames], copy=False)
        else:
            self.connect(to[1] if type(to) is tuple else to).send_multipart(frames, copy=False)
        self.sent += 1

    def reply(self, peer, msg) -> None:
        on_router, who = peer
        if on_router:
            self.router.send_multipart((who, self._frame(msg)))
            self.sent += 1
        else:
            self.send(who, msg)

    def push_sender(self) -> "PushSender":
        """Send-only sockets for threads other than the one that polls (see PushSender)."""
        pusher = PushSender(self)
        self._pushers.append(pusher)
        return pusher

    def wake(self) -> None:
        """Interrupt a ``recv`` blocked in another thread."""
        with self._wake_lock:
            self._wake_w.send(b"", zmq.NOBLOCK)

    # ---- receiving -------------------------------------------------------------------------
    def recv(self, timeout_ms: float | None, limit: int = 1000) -> list:
        """Wait up to ``timeout_ms`` (None: forever) and return every authentic message ready."""
        out = []
        if self._backlog:
            for link in list(self._backlog):
                self._drain(link)
        link_of = self._link_of
        for sock, _ in self.poller.poll(timeout_ms):
            link = link_of.get(sock)
            if link is not None:
                if type(link) is links.Inbound:
                    self._read_link(link, out)
                else:
                    self._drain(link)
                continue
            if sock == self._listener_fd:
                self._accept()
                continue
            if sock is self._wake_r:
                while sock.poll(0):
                    sock.recv()
                continue
            address = self._by_socket.get(sock)
            on_router = address is None
            for _ in range(limit):
                # plain recv, not recv_multipart: each libzmq call costs two system calls here
                try:
                    first = sock.recv(_NOBLOCK)
                except zmq.Again:
                    break
                # on the ROUTER the sender's identity comes first (a message there always has
                # a frame after it); the rest of a message is there once its first frame is
                main = sock.recv() if on_router else first
                more = sock.getsockopt(_RCVMORE)
                extra = None
                if more:                        # out-of-band buffers
                    extra = []
                    while more and len(extra) < _MAX_BUFFERS:
                        extra.append(sock.recv(copy=False))
                        more = sock.getsockopt(_RCVMORE)
                    if more:
                        self.rejected += 1      # not the shape we send: drop all its frames
                        while sock.getsockopt(_RCVMORE):
                            sock.recv()
                        continue
                msg = self._verify(main, extra)
                if msg is not None:
                    out.append(((True, first) if on_router else (False, address), msg))
                if not sock.getsockopt(_EVENTS) & _POLLIN:
                    break
        return out

    def _read_link(self, link, out: list) -> None:
        frames = link.read()
        if frames is None:              # closed by its sender, or not a link of ours
            if link.peer is None:
                self.rejected += 1
            self._drop_link(link)
            return
        peer = link.peer
        for frame in frames:
            msg = self._verify(frame)
            if msg is None:             # a stream out of step, or a peer not of ours: what
                self._drop_link(link)   # follows on it cannot be trusted to be framed
                return
            out.append((peer, msg))

    def _drop_link(self, link) -> None:
        del self._link_of[link.fd]
        self.poller.unregister(link.fd)
        link.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (OSError, ValueError) as e:     # none waiting, or out of descriptors
                if getattr(e, "errno", None) in (errno.EMFILE, errno.ENFILE):
                    self._refuse_one()
                return
            link = links.Inbound(sock, self.sign, _VERSION)
            self._link_of[link.fd] = link
            self.poller.register(link.fd, zmq.POLLIN)

    def _refuse_one(self) -> None:
        """Out of descriptors: take the waiting connection with the one kept spare and close
        it, so its sender goes by ZeroMQ (and the listener does not stay readable for ever)."""
        if self._spare is None:
            return
        os.close(self._spare)
        try:
            sock, _ = self._listener.accept()
            sock.close()
        except OSError:
            pass
        finally:
            try:
                self._spare = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self._spare = None
        self.refused_links += 1

    def _verify(self, frame: bytes, extra=None):
        view = memoryview(frame)
        buffers = None if extra is None else [f.buffer for f in extra]
        start = _SIG_LEN if buffers is None else _SIG_LEN + _NONCE_LEN * len(buffers)
        body = view[start:]
        if len(frame) <= start + 1 or not hmac.compare_digest(
                view[:_SIG_LEN], self.sign(body) if buffers is None else
                self.sign.parts(body, buffers, view[_SIG_LEN:start])):
            self.rejected += 1
            return None
        if body[0] != PROTOCOL_VERSION:
            self._malformed(f"protocol version {body[0]}, this process speaks "
                            f"{PROTOCOL_VERSION} (is nbray the same version everywhere?)")
            return None
        try:
            msg = wire.decode(pickle.loads(body[1:], buffers=buffers))
        except Exception as e:          # a peer with the key but other message classes
            self._malformed(f"a message that does not unpickle here: {type(e).__name__}: {e}")
            return None
        self.received += 1
        return msg

    def _malformed(self, what: str) -> None:
        self.malformed += 1
        if self.malformed == 1:         # say it once: a peer in a loop would flood the log
            print(f"nbray: dropped {what}", file=sys.stderr, flush=True)

    def __enter__(self) -> "Endpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self, linger_ms: int = 0) -> None:
        """Close every socket; ``linger_ms`` gives messages already sent that long to leave
        (on ZeroMQ and on links alike)."""
        outbound = [*(self._out or {}).values(), *self._backlog]
        for p in self._pushers:
            with p.lock:
                outbound.extend(p.links.values())
        if linger_ms > 0:
            import time
            end = time.monotonic() + linger_ms / 1000
            for link in outbound:
                if link is not None and link.backlog:
                    link.finish(max(0.0, end - time.monotonic()))
        self.ctx.destroy(linger=linger_ms)
        for link in [*self._link_of.values(), *outbound]:
            if link is not None:
                link.close()
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
        if self._forked:                # the files are the parent's
            return
        if self._listener is not None:
            self._listener.close()
            try:
                os.unlink(links.path_for(self.addresses[0]))
            except OSError:
                pass
        for addr in self.addresses:         # ZeroMQ leaves the files of ipc sockets behind
            if addr.startswith("ipc://"):
                try:
                    os.unlink(addr[len("ipc://"):])
                except OSError:
                    pass


_FAILED_HANDLERS: set = set()


def guarded(handler, server, peer, msg) -> None:
    """Run a message handler; a handler that fails (a malformed message, or a bug) is reported
    once per message type and the process carries on with the next message."""
    try:
        handler(server, peer, msg)
    except Exception:
        if type(msg) not in _FAILED_HANDLERS:
            _FAILED_HANDLERS.add(type(msg))
            import traceback
            print(f"nbray: handling a {type(msg).__name__} failed (reported once):",
                  file=sys.stderr, flush=True)
            traceback.print_exc()


class PushSender:
    """DEALER sockets that user threads send on directly, under a lock, without handing the
    message to the polling thread: a driver's ``f.remote()`` goes out at once. Nothing ever
    answers on them (workers send results to the owner's ROUTER), so nobody needs to poll them.
    """

    def __init__(self, ep: Endpoint):
        self.ep = ep
        self.lock = threading.Lock()
        self.socks: dict[str, zmq.Socket] = {}
        self.links: dict = {}                   # address -> Outbound (None: ZeroMQ)
        self.sent = 0

    def send(self, address: str, msg) -> None:
        ep = self.ep
        frame = ep._frame(msg)
        with self.lock:
            if ep._hello is not None:           # a link of our own to that client
                link = ep._link_to(self.links, address, self.lock)
                if link is not None:
                    if ep._write(self.links, address, link, frame, self._resend):
                        ep.wake()               # the polling thread sends the rest
                    self.sent += 1
                    return
            self._dealer(address).send(frame, copy=True)
            self.sent += 1

    def _dealer(self, address: str) -> zmq.Socket:
        sock = self.socks.get(address)
        if sock is None:
            sock = self.socks[address] = self.ep.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.connect(address)
        return sock

    def _resend(self, address: str, frames: list) -> None:
        sock = self._dealer(address)
        for frame in frames:
            sock.send(frame, copy=True)
