"""Every message that crosses a socket, as a small frozen tagged class.

A frame on the wire is ``[signature, pickle(message)]`` (see ``transport.py``); the class of the
unpickled object is its tag. Messages that carry many tasks or results carry lists, so one send
moves a batch. ``PROTOCOL_VERSION`` travels in every frame (and in the greetings of processes
that join): a frame of another version is dropped and counted, never unpickled.

Who sends what:
    client (driver or worker) -> node    Hello, RequestLease, ReturnLease, WorkerBlocked,
                                         WorkerUnblocked, Poke, FreeObjects, NodeInfoRequest,
                                         Goodbye, FetchObject -> Reply
    node -> node                         PullChunk -> Chunk, FreeCopies, FreeObjects
    node -> client                       Welcome, LeaseGranted, LeaseRejected, ReclaimLeases,
                                         WorkerDied, NodeInfo, LeaseSpilled, LeasePending,
                                         LeaseBusy
    client -> leased worker              PushTasks, CancelTasks, ReturnQueued,
                                         ActorInfoRequest
    worker -> client                     TaskResults, StreamItem, Reply
    worker -> driver                     TaskOutput, SetupDone
    driver -> node -> nodes, workers     SetupWorkers
    caller -> actor owner                SubscribeActor, KillActor
    actor owner -> caller                ActorState
    borrower -> owner                    Subscribe, AddBorrower, RemoveBorrower, ReportLost
    owner -> borrower                    ObjectStates, Ack
    node -> head                         RegisterNode, Heartbeat, NodeLeaving
    head -> node                         NodeRegistered, HeartbeatAck, NodeUnknown, Shutdown
    node -> head                         ClientGone, SpillLease
    head -> node                         SpillTo, SpillPending, ClientGone, NodeDied
    node -> client                       NodeDied
    actor owner -> head                  RegisterActor -> Reply, ActorUpdate
    client -> node                       KeeperAddress -> Reply
    client -> keeper (a worker)          CreateDetached -> Reply
    client -> head                       CreatePlacementGroup, RemovePlacementGroup,
                                         ListPlacementGroups -> Reply
    head -> node                         PrepareBundles -> BundlesPrepared, CommitBundles,
                                         ReleaseBundles
    client -> head                       ReportEvents
    anyone -> head                       ClusterInfoRequest -> ClusterInfo; LookupActor,
                                         ListActors, ListNodes, ListEvents -> Reply; Shutdown
"""
from __future__ import annotations

from typing import Any, NamedTuple

PROTOCOL_VERSION = 6

# How an object's value travels (first field of a ``Value``).
INLINE = 0      # payload: pickle bytes (protocol 5, in-band)
SHM = 1         # payload: ShmLocation
ERROR = 2       # payload: pickle bytes of the exception to raise
PENDING = 3     # not ready yet (only in ObjectStates)
LOST = 4        # payload: text saying why


def value_size(value) -> int | None:
    """The bytes of a value's payload (inline or in shared memory); None for an error."""
    if value is None:
        return None
    if value.kind == INLINE:
        return len(value.payload)
    if value.kind == SHM:
        return value.payload.size
    return None


class ShmLocation(NamedTuple):
    node_id: bytes
    path: str
    size: int


class Value(NamedTuple):
    kind: int
    payload: Any
    #: refs nested inside the value, as (object_id, owner_address), pinned while it lives
    contained: tuple = ()


# What a TaskSpec asks the worker to do (its ``kind``).
TASK = 0            # call the function ``fn_id``
ACTOR_CREATE = 1    # become actor ``actor_id``: instantiate the class ``fn_id``
ACTOR_CALL = 2      # call the method named ``fn_id`` (a str) of actor ``actor_id``

# The life of an actor (``ActorState.state``).
PENDING = "pending"         # waiting for a worker, or its constructor runs
ALIVE = "alive"
RESTARTING = "restarting"   # its worker died; a new one is being made
DEAD = "dead"


