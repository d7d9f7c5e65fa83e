"""Starting, finding and stopping clusters on this machine.

An embedded cluster (``nbray.init()``) is a head and a node spawned as children of the driver,
in their own session so a Ctrl-C in the terminal reaches only the driver. They watch the driver's
pid and exit, cleaning up, if it dies without calling shutdown. Their sockets live in a private
directory (``/tmp/nbray-<uid>/<session>``, mode 0700); a cluster started by ``nbray start`` also
listens on TCP and leaves a record there (mode 0600, it holds the key) for ``nbray status``,
``nbray stop`` and ``nbray.init(address=...)``; being detached, its processes (and what its
tasks print) write to ``head.log`` and ``node.log`` in its directory.

A node that joins a cluster from another machine (``nbray start --address``, :func:`join`) has a
record of its own on its machine, named apart from the cluster's session so that two nodes of one
cluster on one machine keep separate directories and shared-memory segments.
"""
from __future__ import annotations

import json
import os
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

from nbray.config import CONFIG
from nbray.errors import ClusterError
from nbray.runtime import object_store


#: the longest socket path under a run root: "/<8 hex>/w-<16 hex>"
_LONGEST_SOCKET = 1 + 8 + 3 + 16


def run_root() -> str:
    """The directory of this user's clusters: private (0700, ours), and short enough that the
    ipc socket paths inside it fit the system's limit."""
    import zmq
    root = os.path.abspath(CONFIG.run_root or os.path.join("/tmp", f"nbray-{os.getuid()}"))
    if len(root) + _LONGEST_SOCKET > zmq.IPC_PATH_MAX_LEN:
        raise ClusterError(f"the run directory {root} is too long for the socket paths in it "
                           f"({len(root)} characters; at most "
                           f"{zmq.IPC_PATH_MAX_LEN - _LONGEST_SOCKET}): set NBRAY_RUN_ROOT to "
                           f"a shorter path")
    os.makedirs(root, mode=0o700, exist_ok=True)
    st = os.lstat(root)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise ClusterError(f"{root} is not a directory of this user's: it cannot hold cluster "
                           f"keys (set NBRAY_RUN_ROOT elsewhere)")
    if st.st_mode & 0o077:
        os.chmod(root, 0o700)
    return root


@dataclass
class ClusterRecord:
    """What a process needs to join a cluster (and what ``nbray stop`` needs to stop it)."""
    session: str                   # the cluster's
    key: str                       # hex; never printed by the library
    head_address: str
    node_address: str = ""
    tcp_address: str = ""          # host:port of the head for other machines
    pids: list = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    #: this record's own name: the session for the head's, a fresh id for a joined node's; it
    #: names the run directory and the node's shared-memory segments
    name: str = ""
    role: str = "head"             # "head": a head and its node; "node": a joined node
    #: the interface this machine's processes of the cluster bind for TCP ("": ipc only, a
    #: cluster of one machine); drivers joining here bind it too, so remote workers reach them
    host: str = ""
    #: the URL of the dashboard's bokeh server ("": none; ``nbray start --dashboard-port``)
    dashboard: str = ""
    #: role "embedded": the driver (a script, a notebook's kernel) whose ``nbray.init()``
    #: started it, and that it stops with; such a cluster is that driver's, not the CLI's
    driver_pid: int = 0

    def __post_init__(self):
        self.name = self.name or self.session

    @property
    def rundir(self) -> str:
        return os.path.join(run_root(), self.name)

    @property
    def path(self) -> str:
        return os.path.join(run_root(), f"{self.name}.json")

    def save(self) -> str:
        path = self.path
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f)
        return path

    def rewrite(self) -> None:
        """Save a changed record in place of the old one (atomically)."""
        tmp = f"{self.path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f)
        os.replace(tmp, self.path)

    def live_pids(self) -> list[int]:
        """The recorded pids that are still this cluster's processes: a pid of a record whose
        processes died may have been reused by something unrelated, which must not be killed."""
        import psutil
        alive = []
        for pid in self.pids:
            try:
                p = psutil.Process(pid)
                if p.status() == psutil.STATUS_ZOMBIE:
                    continue
                cmd = p.cmdline()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if self.name in cmd and any(c.startswith(("nbray.runtime.", "nbray.dashboard."))
                                        for c in cmd):
                alive.append(pid)
        return alive

    def matches(self, address: str) -> bool:
        """Whether ``address`` (session id, ``host:port``, ``:port`` or a port) names us."""
        if address in (self.session, self.name, self.tcp_address, self.head_address):
            return True
        if not self.tcp_address:
            return False
        if ":" in address:
            host, _, port = address.rpartition(":")
            rhost, _, rport = self.tcp_address.rpartition(":")
            return port == rport and host in (rhost, "", "localhost", "127.0.0.1", "0.0.0.0")
        return address.isdigit() and self.tcp_address.endswith(f":{address}")

    @staticmethod
    def load_all() -> list["ClusterRecord"]:
        out = []
        root = run_root()
        for name in sorted(os.listdir(root)):
            if name.endswith(".json"):
                try:
                    with open(os.path.join(root, name)) as f:
                        out.append(ClusterRecord(**json.load(f)))
                except (OSError, ValueError, TypeError):
                    continue
        return out


