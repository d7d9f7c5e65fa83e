"""Entry point of the head process: ``python -m nbray.runtime.head.main``. Announces
``READY <address>`` on ``--ready-fd`` once bound."""
from __future__ import annotations

import argparse
import os
import signal
import sys

from nbray.runtime import cluster
from nbray.runtime.head.server import HeadServer


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--session", required=True)
    ap.add_argument("--bind", action="append", required=True)
    ap.add_argument("--watch-pid", type=int)
    ap.add_argument("--ready-fd", type=int)
    args = ap.parse_args(argv)
    key = bytes.fromhex(os.environ.pop("NBRAY_KEY"))
    server = HeadServer(key=key, session=args.session, bind=args.bind, watch_pid=args.watch_pid)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))    # unwind, so cleanup runs
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if args.ready_fd is not None:
        cluster.announce_ready(args.ready_fd, server.address)
    server.serve()
    sys.exit(0)


if __name__ == "__main__":
    main()
