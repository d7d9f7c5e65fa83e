"""Entry point of a node process: ``python -m nbray.runtime.node.main`` (started by ``nbray.init``
or ``nbray start``). Prints ``READY <address>`` on stdout once its sockets are bound."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys

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
    args = ap.parse_args(argv)
    key = bytes.fromhex(os.environ.pop("NBRAY_KEY"))
    resources = {"CPU": float(args.num_workers), **json.loads(args.resources)}
    server = NodeServer(key=key, session=args.session, bind=args.bind, head_address=args.head,
                        resources=resources, num_workers=args.num_workers,
                        worker_bind=lambda wid: args.worker_bind.format(id=wid.hex()),
                        watch_pid=args.watch_pid)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))    # unwind, so cleanup runs
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print(f"READY {server.address}", flush=True)
    server.serve()
    sys.exit(0)


if __name__ == "__main__":
    main()
