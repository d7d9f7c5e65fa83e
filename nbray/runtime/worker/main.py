"""Entry point of a worker process: ``python -m nbray.runtime.worker.main`` (spawned by a node).

The key arrives in the environment (``NBRAY_KEY``), never on the command line where ``ps`` shows it.
"""
from __future__ import annotations

import argparse
import os
import sys

from nbray.runtime import core_client
from nbray.runtime.worker.executor import Executor


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--node", required=True)
    ap.add_argument("--session", required=True)
    ap.add_argument("--worker-id", required=True)
    ap.add_argument("--bind", required=True)
    args = ap.parse_args(argv)
    key = bytes.fromhex(os.environ.pop("NBRAY_KEY"))
    node_pid = os.getppid()
    worker_id = bytes.fromhex(args.worker_id)
    client = core_client.CoreClient(key=key, session=args.session, node_address=args.node,
                                    bind=args.bind, threaded=False, worker_id=worker_id,
                                    client_id=worker_id)
    core_client.set_current(client)
    executor = Executor(client)
    executor.output.install()       # what tasks print goes to their drivers
    core_client.install_poke_handler(client)
    client.on_shutdown = lambda: setattr(executor, "stopping", True)
    try:
        client.connect(alive=lambda: os.getppid() == node_pid)
    except TimeoutError:            # our node is gone (it was stopping as it started us)
        client.close()
        sys.exit(1)

    def idle_check():
        if os.getppid() != node_pid:        # our node is gone: nobody will ever lease us again
            executor.stopping = True

    try:
        executor.run_forever(idle_check)
    finally:
        client.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
