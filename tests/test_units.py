"""Unit tests of the pure parts: no cluster, no processes (sockets only where they are the unit)."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import nbray
from nbray.errors import RemoteError, SerializationError
from nbray.runtime import links, object_store, protocol as P, serialization, transport, wire
from nbray.runtime.node.local_scheduler import LeaseRequest, LocalScheduler
from nbray.runtime.transport import Endpoint


# ---- public API ------------------------------------------------------------------------------
def test_public_api_is_the_explicit_list():
    exported = {name for name in dir(nbray) if not name.startswith("_")}
    modules = {"api", "actor", "errors", "object_ref", "remote_function", "runtime", "config",
               "extension", "cli", "demo", "progress", "dashboard", "cluster_utils",
               "jupyter", "runtime_context", "futures", "generators", "backends", "records"}
    assert exported - modules == set(nbray.__all__)
    for name in nbray.__all__:
        assert getattr(nbray, name) is not None


# ---- local scheduler -------------------------------------------------------------------------
def test_scheduler_accounts_resources_and_serves_what_fits_in_order():
    s = LocalScheduler({"CPU": 2, "GPU": 1})
    assert s.infeasible({"CPU": 1}) is None
    assert "GPU" in s.infeasible({"GPU": 2})
    assert "sim" in s.infeasible({"sim": 1})
    big, small = LeaseRequest((True, b"a"), 1, {"CPU": 2, "GPU": 1}), \
        LeaseRequest((True, b"b"), 2, {"CPU": 1})
    s.queue.extend([big, small])
    assert s.next_grantable() is big
    s.acquire(big.resources)
    s.queue.remove(big)
    assert s.next_grantable() is None          # nothing left for the small one
    s.release({"CPU": 1})
    assert s.next_grantable() is small
    s.drop_peer((True, b"b"))
    assert not s.queue


def test_requests_waiting_for_one_free_cpu_count_as_one_to_grow_the_pool():
    s = LocalScheduler({"CPU": 2})
    s.acquire({"CPU": 1})                       # one worker leased, one CPU free
    s.queue.extend(LeaseRequest((True, b"a"), i, {"CPU": 1}) for i in range(3))
    assert s.grantable_together() == 1         # the node starts one worker for them, not 3
    s.release({"CPU": 1})
    assert s.grantable_together() == 2


# ---- object store ----------------------------------------------------------------------------
def test_segment_round_trip_is_zero_copy_and_aligned(tmp_path, monkeypatch):
    arr = np.arange(100_000, dtype=np.float64)
    buffers = []
    data = pickle.dumps({"a": arr, "b": "x"}, protocol=5, buffer_callback=buffers.append)
    path = str(tmp_path / f"{object_store.PREFIX}test_seg")
    size = object_store.write_segment(path, data, [b.raw() for b in buffers])
    assert size >= arr.nbytes
    assert os.stat(path).st_mode & 0o777 == 0o600
    view, bufs = object_store.read_segment(path)
    out = pickle.loads(view, buffers=bufs)
    assert np.array_equal(out["a"], arr) and out["b"] == "x"
    assert not out["a"].flags.writeable                  # a view of the read-only mapping
    assert out["a"].ctypes.data % 64 == 0
    object_store.unlink(path)
    assert np.array_equal(out["a"], arr)                  # still readable after unlink
    object_store.unlink(path)                             # unlinking twice is harmless


def test_read_segment_refuses_a_foreign_file(tmp_path):
    path = tmp_path / "junk"
    path.write_bytes(b"x" * 100)
    with pytest.raises(ValueError):
        object_store.read_segment(str(path))


# ---- serialization ---------------------------------------------------------------------------
def test_pack_args_puts_slots_for_top_level_refs_only():
    class Ref:
        pass
    r1, r2 = Ref(), Ref()
    blob, top, nested = serialization.pack_args(
        "f", (1, r1), {"k": r2, "l": [3]}, lambda v: isinstance(v, Ref))
    assert top == [r1, r2] and nested == ()
    args, kwargs = serialization.unpack_args(blob, ["one", "two"])
    assert args == (1, "one") and kwargs == {"k": "two", "l": [3]}


def test_pack_args_names_the_argument_that_cannot_be_pickled():
    with pytest.raises(SerializationError, match="keyword 'lock'"):
        serialization.pack_args("f", (1,), {"lock": threading.Lock()}, lambda v: False)
    with pytest.raises(TypeError, match="position 1"):
        serialization.pack_args("f", (1, threading.Lock()), {}, lambda v: False)


class _CancelledWhilePickled:
    def __reduce__(self):           # as when nbray.cancel's signal lands inside pickle
        raise nbray.TaskCancelledError("task was cancelled while running")


# Regression (found by CI): a cancel that landed while a generator task pickled the arguments
# of an actor call reached its caller as a SerializationError
def test_a_cancel_that_lands_while_pickling_stays_a_cancel():
    with pytest.raises(nbray.TaskCancelledError):
        serialization.pack_args("f", (_CancelledWhilePickled(),), {}, lambda v: False)
    with pytest.raises(nbray.TaskCancelledError):
        serialization.serialize([_CancelledWhilePickled()], 10)
    with pytest.raises(nbray.TaskCancelledError):
        serialization.serialize(_CancelledWhilePickled(), 10)


def test_lambdas_and_local_classes_travel_by_value():
    class Local:
        x = 5
    value = serialization.serialize((lambda y: y + 1, Local), 10 ** 6)
    fn, cls = serialization.deserialize(value)
    assert fn(1) == 2 and cls.x == 5


# ---- errors ----------------------------------------------------------------------------------
class CustomError(Exception):
    def __init__(self, code):
        super().__init__(f"code {code}")
        self.code = code


def test_remote_error_is_also_the_original_type():
    err = RemoteError.from_parts(CustomError(7), "Traceback: ...", "task_f")
    assert isinstance(err, RemoteError) and isinstance(err, CustomError)
    assert err.code == 7 and "task_f" in str(err) and "Traceback" in str(err)
    again = pickle.loads(pickle.dumps(err))
    assert isinstance(again, CustomError) and again.code == 7


# ---- transport -------------------------------------------------------------------------------
def test_endpoint_drops_messages_signed_with_another_key(tmp_path):
    good = Endpoint(os.urandom(32), b"srv", [f"ipc://{tmp_path}/srv"])
    evil = Endpoint(os.urandom(32), b"evl", [f"ipc://{tmp_path}/evl"])
    friend = Endpoint(good.key, b"frd", [f"ipc://{tmp_path}/frd"])
    try:
        evil.send(good.address, P.Shutdown())
        friend.send(good.address, P.NodeInfoRequest())
        got, deadline = [], time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            got = good.recv(100)
        assert [type(m) for _, m in got] == [P.NodeInfoRequest]
        deadline = time.monotonic() + 5
        while good.rejected < 1 and time.monotonic() < deadline:
            good.recv(50)
        assert good.rejected == 1
    finally:
        for ep in (good, evil, friend):
            ep.close()
    assert not os.path.exists(f"{tmp_path}/srv")     # ipc files are removed on close


def test_bulk_messages_carry_their_buffers_as_signed_frames(tmp_path):
    key = os.urandom(32)
    srv = Endpoint(key, b"srv", [f"ipc://{tmp_path}/srv"])
    cli = Endpoint(key, b"cli")
    try:
        data = np.arange(1_000_000, dtype=np.uint8).tobytes()
        cli.send_bulk(srv.address, P.Chunk(7, 0, pickle.PickleBuffer(data)))
        got, deadline = [], time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            got = srv.recv(100)
        (peer, msg), = got
        assert isinstance(msg, P.Chunk) and bytes(msg.data) == data
        assert isinstance(msg.data, memoryview)           # not copied out of its frame
        # the answer goes back the same way, and a tampered buffer is refused
        srv.send_bulk(peer, P.Chunk(8, 0, pickle.PickleBuffer(b"x" * 1000)))
        sock = cli.connect(srv.address)
        body = transport.dumps(P.Chunk(9, 0, b""))
        buf = [b"A" * 100]
        frames = [srv.sign.bulk(body, buf) + body, b"B" * 100]      # buffer swapped
        sock.send_multipart(frames)
        head = bytearray(srv.sign.bulk(body, buf) + body)
        head[transport._SIG_LEN] ^= 1                                # its nonce changed
        sock.send_multipart([bytes(head), *buf])
        got, deadline = [], time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            got = cli.recv(100)
        assert [m.transfer_id for _, m in got] == [8]
        deadline = time.monotonic() + 5
        while srv.rejected < 2 and time.monotonic() < deadline:
            srv.recv(50)
        assert srv.rejected == 2 and srv.received == 1
    finally:
        srv.close()
        cli.close()


def test_task_pushes_and_results_travel_as_tuples_and_arrive_as_their_classes(tmp_path):
    shm = P.Value(P.SHM, P.ShmLocation(b"n" * 8, "/dev/shm/x", 10), ((b"o" * 8, "owner"),))
    spec = P.TaskSpec(b"t" * 8, b"f" * 8, "f", shm, (P.Value(P.INLINE, b"1"),), 1,
                      (b"r" * 8,), P.ACTOR_CALL, b"a" * 8, ("origin",), 0, ())
    plain = spec._replace(args_blob=b"args", arg_values=())
    push = P.PushTasks("owner", [spec, plain], {b"f" * 8: b"fn"})
    results = P.TaskResults([P.TaskResult(b"t" * 8, (P.Value(P.ERROR, b"e"),), 0.5, 1.0, 0.1),
                             P.TaskResult(b"u" * 8, None, 0.0)])
    key = os.urandom(32)
    srv = Endpoint(key, b"srv", [f"ipc://{tmp_path}/srv"])
    cli = Endpoint(key, b"cli")
    try:
        for msg in (push, results):
            assert wire.decode(pickle.loads(pickle.dumps(wire.encode(msg)))) == msg
            assert type(pickle.loads(pickle.dumps(wire.encode(msg)))) is tuple
        cli.send(srv.address, push)
        cli.send(srv.address, results)
        # an authentic tuple of another shape is dropped, and the endpoint carries on
        sock = cli.connect(srv.address)
        for odd in ((-1, "owner", [spec[:5]], {}), (-2, [(b"t", ((0, b""),), 0.0, 0, 0, 9)]),
                    (-7, "what")):
            body = transport._VERSION + pickle.dumps(odd, protocol=5)
            sock.send(srv.sign(body) + body)
        cli.send(srv.address, P.NodeInfoRequest())
        got, deadline = [], time.monotonic() + 5
        while len(got) < 3 and time.monotonic() < deadline:
            got += [m for _, m in srv.recv(100)]
        assert got == [push, results, P.NodeInfoRequest()]
        (a, b), (r, bounced) = got[0].tasks, got[1].results
        assert type(a) is P.TaskSpec and type(a.args_blob) is P.Value and a.args_blob == shm
        assert type(a.args_blob.payload) is P.ShmLocation and type(a.arg_values[0]) is P.Value
        assert b.args_blob == b"args" and type(r.values[0]) is P.Value and bounced.values is None
        assert srv.malformed == 3
    finally:
        srv.close()
        cli.close()


def _gather(ep, n, others=(), deadline_s=20):
    """Receive until ``n`` messages came to ``ep`` (``others`` poll meanwhile, so their links
    send what waits in their backlogs)."""
    got, deadline = [], time.monotonic() + deadline_s
    while len(got) < n and time.monotonic() < deadline:
        for o in others:
            o.recv(0)
        got += ep.recv(20)
    return got


def test_clients_on_one_machine_talk_over_links_in_order(tmp_path):
    key = os.urandom(32)
    srv = Endpoint(key, b"srv", [f"ipc://{tmp_path}/srv"], link=True)
    cli = Endpoint(key, b"cli", [f"ipc://{tmp_path}/cli"], link=True)
    node = Endpoint(key, b"nod", [f"ipc://{tmp_path}/nod"])        # no listener: ZeroMQ
    try:
        assert os.path.exists(f"{tmp_path}/srv{links.SUFFIX}")
        assert not os.path.exists(f"{tmp_path}/nod{links.SUFFIX}")
        # small messages and large ones (past a read, past the socket's buffer), in order;
        # the sender's backlog goes when the polling thread finds the socket writable
        big = os.urandom(3 << 20)
        sent = [P.Reply(i, big if i % 5 == 0 else i) for i in range(40)]
        for msg in sent:
            cli.send(srv.address, msg)
        assert cli._backlog                                 # the socket did not take it all
        got = _gather(srv, len(sent), [cli])
        assert [m for _, m in got] == sent
        assert {peer for peer, _ in got} == {(False, cli.address)}
        assert not cli.dealers                              # none went through ZeroMQ
        # an answer to that peer goes back on a link of its own; a node gets ZeroMQ
        srv.reply(got[0][0], P.Ack(1))
        cli.send(node.address, P.Ack(2))
        assert [m for _, m in _gather(cli, 1)] == [P.Ack(1)]
        assert [m for _, m in _gather(node, 1)] == [P.Ack(2)]
        assert cli._out[node.address] is None and node.address in cli.dealers
        # a user thread's pusher: its backlog is sent by whichever thread polls
        pusher = cli.push_sender()
        pushed = [P.Reply(i, big) for i in range(8)]
        t = threading.Thread(target=lambda: [pusher.send(srv.address, m) for m in pushed])
        t.start()
        t.join(20)
        assert [m for _, m in _gather(srv, len(pushed), [cli])] == pushed
        assert not cli._backlog
    finally:
        for ep in (srv, cli, node):
            ep.close()
    assert not os.listdir(tmp_path)                     # sockets and link files removed


def test_a_link_with_a_wrong_key_or_no_hello_is_closed_unread(tmp_path):
    import socket
    key = os.urandom(32)
    srv = Endpoint(key, b"srv", [f"ipc://{tmp_path}/srv"], link=True)
    evil = Endpoint(os.urandom(32), b"evl", [f"ipc://{tmp_path}/evl"], link=True)
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        evil.send(srv.address, P.Shutdown())                # signed with another key
        raw.connect(f"{tmp_path}/srv{links.SUFFIX}")        # a frame of ours, but no hello
        raw.sendall(len(srv._frame(P.Shutdown())).to_bytes(8, "little") +
                    srv._frame(P.Shutdown()))
        deadline = time.monotonic() + 10
        got = []
        while srv.rejected < 2 and time.monotonic() < deadline:
            got += srv.recv(20)
        assert got == [] and srv.rejected == 2 and srv.received == 0
        raw.settimeout(10)
        assert raw.recv(10) == b""                          # closed by the receiver
        # a sender whose receiver is gone carries on (its messages go nowhere, as on ZeroMQ)
        friend = Endpoint(key, b"frd", [f"ipc://{tmp_path}/frd"], link=True)
        friend.send(srv.address, P.Ack(1))
        assert [m for _, m in _gather(srv, 1)] == [P.Ack(1)]
        srv.close()
        deadline = time.monotonic() + 10
        while friend._out.get(srv.address) is not None and time.monotonic() < deadline:
            friend.send(srv.address, P.Ack(2))
            friend.recv(10)
        assert friend._out[srv.address] is None and not friend._backlog
        friend.close()
    finally:
        raw.close()
        srv.close()
        evil.close()


def _pair(tmp_path, *names):
    key = os.urandom(32)
    return [Endpoint(key, n.encode(), [f"ipc://{tmp_path}/{n}"], link=True) for n in names]


def _until(cond, what: str, deadline_s: float = 10, poll=()):
    deadline = time.monotonic() + deadline_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        for ep in poll:
            ep.recv(10)


@pytest.mark.parametrize("garbage", [
    (1 << 62).to_bytes(8, "little"),                          # a length no buffer holds
    (300 * 1024).to_bytes(8, "little") + os.urandom(300 * 1024),  # a large frame, not signed
    (64).to_bytes(8, "little") + os.urandom(64)],             # a small one, not signed
    ids=["huge-length", "large-unsigned", "small-unsigned"])
def test_a_link_out_of_step_is_closed_and_its_sender_goes_by_zeromq(tmp_path, garbage):
    srv, cli = _pair(tmp_path, "srv", "cli")
    try:
        cli.send(srv.address, P.Ack(1))
        assert [m for _, m in _gather(srv, 1)] == [P.Ack(1)]
        view, sock = memoryview(garbage), cli._out[srv.address].sock
        deadline = time.monotonic() + 10                    # as a torn or mixed-up stream
        while view.nbytes and srv._link_of and time.monotonic() < deadline:
            try:
                view = view[sock.send(view):]
            except BlockingIOError:
                pass
            srv.recv(10)
        _until(lambda: not srv._link_of, "the link to be closed", poll=[srv])
        assert srv.received == 1                            # nothing read past it
        got = []
        for i in range(2, 200):                             # the sender finds it closed
            cli.send(srv.address, P.Ack(i))
            got += [m for _, m in srv.recv(20)]
            if cli._out[srv.address] is None and got:
                break
        assert cli._out[srv.address] is None and srv.address in cli.dealers
        cli.send(srv.address, P.Ack(-1))
        _until(lambda: P.Ack(-1) in got or got.extend(m for _, m in srv.recv(20)),
               "a message by ZeroMQ")
    finally:
        srv.close()
        cli.close()


class _Interrupted:
    """A link's socket that sends part of what it is given, then raises as a KeyboardInterrupt
    does when it lands inside a send."""

    def __init__(self, sock):
        self.sock = sock

    def sendmsg(self, parts, *args):
        first = bytes(memoryview(parts[0])[:max(1, len(parts[0]) // 2)])
        self.sock.send(first)
        raise KeyboardInterrupt

    def close(self):
        self.sock.close()


def test_a_link_torn_by_an_interrupt_loses_and_repeats_nothing(tmp_path):
    srv, cli = _pair(tmp_path, "srv", "cli")
    try:
        big = os.urandom(3 << 20)
        sent = [P.Reply(i, big) for i in range(12)]
        for msg in sent:
            cli.send(srv.address, msg)
        link = cli._out[srv.address]
        assert link.backlog                                 # some wait to be sent
        early = []
        for _ in range(5):                                  # room in the socket again
            early += srv.recv(20)
        link.sock = _Interrupted(link.sock)
        with pytest.raises(KeyboardInterrupt):
            cli.recv(0)                                     # the polling thread flushes
        assert link.dead
        cli.send(srv.address, P.Reply(99, b"after"))       # by ZeroMQ from now on
        assert cli._out[srv.address] is None
        got = early + _gather(srv, len(sent) + 1 - len(early), [cli])
        assert sorted(m.request_id for _, m in got) == [*range(12), 99]
        assert all(m.value == big for _, m in got if m.request_id != 99)
    finally:
        srv.close()
        cli.close()


def test_close_with_linger_sends_what_a_link_still_holds(tmp_path):
    srv, cli = _pair(tmp_path, "srv", "cli")
    big = os.urandom(3 << 20)
    sent = [P.Reply(i, big) for i in range(20)]
    got: list = []
    reader = threading.Thread(target=lambda: got.extend(_gather(srv, len(sent))))
    try:
        for msg in sent:
            cli.send(srv.address, msg)
        assert cli._out[srv.address].backlog
        reader.start()
        cli.close(linger_ms=20_000)                         # returns once the backlog left
        reader.join(30)
        assert [m for _, m in got] == sent
    finally:
        srv.close()
        cli.close()


def test_links_to_receivers_gone_are_closed_when_a_new_one_opens(tmp_path):
    a, b, cli = _pair(tmp_path, "a", "b", "cli")
    try:
        cli.send(a.address, P.Ack(1))
        fd = cli._out[a.address].fd
        assert [m for _, m in _gather(a, 1)] == [P.Ack(1)]
        a.close()
        cli.send(b.address, P.Ack(2))                       # a new link: the table is swept
        assert a.address not in cli._out and b.address in cli._out
        with pytest.raises(OSError):
            os.fstat(fd)                                    # its descriptor closed
    finally:
        for ep in (a, b, cli):
            ep.close()


_LINK_SCRIPT = """
import os, signal, sys, time
sys.path.insert(0, {repo!r})
from nbray.runtime import protocol as P
from nbray.runtime.transport import Endpoint
signal.signal(signal.SIGPIPE, signal.SIG_DFL)       # as command-line tools often set it
key = os.urandom(32)
srv = Endpoint(key, b"srv", ["ipc://{d}/srv"], link=True)
cli = Endpoint(key, b"cli", ["ipc://{d}/cli"], link=True)
cli.send(srv.address, P.Ack(1))
srv.close()
deadline = time.monotonic() + 10
while cli._out.get(srv.address) is not None and time.monotonic() < deadline:
    cli.send(srv.address, P.Ack(2))