#: starts a runtime process with the driver's own nbray package, whatever the working directory
#: holds (``python -m`` would import an ``nbray`` folder there first); the rest of sys.path is
#: left as ``-m`` makes it, so tasks import the user's modules from the working directory
_BOOT = """\
import importlib.util, runpy, sys
package, module = sys.argv.pop(1), sys.argv.pop(1)
spec = importlib.util.spec_from_file_location(
    "nbray", package + "/__init__.py", submodule_search_locations=[package])
sys.modules["nbray"] = nbray = importlib.util.module_from_spec(spec)
spec.loader.exec_module(nbray)
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""
_PACKAGE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def python_command(module: str) -> list[str]:
    """The command that runs ``python -m module`` with this process's nbray."""
    return [sys.executable, "-c", _BOOT, os.path.join(_PACKAGE, "nbray"), module]


def check_key(text: str) -> str:
    """A cluster key as text: 64 hex digits (32 bytes); ClusterError if it is not one."""
    text = text.strip()
    try:
        ok = len(bytes.fromhex(text)) == 32
    except ValueError:
        ok = False
    if not ok:
        raise ClusterError("a cluster key is 64 hex digits (the key file of `nbray start "
                           "--head` holds it)")
    return text


def _spawn(module: str, args: list[str], key: bytes, log: str | None) -> subprocess.Popen:
    """Start a head or node. It reports ``READY <address>`` on a pipe of its own (``ready``),
    so its stdout and stderr, which its workers inherit, stay free for what tasks print: the
    driver's own when embedded, a log file when detached."""
    env = dict(os.environ, NBRAY_KEY=key.hex())
    r, w = os.pipe()
    out = os.open(log, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600) if log else None
    try:
        proc = subprocess.Popen([*python_command(module), *args, "--ready-fd", str(w)],
                                env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                pass_fds=(w,), start_new_session=True)
    finally:
        os.close(w)
        if out is not None:
            os.close(out)
    proc.ready = os.fdopen(r, "r")
    proc.log = log
    return proc


def announce_ready(fd: int, address: str, session: str = "") -> None:
    """The child's side of ``_spawn``: say where it listens (and, for a node, the session of
    the cluster that accepted it), then close the pipe."""
    os.write(fd, f"READY {address} {session}".rstrip().encode() + b"\n")
    os.close(fd)


def _await_ready(procs: dict, timeout: float) -> dict:
    """Read each child's ``READY <address>``; fail with its exit status (and log) if it dies."""
    sel = selectors.DefaultSelector()
    for name, p in procs.items():
        sel.register(p.ready, selectors.EVENT_READ, name)
    found = {}
    deadline = time.monotonic() + timeout
    try:
        while len(found) < len(procs):
            left = deadline - time.monotonic()
            if left <= 0:
                raise ClusterError(f"cluster processes did not start within {timeout}s "
                                   f"(waiting for {sorted(set(procs) - set(found))})")
            for k, _ in sel.select(left):
                name, proc = k.data, procs[k.data]
                line = proc.ready.readline()
                sel.unregister(proc.ready)
                if not line.startswith("READY "):
                    raise ClusterError(f"the {name} process exited with code {proc.wait()} at "
                                       f"start{_log_tail(proc.log)}")
                found[name] = line.split(" ", 1)[1].strip()
    finally:
        sel.close()
        for p in procs.values():
            p.ready.close()
    return found