class TaskSpec(NamedTuple):
    task_id: bytes
    fn_id: bytes
    name: str
    #: pickle of (args, kwargs) with each top-level ObjectRef replaced by an _ArgSlot
    args_blob: bytes
    #: values of the top-level refs, in slot order
    arg_values: tuple
    num_returns: int
    #: ids of the objects the task returns
    return_ids: tuple
    kind: int = TASK
    actor_id: bytes = b""
    #: (driver address, scope) where what the task prints goes (see ``output.py``)
    origin: tuple = ()
    #: NOT_GENERATOR, or how a function that yields returns its items (STREAMING, DYNAMIC)
    generator: int = 0
    #: (placement group id hex, bundle index) its own tasks run in (it captures them), or ()
    placement: tuple = ()


# A task that yields (``TaskSpec.generator``): each item is an object of its own, sent to the
# owner as it is yielded (``StreamItem``); the task's own return value is the item count.
NOT_GENERATOR = 0
STREAMING = 1       # the caller iterates the items while the task runs (ObjectRefGenerator)
DYNAMIC = 2         # the task's one ref resolves, at its end, to a generator of the items' refs


class StreamItem(NamedTuple):
    """Worker -> owner: item ``index`` (from 1) that the generator task ``task_id`` yielded;
    its object id is ``return_id(task_id, index)``."""
    task_id: bytes
    index: int
    value: Value


class TaskOutput(NamedTuple):
    """Worker -> driver: text a task of ``scope`` printed, from ``source`` (the task's name,
    its worker's pid and host)."""
    scope: int
    stream: str         # "stdout" or "stderr"
    text: str
    source: str


class SetupWorkers(NamedTuple):
    """Driver -> its node -> the other nodes (``forwarded``) and every worker, now and started
    later: run ``fn(*args)`` (cloudpickled) once, between tasks, for the driver ``owner``."""
    setup_id: int
    owner: str
    blob: bytes
    origin: tuple = ()
    forwarded: bool = False
    #: a setup sent again with the same key (the same cell run again) replaces the earlier
    key: str = ""


class SetupDone(NamedTuple):
    """Worker -> driver: how a setup went on it (``error``: the traceback, or "")."""
    setup_id: int
    source: str
    value: Any
    error: str = ""


class TaskResult(NamedTuple):
    task_id: bytes
    #: one Value per return id (ERROR values when the task raised)
    values: tuple
    run_s: float
    #: when it started on the worker (seconds since the epoch; 0 if not known)
    started: float = 0.0
    #: of ``run_s``, the time spent reading its arguments (fetching them from another node,
    #: mapping shared memory, unpickling)
    inputs_s: float = 0.0


# ---- client <-> node -------------------------------------------------------------------------
class Hello(NamedTuple):
    client_id: bytes
    pid: int
    address: str
    worker_id: bytes | None = None
    version: int = PROTOCOL_VERSION


class Welcome(NamedTuple):
    node_id: bytes
    session: str
    resources: dict
    store_dir: str
    head_address: str = ""
    cluster_resources: dict = {}
    #: the bounds of the cluster's queues and object store (``config.LIMITS``)
    limits: dict = {}


class Goodbye(NamedTuple):
    """The client leaves (its process may live on): its leases and requests end now."""
    client_id: bytes


class RequestLease(NamedTuple):
    request_id: int
    resources: dict
    #: an actor's lease: kept for the actor's life, its worker retired when it ends, and
    #: holding ``hold`` (not ``resources``, which must be free to place it) meanwhile
    actor: bool = False
    hold: dict | None = None
    #: the global scheduler sent it here: queue it, do not spill it again
    spilled: bool = False
    #: the node whose data the task reads most of (bytes), for locality
    prefer_node: bytes = b""
    #: the node of the client asking: its leases end if that node dies
    client_node: bytes = b""
    #: why the global scheduler placed it here ("" when the first node kept it); see
    #: ``LeaseGranted.placed``
    placed: str = ""


class LeaseSpilled(NamedTuple):
    """Node -> client: ask the node at ``address`` for this lease instead."""
    request_id: int
    address: str
    node_id: bytes
    why: str


