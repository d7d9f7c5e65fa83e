"""Shared fixtures and helpers for the nbray test suite.

Every test runs against a real embedded cluster: a head, a node and its worker processes,
talking over ipc sockets, with large values in /dev/shm. Nothing of the runtime is mocked.

Fixtures:

``cluster``         a fresh 2-worker cluster for one test (for tests that kill, cancel or
                    otherwise disturb the cluster)
``module_cluster``  one 2-worker cluster shared by the tests of a module (cheap tests)
``any_cluster``     the tests that hold on any backend (``nbray/backends/``): parametrised
                    over nbray's runtime (``module_cluster``) and Ray (a real local Ray
                    cluster of a head and one more node, started once per session; those
                    tests are marked ``ray``: ``pytest -m ray``, which ``.ci/run`` runs)

Both stop the cluster at teardown and check that it left nothing behind: no descendant
processes, no shared-memory segments of its session, no run directory, no I/O thread.

Test modules are registered with cloudpickle to be pickled *by value*, as a notebook's
``__main__`` is: the workers cannot import ``test_*`` modules, and need not.
"""
from __future__ import annotations

import glob
import os
import threading
import time
from dataclasses import dataclass

import cloudpickle
import psutil
import pytest

import nbray
from nbray import api
from nbray.runtime import object_store

NUM_WORKERS = 2
POLL_S = 0.02