def _log_tail(log: str | None) -> str:
    if not log or not os.path.exists(log):
        return ""
    with open(log, errors="replace") as f:
        tail = "".join(f.readlines()[-20:]).strip()
    return f":\n{tail}" if tail else ""


def start(*, num_workers: int, resources: dict | None = None, host: str | None = None,
          port: int = 0, watch_pid: int | None = None, detach: bool = False) -> tuple:
    """Spawn a head and one node. Returns (ClusterRecord, {"head": Popen, "node": Popen})."""
    session = secrets.token_hex(4)
    key = secrets.token_bytes(32)
    rundir = os.path.join(run_root(), session)
    os.makedirs(rundir, mode=0o700)
    head_bind = [f"ipc://{rundir}/head"]
    node_bind = [f"ipc://{rundir}/node"]
    worker_bind = f"ipc://{rundir}/w-{{id}}"
    if host is not None:            # nodes of other machines may join: everything on TCP
        head_bind.append(f"tcp://{host}:{port or '*'}")
        node_bind.append(f"tcp://{host}:*")
        worker_bind = f"tcp://{host}:*"
    watch = ["--watch-pid", str(watch_pid)] if watch_pid else []
    # a cluster that lives as long as a process: its record goes when it does
    cleanup = ["--cleanup", os.path.join(run_root(), f"{session}.json")] if watch_pid else []
    logs = {name: os.path.join(rundir, f"{name}.log") for name in ("head", "node")} \
        if detach else {}
    procs = {
        "head": _spawn("nbray.runtime.head.main",
                       ["--session", session, *sum((["--bind", b] for b in head_bind), []),
                        *watch], key, logs.get("head")),
        "node": _spawn("nbray.runtime.node.main",
                       ["--session", session, "--head", head_bind[0],
                        *sum((["--bind", b] for b in node_bind), []),
                        "--worker-bind", worker_bind,
                        "--num-workers", str(num_workers), "--rundir", rundir,
                        "--resources", json.dumps(resources or {}), *watch, *cleanup], key,
                       logs.get("node")),
    }
    try:
        _await_ready(procs, timeout=60)
    except BaseException:
        for p in procs.values():
            _kill_group(p)
        shutil.rmtree(rundir, ignore_errors=True)
        raise
    tcp = ""
    if host is not None:
        tcp = _tcp_of(procs["head"], host, port)
    record = ClusterRecord(session, key.hex(), head_bind[0], node_bind[0], tcp,
                           [p.pid for p in procs.values()], host=host or "")
    return record, procs


def start_dashboard(record: ClusterRecord, procs: dict, host: str, port: int) -> str:
    """Start the dashboard's bokeh server (``nbray.dashboard.app``) for a saved cluster; it is
    one of the cluster's processes from then on (in ``procs`` and the record). Returns its
    URL."""
    proc, url = spawn_dashboard(record, ["--host", host, "--port", str(port)],
                                os.path.join(record.rundir, "dashboard.log"))
    procs["dashboard"] = proc
    record.pids.append(proc.pid)
    record.dashboard = url
    record.rewrite()
    return url


def spawn_dashboard(record: ClusterRecord, args: list, log: str,
                    watch_pids: tuple = ()) -> tuple:
    """A dashboard process (``nbray.dashboard.app``) for the cluster of ``record``, which
    exits with the cluster's head (and with any of ``watch_pids``); returns (Popen, its
    address) once it serves."""
    watch = [a for pid in (record.pids[0], *watch_pids) for a in ("--watch-pid", str(pid))]
    proc = _spawn("nbray.dashboard.app", ["--session", record.name, *args, *watch],
                  bytes.fromhex(record.key), log)
    try:
        return proc, _await_ready({"dashboard": proc}, timeout=60)["dashboard"]
    except BaseException:
        _kill_group(proc)
        raise