class LeasePending(NamedTuple):
    """Node -> client: no node can grant this lease now or ever (yet); it waits."""
    request_id: int
    reason: str


class LeaseGranted(NamedTuple):
    request_id: int
    worker_id: bytes
    address: str
    pid: int = 0
    node_id: bytes = b""
    #: "" when the node first asked kept the request; else "<reason>: <why>", the reason
    #: the first node spilled it to the global scheduler (``resources``: it has not got them,
    #: ``queue``: they are busy there, ``locality``: the inputs are elsewhere), then why the
    #: global scheduler chose this node
    placed: str = ""


class LeaseRejected(NamedTuple):
    request_id: int
    reason: str


class LeaseBusy(NamedTuple):
    """Node -> client: its queue of lease requests is full (``node_queue_max``); ask again
    later. The request is not kept."""
    request_id: int
    queued: int


class ReturnLease(NamedTuple):
    worker_id: bytes
    #: retire the worker instead of pooling it again (it hosted an actor)
    kill: bool = False


class ReclaimLeases(NamedTuple):
    pass


class WorkerBlocked(NamedTuple):
    worker_id: bytes


class WorkerUnblocked(NamedTuple):
    worker_id: bytes


class WorkerDied(NamedTuple):
    worker_id: bytes
    reason: str
    #: an actor's worker, retired because the actor's owner died: it will not come back
    owner_died: bool = False


class Poke(NamedTuple):
    """Make a worker look at its socket now (a cancel for its running task); ``force`` kills it.
    A node that does not have the worker sends it on to the others (``forward``), once."""
    worker_id: bytes
    force: bool = False
    forward: bool = True


class ChaosKill(NamedTuple):
    """Anyone -> a node (for ``nbray.chaos``): SIGKILL one of its workers (by id), or the whole
    node with its workers (empty id)."""
    worker_id: bytes = b""


class FreeObjects(NamedTuple):
    paths: tuple
    #: the node whose store holds them (empty: the receiving node); another node's are sent on
    node_id: bytes = b""
    #: their owner unlinked them itself: the node only lets go of what it served from them
    unlinked: bool = False


class FetchObject(NamedTuple):
    """Client -> its node: make this object's segment local; the Reply's value is its path."""
    request_id: int
    location: "ShmLocation"


# ---- node <-> node (object transfer) -------------------------------------------------------------
class PullChunk(NamedTuple):
    transfer_id: int
    path: str
    offset: int
    length: int


class Chunk(NamedTuple):
    transfer_id: int
    offset: int
    data: bytes
    error: str = ""


class FreeCopies(NamedTuple):
    """The node that served these segments freed them: drop the copies made of them."""
    paths: tuple


class NodeInfoRequest(NamedTuple):
    pass


class NodeInfo(NamedTuple):
    info: dict


# ---- client <-> worker -----------------------------------------------------------------------
class PushTasks(NamedTuple):
    owner: str          # the address of the pushing client, whose results these are
    tasks: list
    #: fn_id -> cloudpickled function, for functions this worker has not seen from this client
    functions: dict


class CancelTasks(NamedTuple):
    task_ids: tuple


class ReturnQueued(NamedTuple):
    """Client -> leased worker: answer the tasks pushed to you that have not started as
    bounced (as when you block in get), so they run elsewhere: the one running has run far
    longer than its kind does, and what waits behind it may be what it waits for."""
    note: str = ""


class TaskResults(NamedTuple):
    results: list


# ---- actors ----------------------------------------------------------------------------------
class SubscribeActor(NamedTuple):
    """A caller holds a handle: tell it where the actor is, now and whenever that changes."""
    actor_id: bytes


class ActorState(NamedTuple):
    actor_id: bytes
    #: how many times it was (re)created; calls in flight on an older incarnation are lost
    incarnation: int
    state: str
    address: str = ""           # its worker's, once it has one
    #: DEAD: the Value every call fails with (an __init__ error, or an ActorDiedError)
    error: Any = None
    worker_pid: int = 0
    node_id: bytes = b""
    worker_id: bytes = b""
    #: it is re-created when its worker dies: callers keep their calls to replay them
    restartable: bool = False
    #: its last checkpoint holds, per caller (address), the calls up to this task id: a
    #: caller replays only its calls after that one
    marks: dict = {}