# ---- helpers -----------------------------------------------------------------------------------
def wait_until(predicate, timeout: float, what: str, interval: float = POLL_S):
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout`` passes
    (AssertionError naming ``what``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` is a running process (a zombie counts as dead)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def processes_under(root: str) -> list[int]:
    """Pids of the processes whose command line names ``root`` (a run root: a cluster's
    processes name their sockets and directories under it), wherever they were started."""
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(root in arg for arg in p.info["cmdline"] or ()):
                out.append(p.info["pid"])
        except psutil.Error:
            pass
    return out


def descendants() -> list[psutil.Process]:
    """Live descendant processes of this (the test) process."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def segments(session: str) -> list[str]:
    """Shared-memory segments of a session."""
    return sorted(glob.glob(os.path.join(object_store.store_dir(),
                                         f"{object_store.PREFIX}{session}_*")))


def run_root() -> str:
    from nbray.runtime import cluster
    return cluster.run_root()


def rundir_of(session: str) -> str:
    return os.path.join(run_root(), session)


def io_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "nbray-io" and t.is_alive()]


def assert_nothing_left(session: str, pids, timeout: float = 10.0) -> None:
    """The cluster of ``session`` is gone: its processes, segments, run directory, I/O thread."""
    pids = set(pids)
    wait_until(lambda: not [p for p in pids if pid_alive(p)], timeout,
               f"processes of session {session} to exit: "
               f"{[p for p in pids if pid_alive(p)]}")
    wait_until(lambda: not descendants(), timeout,
               f"no child processes of the test process left: {descendants()}")
    wait_until(lambda: not segments(session), timeout,
               f"shared-memory segments of session {session} to be removed: "
               f"{segments(session)}")
    wait_until(lambda: not os.path.exists(rundir_of(session)), timeout,
               f"run directory {rundir_of(session)} to be removed")
    wait_until(lambda: not io_threads(), timeout, "the driver's nbray-io thread to end")


@dataclass
class Cluster:
    """A running embedded cluster and handles to look at its processes and files."""
    ctx: api.ClusterContext

    @property
    def session(self) -> str:
        return self.ctx.session

    @property
    def record(self):
        return api._driver.record

    @property
    def client(self):
        return api._driver.client

    @property
    def rundir(self) -> str:
        return rundir_of(self.session)

    def proc(self, role: str) -> psutil.Process:
        """The head or node process (a child of the driver)."""
        return psutil.Process(api._driver.procs[role].pid)

    def worker_pids(self) -> set[int]:
        """Pids of the node's live worker processes."""
        out = set()
        for p in self.proc("node").children():
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    out.add(p.pid)
            except psutil.NoSuchProcess:
                pass
        return out

    def segments(self) -> list[str]:
        return segments(self.session)

    def segment_of(self, ref: nbray.ObjectRef) -> str:
        return object_store.segment_path(self.session, ref.binary())


def start_cluster(**kwargs) -> Cluster:
    assert not nbray.is_initialized(), "a previous test left nbray initialized"
    kwargs.setdefault("num_workers", NUM_WORKERS)
    ctx = nbray.init(**kwargs)
    return Cluster(ctx)


def shutdown_and_check(timeout: float = 10.0) -> None:
    """``nbray.shutdown()`` the current driver and check that its cluster left nothing."""
    record = api._driver.record
    session = record.session if record is not None else None
    pids = {p.pid for p in descendants()}
    nbray.shutdown()
    if session is not None:
        assert_nothing_left(session, pids, timeout)


# ---- fixtures ----------------------------------------------------------------------------------
@pytest.fixture
def cluster():
    c = start_cluster()
    try:
        yield c
    finally:
        shutdown_and_check()


@pytest.fixture(scope="module")
def module_cluster():
    c = start_cluster()
    try:
        yield c
    finally:
        shutdown_and_check()


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster for the session: a head and a second node (Ray's own helper),
    2 CPUs each; at teardown none of its processes is left."""
    import ray
    from ray.cluster_utils import Cluster as RayCluster
    for module in _BY_VALUE:        # as for nbray's workers: the test modules by value
        ray.cloudpickle.register_pickle_by_value(module)
    before = {p.pid for p in descendants()}
    c = RayCluster(initialize_head=True, head_node_args={
        "num_cpus": NUM_WORKERS, "include_dashboard": True})      # (Ray's state API)
    try:
        c.add_node(num_cpus=NUM_WORKERS)
        c.wait_for_nodes()
        yield c
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.shutdown()
        wait_until(lambda: not [p for p in descendants() if p.pid not in before], 30,
                   f"the Ray cluster's processes to exit: {descendants()}")


@pytest.fixture(scope="module", params=["nbray", pytest.param("ray", marks=pytest.mark.ray)])
def any_cluster(request):
    """nbray's own cluster (``module_cluster``) or a driver on the session's Ray cluster."""
    if request.param == "nbray":
        yield request.getfixturevalue("module_cluster")
        return
    if api._driver.client is not None:
        pytest.fail("nbray's own cluster is up in this module; run the Ray leg on its own "
                    "(pytest -m ray)")
    yield request.getfixturevalue("ray_driver")


@pytest.fixture(scope="module")
def ray_driver(ray_cluster):
    """This process as an nbray driver on the session's Ray cluster, for a module's tests."""
    import ray
    ctx = nbray.init(backend="ray", address=ray_cluster.address)
    try:
        yield Cluster(ctx)
    finally:
        nbray.shutdown()
        assert not ray.is_initialized(), "nbray.shutdown() left Ray connected"


@pytest.fixture
def no_cluster():
    """A test that starts clusters itself: none is running before, none after."""
    assert not nbray.is_initialized()
    yield
    if nbray.is_initialized():
        shutdown_and_check()
    wait_until(lambda: not descendants(), 10, f"no child processes left: {descendants()}")


@pytest.fixture
def kernel():
    """A real ipykernel of this interpreter: (KernelManager, its started client)."""
    jupyter_client = pytest.importorskip("jupyter_client")
    km = jupyter_client.KernelManager(kernel_name="python3")
    km.start_kernel(env={**os.environ})
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    try:
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


# ---- collection --------------------------------------------------------------------------------
def pytest_collection_modifyitems(session, config, items):
    """Pickle the test modules' functions and classes by value, like a notebook's."""
    seen = set()
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and module.__name__ not in seen:
            seen.add(module.__name__)
            cloudpickle.register_pickle_by_value(module)
            _BY_VALUE.append(module)


_BY_VALUE: list = []        # the test modules, for a Ray cluster's pickler too
