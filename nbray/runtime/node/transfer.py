"""Moving objects between nodes: a node pulls, in chunks, the segments its clients need from the
node that wrote them, and keeps the copy for every later reader on this node.

::

    client ── FetchObject ──► its node ── PullChunk x window ──► source node (reads its segment)
       ▲                          │  ◄──────── Chunk ──────────────┘
       └────── Reply(path) ───────┘  (copy written into this node's store, once per object)

Chunks travel node to node over the signed channel: the head never touches the bytes. A copy is
dropped when the source frees the segment it came from (the source tells the nodes it served,
``FreeCopies``); a node that stops removes its copies with the rest of its store.
"""
from __future__ import annotations

import ctypes
import hashlib
import itertools
import mmap
import os
import pickle
import stat
import time
from dataclasses import dataclass, field

from nbray.config import CONFIG
from nbray.runtime import object_store, protocol as P

CHUNK = 8 * 1024 * 1024
WINDOW = 4          # chunks in flight per transfer
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3       # glibc's mallopt parameters


def keep_chunk_buffers() -> bool:
    """Let the allocator reuse the memory of received chunks (a node's process, at start).

    ZeroMQ receives each chunk into a buffer of its own, allocated for it: with glibc's
    defaults a buffer of 8 MB is a fresh mapping, and filling its fresh pages cost the receiving
    node about half of a transfer's time. Served from the heap, and the heap kept, the buffers
    of one transfer are the pages of the last (the node keeps up to ``WINDOW`` chunks of them).
    False where the C library is not glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 2 * WINDOW * CHUNK)) and \
        bool(mallopt(_M_TRIM_THRESHOLD, 4 * WINDOW * CHUNK))


@dataclass(eq=False)
class Fetch:
    key: str                        # the source's path (it names the source's store)
    source: str                     # the source node's address
    path: str                       # the copy, in this node's store
    fd: int
    size: int
    source_id: bytes = b""
    next_offset: int = 0
    inflight: dict = field(default_factory=dict)    # offset -> length asked for
    waiters: list = field(default_factory=list)     # (client peer, request id)
    progress_at: float = field(default_factory=time.monotonic)


class Transfers:
    def __init__(self, node):
        self.node = node
        self.copies: dict[str, str] = {}            # source path -> the local copy
        self.copy_source: dict[str, bytes] = {}     # source path -> the node it came from
        self.fetching: dict[str, Fetch] = {}
        self.by_id: dict[int, Fetch] = {}
        self.served: dict[str, set] = {}            # our path -> node ids that copied it
        self._ids = itertools.count(1)
        self._open: dict[str, list] = {}            # served path -> [fd, size, last use]
        self.bytes_in = 0
        self.bytes_out = 0
        self.parked: list = []          # (peer, FetchObject, deadline): source not known yet

    # ---- the reading side ------------------------------------------------------------------
    def fetch(self, peer, msg: P.FetchObject, park: bool = True) -> None:
        node, loc = self.node, msg.location
        if loc.node_id == node.node_id:
            node.ep.reply(peer, P.Reply(msg.request_id, loc.path))
            return
        key = loc.path
        copy = self.copies.get(key)
        if copy is not None and os.path.exists(copy):
            node.ep.reply(peer, P.Reply(msg.request_id, copy))
            return
        if key in self.fetching:        # one transfer for every reader on this node
            self.fetching[key].waiters.append((peer, msg.request_id))
            return
        source = node.nodes.get(loc.node_id)
        if source is None:
            if park and loc.node_id not in node.known_nodes:
                # a node that joined since our last word from the head: it tells us of it
                # with its next heartbeat answer
                self.parked.append((peer, msg, time.monotonic() + CONFIG.node_timeout_s))
                return
            node.ep.reply(peer, P.Reply(msg.request_id, None, (
                f"the node {loc.node_id.hex()} that holds the object is not alive")))
            return
        path = copy_path(node.session, loc)
        object_store.unlink(path)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW, 0o600)
        except OSError as e:
            node.ep.reply(peer, P.Reply(msg.request_id, None, f"no room for a copy: {e}"))
            return
        try:
            os.ftruncate(fd, loc.size)
        except OSError as e:
            os.close(fd)
            object_store.unlink(path)
            node.ep.reply(peer, P.Reply(msg.request_id, None, f"no room for a copy: {e}"))
            return
        f = Fetch(key, source[0], path, fd, loc.size, loc.node_id,
                  waiters=[(peer, msg.request_id)])
        tid = next(self._ids)
        f.tid = tid
        self.fetching[key], self.by_id[tid] = f, f
        self._pull_more(f)

    def _pull_more(self, f: Fetch) -> None:
        while len(f.inflight) < WINDOW and f.next_offset < f.size:
            n = min(CHUNK, f.size - f.next_offset)
            f.inflight[f.next_offset] = n
            self.node.ep.send(f.source, P.PullChunk(f.tid, f.key, f.next_offset, n))
            f.next_offset += n

    def chunk(self, peer, msg: P.Chunk) -> None:
        f = self.by_id.get(msg.transfer_id)
        if f is None or msg.offset not in f.inflight:
            return
        if msg.error or len(msg.data) != f.inflight[msg.offset]:
            self._end(f, error=msg.error or "a chunk arrived short")
            return
        object_store.pwrite_all(f.fd, msg.data, msg.offset)
        self.bytes_in += len(msg.data)
        f.progress_at = time.monotonic()
        del f.inflight[msg.offset]
        self._pull_more(f)
        if not f.inflight and f.next_offset >= f.size:
            self._end(f)

    def _end(self, f: Fetch, error: str = "") -> None:
        os.close(f.fd)
        del self.fetching[f.key], self.by_id[f.tid]
        if error:
            object_store.unlink(f.path)
        else:
            self.copies[f.key] = f.path
            self.copy_source[f.key] = f.source_id
        for peer, rid in f.waiters:
            self.node.ep.reply(peer, P.Reply(rid, None if error else f.path, error))

    def retry_parked(self) -> None:
        """The head told us of the live nodes: fetch what waited for one of them, and fail
        what waited too long."""
        parked, self.parked = self.parked, []
        now = time.monotonic()
        for peer, msg, deadline in parked:
            if msg.location.node_id in self.node.nodes or now >= deadline:
                self.fetch(peer, msg, park=False)
            else:
                self.parked.append((peer, msg, deadline))

    def check_fetching(self) -> None:
        """Fail the transfers whose source died, or that made no progress for a while."""
        now = time.monotonic()
        for f in list(self.fetching.values()):
            if f.source_id not in self.node.nodes:
                self._end(f, error=f"the node {f.source_id.hex()} that holds it died")
            elif now - f.progress_at > CONFIG.transfer_stall_s:
                self._end(f, error=f"its node sent nothing for {CONFIG.transfer_stall_s:g}s")

    def freed(self, path: str) -> None:
        """Our own segment at ``path`` was freed: the copies made of it go now, and so does
        our hold on it (its pages are released once ZeroMQ has sent the chunks it holds)."""
        self._close(path)
        nodes = self.served.pop(path, ())
        for node_id in nodes:
            self.node.ep.reply((True, node_id), P.FreeCopies((path,)))

    def free_copies(self, peer, msg: P.FreeCopies) -> None:
        for path in msg.paths:
            self._drop_copy(path)

    def source_died(self, node_id: bytes) -> None:
        """A node died: the copies made of its objects go (their owners cannot free them
        through it any more), and so do transfers from it."""
        for path in [p for p, src in self.copy_source.items() if src == node_id]:
            self._drop_copy(path)
        for f in [f for f in self.fetching.values() if f.source_id == node_id]:
            self._end(f, error=f"the node {node_id.hex()} that holds it died")

    def _drop_copy(self, path: str) -> None:
        copy = self.copies.pop(path, None)
        self.copy_source.pop(path, None)
        if copy is not None:
            object_store.unlink(copy)

    # ---- the serving side ------------------------------------------------------------------
    def pull(self, peer, msg: P.PullChunk) -> None:
        node = self.node
        if not object_store.owned_by(node.session, msg.path) or not 0 < msg.length <= CHUNK:
            node.ep.reply(peer, P.Chunk(msg.transfer_id, msg.offset, b"",
                                        "not a segment of this node, or not a chunk"))
            return
        try:
            data = self._chunk_view(msg.path, msg.offset, msg.length)
        except (OSError, ValueError) as e:
            node.ep.reply(peer, P.Chunk(msg.transfer_id, msg.offset, b"",
                                        f"the object's segment is gone ({e})"))
            return
        if peer[0]:
            self.served.setdefault(msg.path, set()).add(peer[1])
        self.bytes_out += len(data)
        # the chunk leaves from the segment's own pages: no copy on this side
        node.ep.send_bulk(peer, P.Chunk(msg.transfer_id, msg.offset, pickle.PickleBuffer(data)))

    def _chunk_view(self, path: str, offset: int, length: int) -> memoryview:
        """The pages of one chunk of a served segment, mapped for as long as ZeroMQ sends
        from them. Each chunk maps its own pages (in one go, not one fault per page): the
        first leaves without waiting for the whole segment to be mapped."""
        entry = self._open.get(path)
        if entry is None:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)     # /dev/shm is everyone's
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
                    raise ValueError("not a segment file of this user")
            except BaseException:
                os.close(fd)
                raise
            entry = self._open[path] = [fd, st.st_size, 0.0]
        fd, size, _ = entry
        entry[2] = time.monotonic()
        if offset >= size:
            raise ValueError(f"offset {offset} is past its end")
        length = min(length, size - offset)
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        mm = mmap.mmap(fd, length + offset - start, flags=flags, prot=mmap.PROT_READ,
                       offset=start)
        if offset + length == size:     # its last chunk: no descriptor held between pulls
            self._close(path)
        return memoryview(mm)[offset - start:]

    def _close(self, path: str) -> None:
        entry = self._open.pop(path, None)
        if entry is not None:
            os.close(entry[0])

    def check_served(self) -> None:
        """Tell the nodes that copied a segment we have freed since, and close it (periodic,
        cheap: a stat per served segment); close segments idle for a few seconds."""
        now = time.monotonic()
        for path in [p for p, (_, _, used) in self._open.items() if now - used > 5.0]:
            self._close(path)
        for path in [p for p in {*self.served, *self._open} if not os.path.exists(p)]:
            self.freed(path)        # (its owner on this node unlinked it itself)

    def close(self) -> None:
        for path in list(self._open):
            self._close(path)


def copy_path(session: str, loc: P.ShmLocation) -> str:
    """Where this node keeps its copy of another node's segment (in its own store)."""
    digest = hashlib.blake2b(loc.node_id + loc.path.encode(), digest_size=16).hexdigest()
    return os.path.join(object_store.store_dir(), f"{object_store.PREFIX}{session}_c{digest}")
