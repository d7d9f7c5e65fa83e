"""The ``nbray`` command: start, inspect and stop clusters on this machine, and run the demo.

    nbray start --head [--host H] [--port P] [--num-workers N] [--num-gpus G] [--resources JSON]
    nbray start --address HOST:PORT [--key-file F] [--num-workers N] [--num-gpus G] [...]
    nbray status [--address A]
    nbray stop [--address A | --all]
    nbray demo [--iterations N] [--rollouts N] [--episodes N] [--out DIR]
    nbray --version

A cluster started here runs detached (its own session), so it outlives this command. Its record,
which holds the cluster key, is a mode 0600 file under ``/tmp/nbray-<uid>/``; this command never
prints the key.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import stat
import sys
import time

import nbray
from nbray.errors import ClusterError
from nbray.runtime import cluster

#: how long ``nbray status`` waits for a head to answer
STATUS_TIMEOUT_S = 3.0


# ---- start ---------------------------------------------------------------------------------------
def _parse_resources(text: str | None) -> dict:
    if not text:
        return {}
    try:
        res = json.loads(text)
    except ValueError as e:
        raise SystemExit(_err(f"--resources is not valid JSON: {e}", code=2))
    if not isinstance(res, dict):
        raise SystemExit(_err('--resources must be a JSON object, e.g. \'{"GPU": 1, "fast": 2}\'',
                              code=2))
    for k, v in res.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise SystemExit(_err(f"--resources: {k!r} must map to a non-negative number, "
                                  f"got {v!r}", code=2))
    if "CPU" in res:
        raise SystemExit(_err("--resources cannot set CPU; use --num-workers", code=2))
    return res


def _read_key(path: str) -> str:
    """A key file is the record ``nbray start --head`` wrote (JSON with a "key") or the key's
    64 hex digits alone."""
    try:
        with open(path) as f:
            text = f.read().strip()
            mode = os.fstat(f.fileno()).st_mode
    except OSError as e:
        raise SystemExit(_err(f"cannot read the key file: {e}", code=2))
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        print(f"nbray: warning: the key file {path} can be read by other users (mode "
              f"{stat.S_IMODE(mode):o}); anyone who reads it can run code on the cluster: "
              f"chmod 600 {path}", file=sys.stderr)
    if text.startswith("{"):
        try:
            text = json.loads(text)["key"]
        except (ValueError, KeyError, TypeError):
            raise SystemExit(_err(f"{path} is JSON without a \"key\"", code=2))
    try:
        if len(bytes.fromhex(text)) != 32:
            raise ValueError
    except ValueError:
        raise SystemExit(_err(f"{path} does not hold a cluster key (64 hex digits)", code=2))
    return text


def _join_key(args) -> str:
    if args.key_file:
        return _read_key(args.key_file)
    if os.environ.get("NBRAY_KEY"):
        try:
            return cluster.check_key(os.environ["NBRAY_KEY"])
        except ClusterError as e:
            raise SystemExit(_err(f"NBRAY_KEY: {e}", code=2))
    for r in cluster.ClusterRecord.load_all():     # the head runs on this machine
        if r.role == "head" and r.tcp_address and r.matches(args.address) and r.live_pids():
            return r.key
    raise SystemExit(_err(f"joining {args.address} needs the cluster key: pass --key-file with "
                          f"the key file `nbray start --head` wrote, or set NBRAY_KEY", code=2))


def _system_config(args) -> dict:
    """--system-config and --object-store-memory, checked; the knobs of the processes this
    command starts (they inherit them), told to the drivers that join."""
    from nbray import config
    raw = {}
    if args.system_config:
        try:
            raw = json.loads(args.system_config)
        except ValueError as e:
            raise SystemExit(_err(f"--system-config is not valid JSON: {e}", code=2))
    try:
        overrides = config.check_overrides(raw)
    except (TypeError, ValueError) as e:
        raise SystemExit(_err(f"--system-config: {e}", code=2))
    if args.object_store_memory is not None:
        if args.object_store_memory < 1:
            raise SystemExit(_err(f"--object-store-memory must be a positive number of bytes, "
                                  f"got {args.object_store_memory}", code=2))
        overrides["object_store_memory"] = args.object_store_memory
    return overrides


def _node_options(args) -> tuple[int, dict] | int:
    n = args.num_workers if args.num_workers is not None else (os.cpu_count() or 1)
    if n < 1:
        return _err(f"--num-workers must be at least 1, got {n}", code=2)
    resources = _parse_resources(args.resources)
    if args.num_gpus is not None:
        if args.num_gpus < 0:
            return _err(f"--num-gpus must be at least 0, got {args.num_gpus}", code=2)
        if args.num_gpus:
            resources["GPU"] = args.num_gpus
    return n, resources


def cmd_start(args) -> int:
    if args.address is not None and args.head:
        return _err("give either --head (start a new cluster) or --address (join one), "
                    "not both", code=2)
    if args.address is None and not args.head:
        return _err("nbray start needs --head (start a cluster) or --address HOST:PORT (add "
                    "a node to one)", code=2)
    options = _node_options(args)
    if isinstance(options, int):
        return options
    n, resources = options
    res = {"CPU": float(n), **{k: float(v) for k, v in resources.items()}}
    from nbray import config
    config.apply(_system_config(args))      # this command's children inherit them
    if args.address is not None:
        if args.dashboard_port is not None:
            return _err("--dashboard-port goes with --head: the dashboard is served by the "
                        "machine of the head", code=2)
        return _start_node(args, n, resources, res)
    if not 0 <= args.port <= 65535:
        return _err(f"--port must be in 0..65535, got {args.port}", code=2)
    if args.dashboard_port is not None and not 0 <= args.dashboard_port <= 65535:
        return _err(f"--dashboard-port must be in 0..65535, got {args.dashboard_port}", code=2)
    try:
        record, procs = cluster.start(num_workers=n, resources=resources, host=args.host,
                                      port=args.port, watch_pid=None, detach=True)
    except (ClusterError, OSError) as e:
        return _err(f"could not start the cluster: {e}")
    path = record.save()
    if args.dashboard_port is not None:
        try:
            cluster.start_dashboard(record, procs, args.host, args.dashboard_port)
        except (ClusterError, OSError) as e:
            cluster.stop(record, procs)
            return _err(f"could not start the dashboard: {e}")
    address = record.tcp_address or record.head_address
    # bound to every interface: other machines need a name of this one, not 0.0.0.0
    join_at = address if args.host not in ("0.0.0.0", "::", "*") else \
        f"{socket.getfqdn()}:{address.rpartition(':')[2]}"
    print(f"Started nbray cluster {record.session}")
    print(f"  address:   {address}")
    print(f"  session:   {record.session}")
    print(f"  resources: {_fmt_res(res)}  ({n} worker process{'es' if n != 1 else ''})")
    print(f"  processes: head pid {procs['head'].pid}, node pid {procs['node'].pid}")
    print(f"  key file:  {path}  (mode 0600; it holds the cluster key, keep it private)")
    print(f"  logs:      {record.rundir}/head.log, node.log (what tasks print goes there)")
    if record.dashboard:
        print(f"  dashboard: {record.dashboard}  (pid {procs['dashboard'].pid})")
    print()
    print("To use it from Python on this machine:")
    print("    import nbray")
    print(f'    nbray.init(address="{address}")')
    print()
    print("To add a node on another machine, copy the key file there (keeping it private) and run:")
    print(f"    nbray start --address {join_at} --key-file KEYFILE")
    if args.host in ("127.0.0.1", "localhost"):
        print(f"  (the head listens on {args.host} only: other machines reach it once it is "
              f"started with --host set to an address of this machine they can reach)")
    print(f"Inspect it with `nbray status`; stop it with `nbray stop --address {address}`.")
    return 0


def _start_node(args, n: int, resources: dict, res: dict) -> int:
    key = _join_key(args)
    try:
        record, procs = cluster.join(args.address, bytes.fromhex(key), num_workers=n,
                                     resources=resources, host=args.host)
    except (ClusterError, OSError) as e:
        return _err(f"could not join the cluster at {args.address}: {e}")
    path = record.path
    print(f"Joined nbray cluster {record.session} at {args.address} as node {record.name}")
    print(f"  resources: {_fmt_res(res)}  ({n} worker process{'es' if n != 1 else ''})")
    print(f"  processes: node pid {procs['node'].pid}")
    print(f"  record:    {path}  (mode 0600)")
    print(f"  log:       {record.rundir}/node.log (what tasks print goes there)")
    print()
    print("To use it from Python on this machine:")
    print(f'    nbray.init(address="{record.name}")')
    print(f"Stop this node with `nbray stop --address {record.name}`; it also stops when the "
          f"head does.")
    return 0


# ---- status --------------------------------------------------------------------------------------
def query_head(record: cluster.ClusterRecord, timeout: float = STATUS_TIMEOUT_S):
    """Ask a cluster's head for its ClusterInfo; None if it does not answer within ``timeout``."""
    from nbray.runtime import protocol as P
    return cluster.ask(record, record.head_address, P.ClusterInfoRequest(), timeout)


