"""The node's shared-memory object store: one file per object in /dev/shm.

Any process on the node writes a large value straight into a new segment (no round trip to the
node) and any process reads it by mapping the file read-only, so numpy arrays inside are views
of the shared pages: zero copies after the write. Unlinking a segment frees it once the last
reader drops its views (POSIX semantics), so freeing never invalidates an array in use.

Layout of a segment::

    b"NBRAYOB1" | u64 pickle_len | u32 nbuf | nbuf x (u64 offset, u64 length) | pickle | buffers

Buffers start on 64-byte boundaries so numpy's aligned loads stay aligned.
"""
from __future__ import annotations

import glob
import mmap
import os
import struct
import tempfile

MAGIC = b"NBRAYOB1"
_HEAD = struct.Struct("<8sQI")
_BUF = struct.Struct("<QQ")
_ALIGN = 64
PREFIX = "nbray_"


def store_dir() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


def segment_path(session: str, object_id: bytes) -> str:
    return os.path.join(store_dir(), f"{PREFIX}{session}_{object_id.hex()}")


#: shared memory left free on the machine, whatever the store's own limit
RESERVE_BYTES = 64 * 1024 * 1024
#: called before a full store refuses a write: each frees what its process can (the client
#: registers one that frees the objects whose refs were dropped)
FREE_HOOKS: list = []


def ensure_room(path: str, size: int) -> None:
    """Refuse a segment of ``size`` bytes that the store cannot hold: more than
    ``object_store_memory`` in all for this session (when set), or more than the machine's
    shared memory has left. Raises ``ObjectStoreFullError``; a process first frees what it
    can (its unreferenced objects) and tries once more."""
    import gc

    from nbray.config import CONFIG
    from nbray.errors import ObjectStoreFullError
    why = _no_room(path, size, CONFIG.object_store_memory)
    if why:
        gc.collect()                    # refs nobody holds any more free their segments
        for hook in list(FREE_HOOKS):
            hook()
        why = _no_room(path, size, CONFIG.object_store_memory)
    if why:
        raise ObjectStoreFullError(f"the object store cannot hold {size:,} more bytes: {why}")


def _no_room(path: str, size: int, capacity: int) -> str:
    directory, name = os.path.split(path)
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    if size > free - RESERVE_BYTES:
        return (f"{directory} has {free:,} bytes free and keeps {RESERVE_BYTES:,} for the "
                f"machine")
    if capacity > 0:
        session = name[len(PREFIX):].rsplit("_", 1)[0]
        used = 0
        for p in glob.glob(os.path.join(directory, f"{PREFIX}{session}_*")):
            try:
                used += os.stat(p).st_size
            except FileNotFoundError:
                continue
        if used + size > capacity:
            return (f"{used:,} of its {capacity:,} bytes (object_store_memory) are in use; "
                    f"free objects (drop their refs) or start it with more")
    return ""


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def write_segment(path: str, data: bytes, buffers: list) -> int:
    """Write a pickle and its out-of-band buffers to a new segment; return its size."""
    views = [memoryview(b).cast("B") for b in buffers]
    header_len = _HEAD.size + _BUF.size * len(views)
    offset = _aligned(header_len + len(data))
    table = []
    for v in views:
        table.append((offset, v.nbytes))
        offset = _aligned(offset + v.nbytes)
    size = max(offset, 1)
    ensure_room(path, size)
    head = _HEAD.pack(MAGIC, len(data), len(views)) + b"".join(_BUF.pack(*t) for t in table)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    except FileExistsError:
        # the same object made again (a rebuild, while a reader still saw the first copy):
        # the new one replaces it; a reader that mapped the old one keeps its pages
        unlink(path)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, size)
        pwrite_all(fd, head + data, 0)
        for (off, _), v in zip(table, views):
            pwrite_all(fd, v, off)
    except BaseException:
        os.close(fd)
        unlink(path)
        raise
    os.close(fd)
    return size


def owned_by(session: str, path: str) -> bool:
    """Whether ``path`` is a segment of the store ``session`` (and nothing else)."""
    prefix = os.path.join(store_dir(), f"{PREFIX}{session}_")
    return path.startswith(prefix) and "/" not in path[len(prefix):] and \
        ".." not in path[len(prefix):]


def pwrite_all(fd: int, buf, offset: int) -> None:
    view = memoryview(buf).cast("B")
    while view.nbytes:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def read_segment(path: str):
    """Map a segment read-only; return (pickle view, [buffer views]) over the shared pages."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        mm = mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    view = memoryview(mm)
    magic, data_len, nbuf = _HEAD.unpack_from(view, 0)
    if magic != MAGIC:
        raise ValueError(f"{path} is not an nbray object segment")
    table = [_BUF.unpack_from(view, _HEAD.size + i * _BUF.size) for i in range(nbuf)]
    start = _HEAD.size + _BUF.size * nbuf
    return view[start:start + data_len], [view[o:o + n] for o, n in table]


def unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def remove_owner(session: str, owner_id: bytes) -> int:
    """Unlink the segments of the objects one client owned (the first bytes of an object id
    are its owner's client id)."""
    paths = glob.glob(os.path.join(store_dir(), f"{PREFIX}{session}_{owner_id.hex()}*"))
    for p in paths:
        unlink(p)
    return len(paths)


def remove_session(session: str) -> int:
    """Unlink every segment of a session (a node's last act, or cleanup after a crash)."""
    paths = glob.glob(os.path.join(store_dir(), f"{PREFIX}{session}_*"))
    for p in paths:
        unlink(p)
    return len(paths)
