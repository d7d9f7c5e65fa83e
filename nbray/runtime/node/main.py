"""Entry point of a node process: ``python -m nbray.runtime.node.main`` (started by ``nbray.init``
or ``nbray start``). Announces ``READY <address>`` on ``--ready-fd`` once its sockets are bound."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys

import psutil

from nbray.config import CONFIG
from nbray.errors import ClusterError
from nbray.runtime import cluster
from nbray.runtime.node import transfer
from nbray.runtime.node.server import NodeServer


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--session", required=True)
    ap.add_argument("--head", required=True)
    ap.add_argument("--bind", action="append", required=True)
    ap.add_argument("--worker-bind", required=True,
                    help="address pattern for workers, with {id} for the worker id")
    ap.add_argument("--num-workers", type=int, required=True)
    ap.add_argument("--resources", default="{}")
    ap.add_argument("--watch-pid", type=int)
    ap.add_argument("--ready-fd", type=int)
    ap.add_argument("--rundir", help="removed at exit if the watched driver died without "
                                     "cleaning up")
    ap.add_argument("--cleanup", action="append", default=[],
                    help="a file or directory to remove at exit (a joined node's own record)")
    args = ap.parse_args(argv)
    key = bytes.fromhex(os.environ.pop("NBRAY_KEY"))
    transfer.keep_chunk_buffers()
    # memory: logical, in bytes, for tasks that say memory= (as in Ray: 70% of the machine's)
    resources = {"CPU": float(args.num_workers),
                 "memory": float(int(psutil.virtual_memory().total * 0.7)),
                 **json.loads(args.resources)}
    server = NodeServer(key=key, session=args.session, bind=args.bind, head_address=args.head,
                        resources=resources, num_workers=args.num_workers,
                        worker_bind=lambda wid: args.worker_bind.format(id=wid.hex()),
                        watch_pid=args.watch_pid)
    # a flag, not an exception: raised inside Popen it would leave a worker nobody stops
    signal.signal(signal.SIGTERM, lambda *_: setattr(server, "stopping", True))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        server.register(CONFIG.register_timeout_s)
    except ClusterError as e:
        print(f"nbray node: {e}", file=sys.stderr, flush=True)
        server.ep.close()
        sys.exit(1)
    if args.ready_fd is not None:
        cluster.announce_ready(args.ready_fd, server.address, server.cluster_session)
    clean = False
    try:
        server.serve()
        clean = True
    finally:
        if args.rundir and args.watch_pid and not psutil.pid_exists(args.watch_pid):
            shutil.rmtree(args.rundir, ignore_errors=True)
        # after an error the directory stays, with the log that says what happened (and
        # `nbray status` shows a stale record until `nbray stop` removes it)
        for path in args.cleanup if clean else ():
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.exists(path):
                os.unlink(path)
    sys.exit(0)


if __name__ == "__main__":
    main()