def join(address: str, key: bytes, *, num_workers: int, resources: dict | None = None,
         host: str = "127.0.0.1") -> tuple:
    """Start a node on this machine that joins the cluster whose head listens at ``address``
    (``host:port``), detached. Returns (ClusterRecord, {"node": Popen}); raises ClusterError,
    with the node's own words, if the head does not accept it."""
    address = address.removeprefix("tcp://")
    head_host, _, head_port = address.rpartition(":")
    if not head_host or not head_port.isdigit():
        raise ClusterError(f"the address of a head is host:port, got {address!r}")
    if host.startswith("127.") and not head_host.startswith("127.") and head_host != "localhost":
        raise ClusterError(f"this node would listen on {host}, which the head at {address} "
                           f"cannot reach: give --host an address of this machine that it can")
    name = secrets.token_hex(4)
    rundir = os.path.join(run_root(), name)
    os.makedirs(rundir, mode=0o700)
    record = ClusterRecord("", key.hex(), f"tcp://{address}", f"ipc://{rundir}/node", address,
                           name=name, role="node", host=host)
    log = os.path.join(rundir, "node.log")
    proc = _spawn("nbray.runtime.node.main",
                  ["--session", name, "--head", record.head_address,
                   "--bind", record.node_address, "--bind", f"tcp://{host}:*",
                   "--worker-bind", f"tcp://{host}:*",
                   "--num-workers", str(num_workers), "--resources", json.dumps(resources or {}),
                   "--cleanup", rundir, "--cleanup", record.path], key, log)
    try:
        found = _await_ready({"node": proc}, timeout=CONFIG.register_timeout_s + 30)
    except BaseException:
        _kill_group(proc)
        shutil.rmtree(rundir, ignore_errors=True)
        raise
    record.pids = [proc.pid]
    try:                    # from here a record must exist, or nothing can stop the node
        record.session = found["node"].split()[1]
        record.save()
    except BaseException:
        stop(record, {"node": proc})
        raise
    return record, {"node": proc}


def _tcp_of(head: subprocess.Popen, host: str, port: int) -> str:
    if port:
        return f"{host}:{port}"
    import psutil
    for c in psutil.Process(head.pid).net_connections(kind="tcp"):
        if c.status == psutil.CONN_LISTEN:
            return f"{host}:{c.laddr.port}"
    return ""


def stop(record: ClusterRecord, procs: dict | None = None) -> None:
    """Stop a cluster's processes (SIGTERM, then SIGKILL after the grace period) and clean up."""
    pids = [p.pid for p in procs.values()] if procs else record.live_pids()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + CONFIG.shutdown_grace_s + 2
    for pid in pids:
        _wait_pid(pid, deadline, procs)
    object_store.remove_session(record.name)
    shutil.rmtree(record.rundir, ignore_errors=True)
    try:
        os.unlink(record.path)
    except FileNotFoundError:
        pass


def _wait_pid(pid: int, deadline: float, procs: dict | None) -> None:
    popen = next((p for p in (procs or {}).values() if p.pid == pid), None)
    while True:
        if popen is not None:
            if popen.poll() is not None:
                return
        elif not _alive(pid):
            return
        if time.monotonic() > deadline:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            if popen is not None:
                popen.wait()
            return
        time.sleep(0.01)


def _alive(pid: int) -> bool:
    import psutil
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kill_group(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()


def find(address: str) -> ClusterRecord:
    """The record of the node on this machine that a driver joining ``address`` (``host:port``,
    a session id or record name, or "auto") should use: the head's own node if the head runs
    here, else a node that joined from here."""
    records = [r for r in ClusterRecord.load_all() if r.live_pids()]
    if address != "auto":
        records = [r for r in records if r.matches(address)]
    if records:
        return max(records, key=lambda r: (r.name == address, r.role == "head", r.started_at))
    if address == "auto":
        raise ClusterError("no running cluster found on this machine (start one with "
                           "`nbray start --head`)")
    if ":" in address:
        raise ClusterError(f"no node of the cluster at {address!r} runs on this machine: a "
                           f"driver talks to a node of its own machine. Start one with "
                           f"`nbray start --address {address} --key-file KEYFILE`")
    raise ClusterError(f"no running cluster at {address!r} on this machine")


def ask(record: ClusterRecord, address: str, request, timeout: float = 3.0):
    """Send one request to a cluster process (signed with the cluster's key) and return its
    answer, or None if none comes within ``timeout`` seconds."""
    from nbray.runtime import protocol as P
    from nbray.runtime.transport import Endpoint
    ep = Endpoint(bytes.fromhex(record.key), b"ask-" + os.urandom(6))
    try:
        ep.send(address, request)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            for _peer, msg in ep.recv(left * 1000):
                if isinstance(msg, P.Error):
                    raise ClusterError(f"{address} answered with an error: {msg.text}")
                return msg
    finally:
        ep.close()
