"""Several nodes on one machine as one cluster: for teaching, notebooks and tests (Ray's
``ray.cluster_utils.Cluster``).

    cluster = Cluster(head_node_args={"num_cpus": 1})
    gpu = cluster.add_node(num_cpus=1, resources={"GPU": 1})
    cluster.connect()                      # nbray.init(address=cluster.address)
    ...
    cluster.remove_node(gpu, allow_graceful=False)     # SIGKILL: a machine lost
    cluster.shutdown()

Each node is a real node process with its own workers, ports and shared-memory segments,
joined to the head over TCP on 127.0.0.1, as ``nbray start --address`` joins one.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

from nbray import config
from nbray.errors import ClusterError
from nbray.runtime import cluster as _cluster


@dataclass
class ClusterNode:
    """A node of a ``Cluster``: ``node_id`` (hex, as ``nbray.state.nodes()`` says), ``pid``."""
    node_id: str
    pid: int
    resources: dict
    head: bool = False
    _record: object = field(default=None, repr=False)
    _procs: dict = field(default_factory=dict, repr=False)


class Cluster:
    def __init__(self, initialize_head: bool = True, connect: bool = False,
                 head_node_args: dict | None = None):
        self.head_node: ClusterNode | None = None
        self.worker_nodes: list[ClusterNode] = []
        self._connected = False
        if initialize_head:
            self.add_node(**(head_node_args or {}))
            if connect:
                try:
                    self.connect()
                except BaseException:
                    self.shutdown()     # nobody else holds it: stop it
                    raise
        elif connect:
            raise ValueError("connect=True needs initialize_head=True: there is no head yet")

    @property
    def address(self) -> str:
        if self.head_node is None:
            raise ClusterError("the cluster has no head yet: add_node() starts it")
        return self.head_node._record.tcp_address

    def add_node(self, num_cpus: int = 1, resources: dict | None = None, num_gpus: float = 0,
                 wait: bool = True, _system_config: dict | None = None) -> ClusterNode:
        """Start the head (the first call) or a node that joins it; returns the node once the
        head lists it (``wait``; without it ``node_id`` is "" until ``wait_for_nodes``). ``_system_config``: knobs of ``nbray.config`` for the
        processes of this node (of the head too, for the first), e.g.
        ``{"node_timeout_s": 2.0}``."""
        res = dict(resources or {})
        if num_gpus:
            res["GPU"] = num_gpus
        # for the node's processes only: a driver connected here keeps its own knobs
        before = config.apply(config.check_overrides(_system_config or {}), here=False)
        try:
            return self._add_node(num_cpus, res, wait)
        finally:
            config.restore(before)              # the children have them; we are as we were

    def _add_node(self, num_cpus: int, res: dict, wait: bool) -> ClusterNode:
        if self.head_node is None:
            # it stops if this process dies (a notebook's kernel killed): nothing is left
            record, procs = _cluster.start(num_workers=num_cpus, resources=res,
                                           host="127.0.0.1", detach=True,
                                           watch_pid=os.getpid())
            record.save()
            node = ClusterNode("", procs["node"].pid, {"CPU": num_cpus, **res}, True,
                               record, procs)
            self.head_node = node
        else:
            record, procs = _cluster.join(self.address, bytes.fromhex(
                self.head_node._record.key), num_workers=num_cpus, resources=res)
            node = ClusterNode("", procs["node"].pid, {"CPU": num_cpus, **res}, False,
                               record, procs)
            self.worker_nodes.append(node)
        node.node_id = self._await_listed(node.pid, 30 if wait else 0)
        return node

    def remove_node(self, node: ClusterNode, allow_graceful: bool = True) -> None:
        """Stop a node that joined (gracefully, or SIGKILL with its workers: the head finds it
        dead when its heartbeats stop)."""
        if node.head:
            raise ValueError("the head's node goes with the cluster: call shutdown()")
        if node not in self.worker_nodes:
            raise ValueError(f"{node} is not a node of this cluster")
        self.worker_nodes.remove(node)
        if not allow_graceful:
            try:
                os.killpg(node.pid, signal.SIGKILL)     # the node leads its workers' group
            except ProcessLookupError:
                pass
        _cluster.stop(node._record, node._procs)

    def list_all_nodes(self) -> list[ClusterNode]:
        return ([self.head_node] if self.head_node else []) + list(self.worker_nodes)

    def wait_for_nodes(self, timeout: float = 30) -> None:
        """Wait until the head lists every node of this cluster as alive."""
        want = {n.pid for n in self.list_all_nodes()}
        deadline = time.monotonic() + timeout
        while want - self._alive_pids():
            if time.monotonic() > deadline:
                raise TimeoutError(f"nodes {sorted(want - self._alive_pids())} did not join "
                                   f"within {timeout}s")
            time.sleep(0.05)
        ids = {n["pid"]: n["node_id"] for n in self._nodes()}
        for node in self.list_all_nodes():
            node.node_id = node.node_id or ids.get(node.pid, "")

    def connect(self):
        """``nbray.init(address=self.address)``: this process drives the cluster."""
        import nbray
        ctx = nbray.init(address=self.address)
        self._connected = True
        return ctx

    def shutdown(self) -> None:
        """Leave it (if connected) and stop every node and the head; nothing is left."""
        import nbray
        if self._connected and nbray.is_initialized():
            nbray.shutdown()
        self._connected = False
        for node in reversed(self.worker_nodes):
            _cluster.stop(node._record, node._procs)
        self.worker_nodes = []
        if self.head_node is not None:
            _cluster.stop(self.head_node._record, self.head_node._procs)
            self.head_node = None

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # ---- the head's view -------------------------------------------------------------------
    def _nodes(self) -> list[dict]:
        from nbray.runtime import protocol as P
        record = self.head_node._record
        reply = _cluster.ask(record, record.head_address, P.ListNodes(0), timeout=5)
        return list(reply.value) if reply is not None and reply.value else []

    def _alive_pids(self) -> set:
        return {n["pid"] for n in self._nodes() if n.get("state") == "alive"}

    def _await_listed(self, pid: int, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for n in self._nodes():
                if n["pid"] == pid:
                    return n["node_id"]
            if time.monotonic() > deadline:
                if timeout:
                    raise TimeoutError(f"the node (pid {pid}) did not join within {timeout}s")
                return ""
            time.sleep(0.05)