def _records_for(address: str | None) -> list[cluster.ClusterRecord]:
    # not the clusters that drivers embed: each is its driver's, stopped with it
    records = [r for r in cluster.ClusterRecord.load_all() if r.role != "embedded"]
    if address is None:
        return records
    out = [r for r in records if r.matches(address)]
    if not out:
        raise ClusterError(f"no cluster at {address!r} was started on this machine by "
                           f"`nbray start` (see `nbray status`)")
    return out


def _fmt_uptime(seconds: float) -> str:
    s = int(max(0, seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d {h}h {m}m"
    if h:
        return f"{h}h {m}m {s}s"
    if m:
        return f"{m}m {s}s"
    return f"{s}s"


def _num(v) -> str:
    v = float(v)
    return str(int(v)) if v.is_integer() else f"{v:g}"


def _fmt_res(total: dict, available: dict | None = None) -> str:
    names = sorted(total, key=lambda k: (k not in ("CPU", "GPU"), k))

    def amount(k, v):           # memory is logical bytes: in GB
        return f"{v / 2**30:.1f}" if k == "memory" else _num(v)

    def unit(k):
        return " GB" if k == "memory" else ""
    if available is None:
        return ", ".join(f"{k} {amount(k, total[k])}{unit(k)}" for k in names)
    return ", ".join(f"{k} {amount(k, available.get(k, 0))}/{amount(k, total[k])}{unit(k)}"
                     for k in names)


def _table(header: list[str], rows: list[list[str]], indent: str = "  ") -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = [indent + "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
             for row in [header, *rows]]
    return "\n".join(lines)


def _node_row(n: dict) -> list[str]:
    total = n.get("resources_total") or n.get("resources") or {}
    avail = n.get("resources_available")
    workers = "{}/{}/{}".format(n.get("workers_idle", "?"), n.get("workers_leased", "?"),
                                n.get("workers_blocked", "?"))
    if "workers_starting" in n and n["workers_starting"]:
        workers += f" (+{n['workers_starting']} starting)"
    state = "alive" if n.get("alive", True) else "DEAD"
    beat = n.get("seconds_since_heartbeat")
    if beat is not None and beat > 5:
        state = f"silent {beat:.0f}s"
    return [n.get("host", "?"), str(n.get("pid", "?")), state, workers,
            _fmt_res(total, avail if avail is not None else None) or "-",
            str(n.get("lease_queue", "?")), str(n.get("messages_rejected", "?"))]


def cmd_status(args) -> int:
    try:
        records = _records_for(args.address)
    except ClusterError as e:
        return _err(str(e))
    if not records:
        print("No nbray cluster is running on this machine (start one with `nbray start --head`).")
        return 0
    now = time.time()
    by_cluster: dict[str, list] = {}
    for r in records:       # a head and the nodes that joined it from here: one cluster
        by_cluster.setdefault(r.session, []).append(r)
    for i, group in enumerate(by_cluster.values()):
        if i:
            print()
        group.sort(key=lambda r: r.role != "head")
        r = group[0]
        address = r.tcp_address or r.head_address
        print(f"Cluster {r.session}  address {address}  up {_fmt_uptime(now - r.started_at)}")
        if r.dashboard:
            print(f"  dashboard: {r.dashboard}")
        for g in group:
            what = "head and a node" if g.role == "head" else f"node {g.name} (joined)"
            pids = g.live_pids()
            state = f"pids {', '.join(map(str, pids))}" if pids else \
                f"not running: stale record (`nbray stop --address {g.name}` removes it)"
            print(f"  on this machine: {what}, {state}")
        live = [g for g in group if g.live_pids()]
        if not live:
            continue
        try:
            info = query_head(live[0])
        except (ClusterError, OSError) as e:
            print(f"  head error: {e}")
            continue
        if info is None:
            print(f"  head not answering (no reply within {STATUS_TIMEOUT_S:g}s)")
            continue
        nodes = info.nodes
        print(f"  {len(nodes)} node{'s' if len(nodes) != 1 else ''}")
        if not nodes:
            print("  (no node has registered with the head)")
            continue
        header = ["HOST", "PID", "STATE", "WORKERS idle/leased/blocked",
                  "RESOURCES available/total", "LEASE QUEUE", "REJECTED MSGS"]
        print(_table(header, [_node_row(n) for n in nodes]))
    return 0


# ---- list ----------------------------------------------------------------------------------------
_LIST_COLUMNS = {
    "tasks": ["task_id", "name", "state", "node_id", "worker_pid", "attempts", "run_ms",
              "wait_ms", "error"],
    "actors": ["actor_id", "class_name", "name", "state", "node_id", "worker_pid", "restarts"],
    "nodes": ["node_id", "host", "pid", "state", "workers", "lease_queue"],
    "events": ["seq", "kind", "name", "class_name", "object_id", "cause"],
    "objects": ["object_id", "size"],
}


def cmd_list(args) -> int:
    """What a cluster holds, from its head: tasks (the task log), actors, nodes, events; and
    the shared-memory segments it has on this machine (objects)."""
    from nbray.runtime import remote_state
    try:
        records = [r for r in _records_for(args.address) if r.live_pids()]
    except ClusterError as e:
        return _err(str(e))
    if not records:
        return _err("no nbray cluster is running on this machine (`nbray start --head`)")
    sessions = {r.session for r in records}
    if len(sessions) > 1:
        return _err(f"{len(sessions)} clusters are running here: say which with --address")
    record = sorted(records, key=lambda r: r.role != "head")[0]
    what = args.what
    try:
        if what == "objects":       # the segments of the head's node and of joined nodes here
            rows = [row for r in records for row in remote_state.objects(r)]
            if args.limit is not None:
                rows = rows[-args.limit:] if args.limit > 0 else []
        else:
            rows = remote_state.query(record, what, args.limit)
    except ClusterError as e:
        return _err(str(e))
    if args.json:
        print(json.dumps(rows, default=str, indent=1))
        return 0
    columns = _LIST_COLUMNS[what]
    print(_table([c.upper() for c in columns],
                 [[_cell(r.get(c)) for c in columns] for r in rows], indent=""))
    print(f"{len(rows)} {what}")
    return 0


def _cell(v) -> str:
    if v is None or v == "":
        return "-"
    text = str(v)
    return text if len(text) <= 60 else text[:57] + "..."


# ---- stop ----------------------------------------------------------------------------------------
def cmd_stop(args) -> int:
    try:
        records = _records_for(args.address)
    except ClusterError as e:
        return _err(str(e))
    if not records:
        print("No nbray cluster started by `nbray start` is running on this machine.")
        return 0
    if args.address is None and not args.all and len(records) > 1:
        print(f"{len(records)} clusters or nodes are running on this machine; say which to stop "
              f"with --address, or stop them all with --all:", file=sys.stderr)
        for r in records:
            what = "cluster" if r.role == "head" else "joined node"
            print(f"  {r.name}  {what} at {r.tcp_address or r.head_address}", file=sys.stderr)
        return 1
    for r in sorted(records, key=lambda r: r.role == "head"):   # joined nodes first
        address = r.tcp_address or r.head_address
        pids = r.live_pids()
        cluster.stop(r)
        what = f"cluster {r.session}" if r.role == "head" else f"node {r.name} of cluster " \
            f"{r.session}"
        if pids:
            print(f"Stopped {what} at {address} (pids {', '.join(map(str, pids))})")
        else:
            print(f"Removed the stale record of {what} at {address} "
                  f"(its processes were already gone)")
    return 0


# ---- demo ----------------------------------------------------------------------------------------
def cmd_demo(args) -> int:
    from nbray import demo
    for name in ("iterations", "rollouts", "episodes"):
        if getattr(args, name) < 1:
            return _err(f"--{name} must be at least 1, got {getattr(args, name)}", code=2)
    return demo.main(iterations=args.iterations, rollouts=args.rollouts,
                     episodes=args.episodes, num_workers=args.num_workers, out=args.out) or 0


# ---- main ----------------------------------------------------------------------------------------
def _err(text: str, code: int = 1) -> int:
    print(f"nbray: error: {text}", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="nbray", description="Start, inspect and stop nbray "
                                 "clusters on this machine.")
    ap.add_argument("--version", action="version", version=f"nbray {nbray.__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    st = sub.add_parser("start", help="start a cluster, or a node joining one (detached)",
                        description="Start a head and a node on this machine (--head), or a "
                        "node that joins a running cluster (--address). They run detached and "
                        "keep running after this command exits; stop them with `nbray stop`.")
    st.add_argument("--head", action="store_true", help="start a new cluster (head + node)")
    st.add_argument("--address", metavar="HOST:PORT",
                    help="start a node on this machine that joins the cluster at HOST:PORT")
    st.add_argument("--key-file", metavar="FILE",
                    help="with --address: the cluster's key file (written by `nbray start "
                         "--head`); default: NBRAY_KEY, or the record of a head on this machine")
    st.add_argument("--host", default="127.0.0.1",
                    help="interface this machine's processes of the cluster listen on for "
                         "TCP, an address the other machines reach (default: 127.0.0.1)")
    st.add_argument("--port", type=int, default=0, help="TCP port of the head (default: random)")
    st.add_argument("--dashboard-port", type=int, default=None, metavar="P",
                    help="serve the dashboard (a bokeh server) on this port of --host "
                         "(0: any free port); `nbray status` prints its address")
    st.add_argument("--num-workers", "--num-cpus", type=int, default=None, dest="num_workers",
                    help="worker processes and CPUs of the node (default: the machine's cores)")
    st.add_argument("--num-gpus", type=float, default=None,
                    help="GPUs the node declares (a logical resource, as in Ray)")
    st.add_argument("--resources", metavar="JSON",
                    help='custom resources of the node, e.g. \'{"GPU": 1}\'')
    st.add_argument("--object-store-memory", type=int, default=None, metavar="BYTES",
                    help="shared memory the node's objects may take; a put beyond it fails "
                         "with ObjectStoreFullError (default: no limit but the machine's)")
    st.add_argument("--system-config", metavar="JSON", default=None,
                    help='knobs of nbray.config.Config by name, e.g. the bounds of the '
                         'queues: \'{"max_pending": 10000, "node_queue_max": 1000, '
                         '"max_tasks_in_flight": 64, "actor_inflight_max": 1000}\'; drivers '
                         'that join take the bounds')
    st.set_defaults(func=cmd_start)

    ss = sub.add_parser("status", help="show the clusters running on this machine")
    ss.add_argument("--address", help="only this cluster (host:port, session id or node name)")
    ss.set_defaults(func=cmd_status)

    sp = sub.add_parser("stop", help="stop clusters started by `nbray start`")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--address", help="the cluster (host:port or session id) or joined node "
                                     "(its name) to stop")
    g.add_argument("--all", action="store_true", help="stop every cluster on this machine")
    sp.set_defaults(func=cmd_stop)

    sl = sub.add_parser("list", help="list the tasks, actors, nodes, events or objects of a "
                                     "cluster running on this machine")
    sl.add_argument("what", choices=sorted(_LIST_COLUMNS))
    sl.add_argument("--address", help="the cluster (host:port, session id or node name)")
    sl.add_argument("--limit", type=int, default=None, help="only the newest N")
    sl.add_argument("--json", action="store_true", help="every field, as JSON")
    sl.set_defaults(func=cmd_list)

    sd = sub.add_parser("demo", help="train a policy on cart-pole with rollout tasks and a "
                                     "learner actor, on an embedded cluster; write a report")
    sd.add_argument("--iterations", type=int, default=40,
                    help="policy-gradient iterations (default: 40)")
    sd.add_argument("--rollouts", type=int, default=8,
                    help="rollout tasks per iteration (default: 8)")
    sd.add_argument("--episodes", type=int, default=16,
                    help="episodes per rollout task (default: 16)")
    sd.add_argument("--num-workers", type=int, default=None,
                    help="workers of the demo's cluster (default: the machine's cores)")
    sd.add_argument("--out", default="nbray-demo", metavar="DIR",
                    help="where the HTML report and the timeline go (default: ./nbray-demo)")
    sd.set_defaults(func=cmd_demo)
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not getattr(args, "func", None):
        ap.print_help()
        return 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:             # e.g. `nbray status | head`: not an error worth a trace
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
