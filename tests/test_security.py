"""Security: only holders of the cluster key get anything done; sockets and segments are private."""
from __future__ import annotations

import glob
import hmac
import os
import pickle
import socket
import stat
import time

import cloudpickle
import numpy as np
import psutil
import pytest
import zmq

import nbray
from nbray.runtime import links, protocol as P, transport
from nbray.runtime.core_client import CoreClient
from nbray.runtime.transport import Endpoint
from conftest import run_root, wait_until

pytestmark = pytest.mark.timeout(60)

SILENCE_S = 1.0      # how long a peer with a wrong key waits for an answer that must not come


class _OpenOnUnpickle:
    """Unpickling this creates ``path``: proof that a forged message was deserialized."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@nbray.remote
def double(x):
    return 2 * x


def _signed(key: bytes, msg) -> bytes:
    body = transport.dumps(msg)
    return hmac.digest(key, body, "sha256") + body


def _node_stats(cluster) -> dict:
    """Ask the node for its stats over a properly signed channel."""
    ep = Endpoint(bytes.fromhex(cluster.record.key), os.urandom(8))
    try:
        ep.send(cluster.record.node_address, P.NodeInfoRequest())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for _, msg in ep.recv(100):
                if isinstance(msg, P.NodeInfo):
                    return msg.info
        raise AssertionError("the node did not answer a signed NodeInfoRequest")
    finally:
        ep.close()


def _forged_frames(wrong_key: bytes, marker: str) -> list[list[bytes]]:
    evil = _OpenOnUnpickle(marker)
    raw_evil = pickle.dumps(evil, protocol=5)
    return [
        [_signed(wrong_key, P.Hello(b"intruder", os.getpid(), "ipc:///nonexistent", None))],
        [_signed(wrong_key, P.RequestLease(1, {"CPU": 1.0}))],
        [_signed(wrong_key, P.NodeInfoRequest())],
        [_signed(wrong_key, evil)],
        [raw_evil],                                     # no signature at all
        [b"\x00" * 32 + raw_evil],                      # a zero signature
        [hmac.digest(wrong_key, raw_evil, "sha256"), raw_evil],   # two frames
        [b""],
        [b"short"],
    ]


def _assert_silent(sock, seconds: float) -> None:
    """Nothing arrives on ``sock`` for ``seconds`` (polled with a deadline, not slept)."""
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        events = dict(poller.poll(left * 1000))
        assert sock not in events, f"got an answer: {sock.recv_multipart(zmq.NOBLOCK)!r}"


@pytest.fixture
def zsocket():
    """Make raw ZeroMQ sockets (kept, and closed, by the fixture)."""
    ctx = zmq.Context()
    socks = []

    def make(kind, identity: bytes | None = None):
        sock = ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if identity is not None:
            sock.setsockopt(zmq.IDENTITY, identity)
        socks.append(sock)
        return sock

    yield make
    for sock in socks:
        sock.close(linger=0)
    ctx.term()


# ---- wrong key -----------------------------------------------------------------------------------
def test_wrong_key_frames_to_node_get_no_answer(cluster, zsocket, tmp_path):
    marker = str(tmp_path / "pwned")
    rejected_before = _node_stats(cluster)["messages_rejected"]
    frames = _forged_frames(os.urandom(32), marker)
    sock = zsocket(zmq.DEALER, b"intruder")
    sock.connect(cluster.record.node_address)
    for f in frames:
        sock.send_multipart(f)
    _assert_silent(sock, SILENCE_S)
    assert not os.path.exists(marker), "the node unpickled a forged message"
    stats = _node_stats(cluster)
    assert stats["messages_rejected"] >= rejected_before + len(frames)
    assert stats["clients"] == 1                     # only the real driver
    # control: the same socket, with the right key, is answered
    sock.send(_signed(bytes.fromhex(cluster.record.key), P.NodeInfoRequest()))
    assert sock.poll(10_000), "no answer to a correctly signed request"
    (frame,) = sock.recv_multipart()
    assert frame[32] == P.PROTOCOL_VERSION and isinstance(pickle.loads(frame[33:]), P.NodeInfo)
    # the real driver is unaffected
    assert nbray.get(double.remote(21), timeout=20) == 42


def test_wrong_key_task_push_to_worker_runs_nothing(cluster, zsocket, tmp_path):
    """A forged PushTasks straight to a worker socket, with a function that would leave a mark."""
    marker = str(tmp_path / "pwned-by-task")
    nbray.get([double.remote(i) for i in range(4)])      # workers are up and bound
    workers = [p for p in glob.glob(os.path.join(cluster.rundir, "w-*"))
               if not p.endswith(links.SUFFIX)]
    assert workers, "no worker sockets found"

    def payload():
        with open(marker, "w") as f:
            f.write("ran")

    blob = cloudpickle.dumps(payload)
    fn_id = b"f" * 16
    task_id = b"intruder" + (1).to_bytes(8, "big")
    spec = P.TaskSpec(task_id, fn_id, "payload", pickle.dumps(((), {})), (), 1,
                      (task_id + (0).to_bytes(4, "big"),))
    reply_to = f"ipc://{tmp_path}/intruder"
    router = zsocket(zmq.ROUTER)
    router.bind(reply_to)
    socks = []
    for path in workers:
        sock = zsocket(zmq.DEALER, b"intruder")
        sock.connect(f"ipc://{path}")
        sock.send(_signed(os.urandom(32), P.PushTasks(reply_to, [spec], {fn_id: blob})))
        socks.append(sock)
    for sock in socks + [router]:
        _assert_silent(sock, SILENCE_S / 2)
    assert not os.path.exists(marker), "a worker ran a task pushed with a wrong key"
    assert nbray.get(double.remote(5), timeout=20) == 10


def test_wrong_key_link_to_worker_is_closed_unread(cluster, tmp_path):
    """The same forged push on a worker's link (links.py): its hello, signed with another key,
    closes the link before any frame on it is unpickled."""
    marker = str(tmp_path / "pwned-by-link")
    nbray.get([double.remote(i) for i in range(4)])
    paths = glob.glob(os.path.join(cluster.rundir, "w-*" + links.SUFFIX))
    assert paths, "no worker links found"
    wrong = os.urandom(32)
    spec = P.TaskSpec(b"intruder" * 2, b"f" * 16, "payload", pickle.dumps(((), {})), (), 1,
                      (b"intruder" * 2 + bytes(4),))
    hello = links.hello(lambda body: hmac.digest(wrong, body, "sha256"), transport._VERSION,
                        f"ipc://{tmp_path}/intruder")
    frames = [hello, _signed(wrong, P.PushTasks(f"ipc://{tmp_path}/intruder", [spec], {})),
              _signed(wrong, _OpenOnUnpickle(marker))]
    for path in paths:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
            raw.settimeout(20)
            raw.connect(path)
            raw.sendall(b"".join(len(f).to_bytes(8, "little") + f for f in frames))
            try:
                answer = raw.recv(10)
            except ConnectionResetError:
                answer = b""
            assert answer == b"", "a worker answered on a link with a wrong key"
    assert not os.path.exists(marker), "a worker unpickled a frame on a link with a wrong key"
    assert nbray.get(double.remote(5), timeout=20) == 10


def test_wrong_key_frames_to_head_get_no_answer(cluster, zsocket, tmp_path):
    marker = str(tmp_path / "pwned-head")
    sock = zsocket(zmq.DEALER)
    sock.connect(cluster.record.head_address)
    wrong = os.urandom(32)
    sock.send(_signed(wrong, P.ClusterInfoRequest()))
    sock.send(_signed(wrong, P.Shutdown()))
    sock.send(_signed(wrong, _OpenOnUnpickle(marker)))
    _assert_silent(sock, SILENCE_S)
    assert not os.path.exists(marker)
    assert cluster.proc("head").is_running()
    assert nbray.get(double.remote(1), timeout=20) == 2


def test_core_client_with_wrong_key_cannot_connect(cluster, tmp_path):
    client = CoreClient(key=os.urandom(32), session=cluster.session,
                        node_address=cluster.record.node_address,
                        bind=f"ipc://{tmp_path}/bad-client", threaded=True)
    try:
        with pytest.raises((TimeoutError, nbray.ClusterError)):
            client.connect(timeout=SILENCE_S)
    finally:
        client.close()
    assert _node_stats(cluster)["clients"] == 1
    assert nbray.get(double.remote(3), timeout=20) == 6


def test_core_client_with_right_key_connects(cluster, tmp_path):
    """The control for the test above: the same construction with the key is welcomed."""
    client = CoreClient(key=bytes.fromhex(cluster.record.key), session=cluster.session,
                        node_address=cluster.record.node_address,
                        bind=f"ipc://{tmp_path}/good-client", threaded=True)
    try:
        client.connect(timeout=10)
        assert client.node_resources.get("CPU") == 2.0
    finally:
        client.close()


# ---- private sockets and files -------------------------------------------------------------------
def test_sockets_are_ipc_in_private_directory(cluster):
    record = cluster.record
    rundir = cluster.rundir
    assert stat.S_IMODE(os.stat(run_root()).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(rundir).st_mode) == 0o700
    assert os.stat(rundir).st_uid == os.getuid()
    for address in (record.head_address, record.node_address, cluster.client.address):
        assert address.startswith(f"ipc://{rundir}/"), address
    nbray.get([double.remote(i) for i in range(4)])
    entries = os.listdir(rundir)
    assert entries
    for name in entries:
        st = os.stat(os.path.join(rundir, name))
        assert stat.S_ISSOCK(st.st_mode), f"{name} is not a socket"
        assert st.st_uid == os.getuid()


def test_cluster_processes_listen_on_no_network_port(cluster):
    nbray.get([double.remote(i) for i in range(4)])
    procs = [cluster.proc("head"), cluster.proc("node")] + \
        [psutil.Process(p) for p in cluster.worker_pids()]
    procs.append(psutil.Process())
    for p in procs:
        inet = p.net_connections(kind="inet")
        assert inet == [], f"{p.pid} ({' '.join(p.cmdline()[:3])}) has inet sockets: {inet}"
    rundir = cluster.rundir
    for p in procs[:-1]:
        for c in p.net_connections(kind="unix"):
            if c.laddr and c.status == psutil.CONN_NONE and isinstance(c.laddr, str) \
                    and c.laddr.startswith("/"):
                assert c.laddr.startswith(rundir + "/"), c.laddr


def test_key_is_not_on_command_lines(cluster):
    key = cluster.record.key
    procs = [cluster.proc("head"), cluster.proc("node")] + \
        [psutil.Process(p) for p in cluster.worker_pids()]
    for p in procs:
        assert key not in " ".join(p.cmdline())


def test_no_group_or_world_readable_files_in_run_root(cluster):
    for dirpath, dirnames, filenames in os.walk(run_root()):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            try:
                mode = stat.S_IMODE(os.lstat(path).st_mode)
            except FileNotFoundError:
                continue
            if path.startswith(cluster.rundir) or name.startswith(cluster.session):
                assert mode & 0o077 == 0 or stat.S_ISSOCK(os.lstat(path).st_mode), \
                    f"{path} has mode {oct(mode)}"


def test_shm_segments_are_private(cluster):
    ref = nbray.put(np.ones(1_000_000))
    path = cluster.segment_of(ref)
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.getuid()

    @nbray.remote
    def make(n):
        return np.zeros(n)

    out = make.remote(1_000_000)
    nbray.wait([out], timeout=20)
    st = os.stat(cluster.segment_of(out))       # written by a worker
    assert stat.S_IMODE(st.st_mode) == 0o600
    for seg in cluster.segments():
        assert stat.S_IMODE(os.stat(seg).st_mode) == 0o600
    del ref, out
    wait_until(lambda: not cluster.segments(), 10, "segments to be freed")


# ---- authentic but malformed traffic -------------------------------------------------------------
class RegisterNodeOfAnotherRelease(tuple):
    """Pickles as a RegisterNode with a field more than this release's: what a node of
    another nbray release sends."""

    def __reduce__(self):
        return (P.RegisterNode, tuple(self))


# Regression (found in review): an authentic message whose class has another shape raised in the
# head's receive loop, which stopped the head and, through it, every node
def test_authentic_messages_of_another_shape_or_version_are_dropped(cluster):
    key = bytes.fromhex(cluster.record.key)
    head = cluster.record.head_address
    with Endpoint(key, b"other-release") as ep:
        ep.send(head, RegisterNodeOfAnotherRelease((b"n" * 8, "h", "a", {}, 1, 2, "extra")))
        body = transport.dumps(P.ClusterInfoRequest())
        other_version = bytes([P.PROTOCOL_VERSION + 1]) + body[1:]
        sock = ep.connect(head)
        sock.send(transport.sign(key, other_version) + other_version)
        ep.send(head, P.ClusterInfoRequest())     # the head still answers
        deadline = time.monotonic() + 10
        info = None
        while info is None and time.monotonic() < deadline:
            for _, msg in ep.recv(100):
                info = msg
        assert isinstance(info, P.ClusterInfo)
        assert len(info.nodes) == 1                 # the odd RegisterNode registered nothing
    assert nbray.get(double.remote(21)) == 42