class ActorCheckpoint(NamedTuple):
    """Actor's worker -> its owner: the value of ``__nbray_checkpoint__()``, taken after the
    calls ``marks`` names (per caller address, the last task id run)."""
    actor_id: bytes
    state: Any                      # a Value
    marks: dict


class KillActor(NamedTuple):
    actor_id: bytes
    no_restart: bool = True


class ActorInfoRequest(NamedTuple):
    request_id: int
    actor_id: bytes


class RegisterActor(NamedTuple):
    """Owner -> head: a named actor; the Reply's error says if the name is taken."""
    request_id: int
    entry: dict


class ActorUpdate(NamedTuple):
    """Owner -> head: an actor's table row changed (no reply)."""
    actor_id: bytes
    fields: dict


class LookupActor(NamedTuple):
    request_id: int
    name: str
    namespace: str = ""


class ListActors(NamedTuple):
    request_id: int


class KeeperAddress(NamedTuple):
    """client -> node: the address of the node's keeper (a worker, started on first need and
    never leased, that owns detached actors) -> Reply."""
    request_id: int


class CreateDetached(NamedTuple):
    """client -> keeper: create an actor the keeper owns, so it outlives the client ->
    Reply(request_id, its handle). ``blob``: cloudpickle of (actor class, args, kwargs)."""
    request_id: int
    reply_to: str
    blob: bytes


# ---- placement groups (head: head/placement_groups.py; node: node/bundles.py) ---------------
class CreatePlacementGroup(NamedTuple):
    """client -> head; Reply value: {"state", "reason"} (why it waits, if it does)."""
    request_id: int
    pg_id: bytes
    bundles: list               # [{resource: amount}]
    strategy: str               # PACK, SPREAD, STRICT_PACK, STRICT_SPREAD
    name: str
    owner: str                  # it is removed when this client goes, unless detached
    detached: bool = False


class RemovePlacementGroup(NamedTuple):
    request_id: int
    pg_id: bytes


class ListPlacementGroups(NamedTuple):
    """Reply value: the table's rows (``name``: only the group of that name)."""
    request_id: int
    name: str = ""


class PrepareBundles(NamedTuple):
    """head -> node: set aside these bundles' resources -> BundlesPrepared."""
    pg_id: bytes
    bundles: list               # [(bundle index, {resource: amount})]


class BundlesPrepared(NamedTuple):
    pg_id: bytes
    node_id: bytes
    ok: bool
    reason: str = ""


class CommitBundles(NamedTuple):
    """head -> node: every bundle was set aside: the group's resources exist now."""
    pg_id: bytes


class ReleaseBundles(NamedTuple):
    """head -> node: the group is removed (or its preparation failed): its resources go back,
    and the workers that hold some of them are killed. ``removed``: for good (every node
    hears it, and refuses what asks for the group's resources from then on)."""
    pg_id: bytes
    removed: bool = False
    indices: tuple = ()         # only these bundles (their preparation failed); () all


class ReportEvents(NamedTuple):
    """Client -> head: the events it recorded since its last report, and its task records
    pickled as one batch of ``task_count`` (see ``events.py``)."""
    events: list
    tasks: bytes = b""
    task_count: int = 0
    #: the newest of its unfinished tasks (``task_log.unfinished``), pickled, and how many it
    #: has in all; -1: no news of them in this report
    unfinished: bytes = b""
    unfinished_count: int = -1
    #: the reporting client's address (its unfinished tasks go when it does: ``ClientGone``)
    owner: str = ""
    #: per function, what its task records since the last report add up to:
    #: ``{name: [finished, failed, cancelled, run seconds, wait seconds, timed]}``
    summary: dict | None = None


class TaskSummary(NamedTuple):
    """Client -> head: the per-function totals of every task record reported so far, as a
    Reply: ``{name: [finished, failed, cancelled, run seconds, wait seconds, timed]}``."""
    request_id: int