print("carried on", cli._out.get(srv.address))
"""


def test_a_sender_whose_receiver_died_survives_default_sigpipe(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", _LINK_SCRIPT.format(repo=repo, d=tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "carried on None" in out.stdout, (out.returncode,
                                                                    out.stderr)


_FULL_SCRIPT = """
import os, resource, sys, time
sys.path.insert(0, {repo!r})
from nbray.runtime.transport import Endpoint
srv = Endpoint(os.urandom(32), b"srv", ["ipc://{d}/srv"], link=True)
kept = []
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
try:
    while True:
        kept.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
print("full", flush=True)
deadline = time.monotonic() + 20
polls = 0
while srv.refused_links == 0 and time.monotonic() < deadline:
    srv.recv(50)
    polls += 1
print("refused", srv.refused_links, flush=True)
sys.stdin.read()
"""


def test_out_of_descriptors_a_link_is_refused_not_left_waiting(tmp_path):
    import socket
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-c", _FULL_SCRIPT.format(repo=repo, d=tmp_path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        assert proc.stdout.readline().strip() == "full"
        raw.connect(f"{tmp_path}/srv{links.SUFFIX}")        # accepted by the kernel, queued
        assert proc.stdout.readline().split() == ["refused", "1"]
        raw.settimeout(10)
        assert raw.recv(10) == b""                          # closed: its sender would fall back
    finally:
        raw.close()
        proc.stdin.close()
        proc.wait(10)
        proc.stdout.close()


def test_a_forked_child_lets_go_of_its_parents_links(tmp_path):
    srv, cli = _pair(tmp_path, "srv", "cli")
    try:
        cli.send(srv.address, P.Ack(1))
        assert [m for _, m in _gather(srv, 1)] == [P.Ack(1)]
        fds = [link.fd for link in (*srv._link_of.values(), *cli._out.values())]
        pid = os.fork()
        if pid == 0:                                        # the child: no links of its own
            code = 0
            for fd in fds:
                try:
                    os.fstat(fd)
                    code = 1                                # still holds a parent's stream
                except OSError:
                    pass
            if cli._out is not None or cli._listener is not None or not srv._forked:
                code = 2
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        cli.send(srv.address, P.Ack(2))                    # the parent's link still works
        assert [m for _, m in _gather(srv, 1)] == [P.Ack(2)]
        assert not cli.dealers
    finally:
        srv.close()
        cli.close()


# ---- the head's actor table ------------------------------------------------------------------
def test_actor_table_names_history_and_owner_death():
    from nbray.runtime.head.tables import Tables
    t = Tables("s")
    row = {"actor_id": b"a1", "name": "learner", "namespace": "", "owner": "ipc://d1",
           "class_name": "Learner"}
    assert t.register_actor(dict(row)) == ""
    assert "already exists" in t.register_actor(dict(row, actor_id=b"a2"))
    assert t.register_actor(dict(row, actor_id=b"a3", namespace="other")) == ""
    assert t.lookup_actor("learner")["actor_id"] == b"a1"
    t.update_actor(b"a1", {"state": "alive", "worker_pid": 7})
    t.update_actor(b"a1", {"state": "alive"})                   # no change: no new entry
    t.update_actor(b"a1", {"state": "restarting", "restarts": 1, "detail": "worker died"})
    history = t.actors[b"a1"]["history"]
    assert [h["state"] for h in history] == ["pending", "alive", "restarting"]
    assert history[-1]["detail"] == "worker died" and t.actors[b"a1"]["restarts"] == 1
    t.owner_gone("ipc://d1")                   # both of its actors die, the names are free
    assert t.actors[b"a1"]["state"] == "dead" and t.actors[b"a3"]["state"] == "dead"
    assert t.lookup_actor("learner") is None
    assert t.register_actor(dict(row, actor_id=b"a4")) == ""
    assert {r["actor_id"] for r in t.actor_list()} == {b"a1", b"a3", b"a4"}


def test_nodes_silent_past_the_timeout_are_declared_dead_and_must_register_again():
    from nbray.runtime.head.tables import Tables
    t = Tables("s")
    t.register_node(b"n1", "h", "ipc://n1", {"CPU": 1}, 1)
    t.register_node(b"n2", "h", "ipc://n2", {"CPU": 1}, 2)
    t.nodes[b"n1"].last_seen -= 10                 # silent for 10 s
    assert [n.node_id for n in t.check_nodes(5.0)] == [b"n1"]
    assert t.check_nodes(5.0) == []                # declared once
    assert t.heartbeat(b"n2", {}) is True
    assert t.heartbeat(b"n1", {}) is False         # dead: it must register again
    assert t.heartbeat(b"n3", {}) is False         # unknown (the head restarted)
    assert {n["node_id"]: n["state"] for n in t.node_list()} == {"6e31": "dead", "6e32": "alive"}
    t.register_node(b"n1", "h", "ipc://n1", {"CPU": 1}, 3)
    assert t.heartbeat(b"n1", {}) is True


def test_global_scheduler_places_by_resources_load_and_locality():
    from nbray.runtime.head.global_scheduler import GlobalScheduler, Pending
    from nbray.runtime.head.tables import NodeEntry

    def node(nid, total, free, queue=0):
        n = NodeEntry(nid, "h", f"tcp://{nid.decode()}", total, 1)
        n.stats = {"resources_available": free, "lease_queue": queue}
        return n

    a = node(b"a", {"CPU": 1}, {"CPU": 1})          # says free, but it is the one spilling
    b = node(b"b", {"CPU": 2}, {"CPU": 1})
    g = node(b"g", {"CPU": 1, "GPU": 1}, {"CPU": 1, "GPU": 1})
    s = GlobalScheduler()

    def req(resources, prefer=b""):
        return Pending(1, b"a", resources, None, "its resources are busy here", prefer, 0.0)

    chosen, why = s.place([a, b, g], req({"GPU": 1}))
    assert chosen is g and "load" in why
    chosen, _ = s.place([a, b, g], req({"CPU": 1}))
    assert chosen is b                                  # not the spilling node
    chosen, _ = s.place([a, b, g], req({"CPU": 1}))
    assert chosen is g                                  # b's CPU is counted as taken now
    chosen, why = s.place([a, b, g], req({"CPU": 1}))
    assert chosen is a and "busy" in why                # all busy: the shortest queue
    assert s.place([a, b, g], req({"CPU": 1}, prefer=b"b"))[0] is not None
    b.stats = {"resources_available": {"CPU": 2}}
    chosen, why = s.place([a, b, g], req({"CPU": 1}, prefer=b"b"))
    assert chosen is b and "locality" in why
    none, reason = s.place([a, b, g], req({"sim": 1}))
    assert none is None and "no node has sim=1" in reason
    g.alive = False
    assert s.place([a, b, g], req({"GPU": 1}))[0] is None
    assert len(s.decisions) == 6


def test_config_from_the_environment_reads_booleans_and_numbers(monkeypatch):
    from nbray.config import Config
    monkeypatch.setenv("NBRAY_LINEAGE", "0")
    monkeypatch.setenv("NBRAY_NODE_TIMEOUT_S", "2.5")
    cfg = Config.from_env()
    assert cfg.lineage is False and cfg.node_timeout_s == 2.5
    monkeypatch.setenv("NBRAY_LINEAGE", "yes")
    assert Config.from_env().lineage is True


# ---- the head's event log ------------------------------------------------------------------
def test_reports_of_unfinished_tasks_are_replaced_bounded_and_expire(monkeypatch):
    from nbray.runtime import events, task_log
    log = events.EventLog(10)
    row = lambda i, t: (bytes(16), f"f{i}", "queued", 1, t, t, 0.0, b"", 0, b"", [], 1, 0)  # noqa
    log.set_unfinished("a", pickle.dumps([row(0, 1.0), row(1, 3.0)]), 2)
    log.set_unfinished("b", pickle.dumps([row(2, 2.0)]), 1)
    rows = log.query({"task"}, unfinished_except="")["unfinished"]
    assert [r["name"] for r in rows] == ["f0", "f2", "f1"]          # oldest first
    assert [r["name"] for r in log.query({"task"}, limit=2, unfinished_except="b")[
        "unfinished"]] == ["f0", "f1"]
    assert log.query({"task"}, limit=0, unfinished_except="")["unfinished"] == []
    log.set_unfinished("a", b"", 0)                  # none left
    assert [r["name"] for r in log.query({"task"}, unfinished_except="")["unfinished"]] == \
        ["f2"]
    log.set_unfinished("c", b"not a pickle", 1)      # a bad report is ignored
    monkeypatch.setattr(events, "MAX_OWNERS", 2)
    log.set_unfinished("d", pickle.dumps([row(3, 4.0)]), 1)
    log.set_unfinished("e", pickle.dumps([row(4, 5.0)]), 1)         # the stalest (b) goes
    assert sorted(log.unfinished) == ["d", "e"]
    monkeypatch.setattr(events, "UNFINISHED_TTL_S", -1.0)
    assert log.query({"task"}, unfinished_except="")["unfinished"] == []
    assert log.unfinished == {}
    assert task_log.UNFINISHED_DEPS >= 1


# ---- placement groups: the head's plan, the node's bundles ----------------------------------
def test_placement_strategies_plan_bundles_on_free_resources():
    from nbray.runtime.head.placement_groups import plan
    nodes = [(b"a", {"CPU": 2}, {"CPU": 2}), (b"b", {"CPU": 2}, {"CPU": 1}),
             (b"c", {"CPU": 4}, {"CPU": 4})]
    one = [{"CPU": 1}]
    assert plan(one * 3, "STRICT_SPREAD", nodes)[0] is not None
    assert sorted(plan(one * 3, "STRICT_SPREAD", nodes)[0]) == [b"a", b"b", b"c"]
    assert plan(one * 4, "STRICT_SPREAD", nodes)[0] is None
    assert plan(one * 4, "STRICT_PACK", nodes)[0] == [b"c"] * 4
    assert plan(one * 5, "STRICT_PACK", nodes)[0] is None
    assert set(plan(one * 4, "PACK", nodes)[0]) == {b"c"}       # fewest nodes
    assert len(set(plan(one * 3, "SPREAD", nodes)[0])) == 3
    chosen, why = plan([{"GPU": 1}], "PACK", nodes)
    assert chosen is None and "fits on no node" in why


def test_node_bundles_set_aside_commit_and_release():
    s = LocalScheduler({"CPU": 4})
    pg = bytes(14)
    assert s.prepare(pg, [(0, {"CPU": 1}), (1, {"CPU": 2})]) == ""
    assert s.available["CPU"] == 1 and not any("_group_" in k for k in s.total)
    assert "not free" in s.prepare(b"x" * 14, [(0, {"CPU": 2})])
    s.commit(pg)
    assert s.total[f"CPU_group_1_{pg.hex()}"] == 2 and s.total[f"CPU_group_{pg.hex()}"] == 3
    assert s.infeasible({f"CPU_group_0_{pg.hex()}": 1}) is None
    gone = s.release_group(pg, (0,))            # one bundle (its node's part)
    assert f"CPU_group_0_{pg.hex()}" in gone and s.total[f"CPU_group_{pg.hex()}"] == 2
    s.release_group(pg)
    assert s.total == {"CPU": 4} and s.available == {"CPU": 4}
    s.removed_groups.add(pg.hex())
    assert "was removed" in s.removed({f"CPU_group_{pg.hex()}": 1})
    assert "hard node affinity" in s.infeasible({"node:beef": 0.001})


def test_a_node_keeps_the_memory_of_received_chunks_for_the_next():
    # glibc maps an 8 MB buffer afresh each time by default (its pages new, each one faulted
    # in as ZeroMQ fills it); after keep_chunk_buffers it is served from the heap, kept
    code = textwrap.dedent("""
        import ctypes, sys
        from nbray.runtime.node import transfer

        class Info(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in (
                "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                "uordblks", "fordblks", "keepcost")]

        libc = ctypes.CDLL(None)
        libc.mallinfo2.restype = Info
        libc.malloc.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]

        def mapped_for(n):
            p = libc.malloc(n)
            mapped = libc.mallinfo2().hblkhd
            libc.free(p)
            return mapped

        before = mapped_for(transfer.CHUNK)
        assert transfer.keep_chunk_buffers()
        print(before >= transfer.CHUNK, mapped_for(transfer.CHUNK) < transfer.CHUNK)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"]