class ListEvents(NamedTuple):
    """The head's event log (newest last), as a Reply: ``{"events", "total", "kept",
    "dropped"}``; only ``kinds`` if given, only after ``since_seq``, the last ``limit``."""
    request_id: int
    kinds: tuple = ()
    since_seq: int = 0
    limit: int | None = None
    #: with kind "task": also the unfinished tasks other clients last reported (not those of
    #: the client at this address), under ``"unfinished"``
    unfinished_except: str | None = None


class ClientGone(NamedTuple):
    """Node -> head, head -> other nodes: a client (driver or worker) has died or left; its
    leases on any node end."""
    address: str
    client_id: bytes = b""
    #: a driver: what it owned goes with it, on every node
    driver: bool = False


class NodeDied(NamedTuple):
    """Head -> nodes -> their clients: a node was declared dead or left. Its workers, their
    leases and the objects only it held are gone; its clients' leases elsewhere end."""
    node_id: bytes
    address: str
    reason: str


class SpillLease(NamedTuple):
    """Node -> head: place this lease request on another node (the global scheduler)."""
    spill_id: int
    resources: dict
    hold: dict | None
    origin: bytes                   # the node that spills it
    why: str                        # why it did not keep it
    prefer_node: bytes = b""


class SpillTo(NamedTuple):
    """Head -> the spilling node: the node chosen (it may be the spilling node itself)."""
    spill_id: int
    node_id: bytes
    address: str
    why: str


class SpillPending(NamedTuple):
    """Head -> the spilling node: no node has the resources; it waits for one that has."""
    spill_id: int
    reason: str


class Reply(NamedTuple):
    """The answer to a request that carried ``request_id``: ``value``, or ``error`` text."""
    request_id: int
    value: Any = None
    error: str = ""


# ---- borrower <-> owner ----------------------------------------------------------------------
class Subscribe(NamedTuple):
    object_ids: tuple


class ObjectStates(NamedTuple):
    #: (object_id, Value) pairs; kind PENDING is never sent, the owner answers when ready
    states: list


class ReportLost(NamedTuple):
    """Borrower -> owner: the copy you told me of cannot be read (at ``path``): rebuild it."""
    object_id: bytes
    path: str


class AddBorrower(NamedTuple):
    object_ids: tuple
    borrower: bytes
    ack_id: int = 0


class RemoveBorrower(NamedTuple):
    object_ids: tuple
    borrower: bytes


class Ack(NamedTuple):
    ack_id: int


# ---- node/driver <-> head --------------------------------------------------------------------
class RegisterNode(NamedTuple):
    node_id: bytes
    host: str
    address: str                    # where other nodes and remote clients reach it
    resources: dict
    pid: int
    version: int = PROTOCOL_VERSION


class NodeRegistered(NamedTuple):
    """The head accepted a node into cluster ``session``."""
    session: str


class NodeLeaving(NamedTuple):
    node_id: bytes


class Heartbeat(NamedTuple):
    node_id: bytes
    stats: dict


class HeartbeatAck(NamedTuple):
    """Head -> node: the head is alive (a node whose heartbeats go unanswered stops); with the
    live nodes, ``{node_id: (address, resources)}``, for transfers and the cluster's size."""
    nodes: dict = {}


class ClusterResources(NamedTuple):
    """Node -> its clients: the resources of all live nodes together changed (a client asks
    for as many leases as the cluster, not only its node, can grant)."""
    total: dict


class NodeUnknown(NamedTuple):
    """Head -> node: a heartbeat from a node the head does not know (the head restarted, or
    declared the node dead): register again."""


class ListNodes(NamedTuple):
    request_id: int


class ListDecisions(NamedTuple):
    """The global scheduler's recent placements (and the requests waiting): a Reply."""
    request_id: int


class ClusterInfoRequest(NamedTuple):
    pass


class ClusterInfo(NamedTuple):
    session: str
    nodes: list
    head: dict | None = None        # the head's own counters


class Shutdown(NamedTuple):
    pass


class Error(NamedTuple):
    """A request could not be served; ``text`` says why."""
    text: str
