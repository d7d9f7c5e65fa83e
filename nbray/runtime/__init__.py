"""The runtime: the processes of a cluster and the path of one task through them.

::

      driver (notebook kernel)                          head (control store)
      ┌──────────────────────┐   RegisterNode/Heartbeat  ┌───────────────────┐
      │ CoreClient           │          ┌──────────────► │ tables: nodes ... │
      │  owns its objects    │          │                └───────────────────┘
      │  I/O thread          │  lease   │
      └───┬──────────────▲───┴────────► node (one per machine)
          │ PushTasks    │ TaskResults  │  local scheduler: leases, resources
          │ (batched)    │ (batched)    │  worker pool: spawn, watch, restart
          ▼              │              │  /dev/shm object store (one file per object)
      ┌──────────────────┴───┐ ◄────────┘
      │ worker: Executor +   │   a worker is also a client: its tasks submit, get, put
      │ its own CoreClient   │
      └──────────────────────┘

One task, ``f.remote(x)`` in the driver:
 1. the driver's CoreClient pickles the arguments (top-level refs become slots), records the
    task and its return object, and waits here until the refs it takes exist;
 2. it holds a lease on a worker from its node (asked for once, kept while tasks flow) and
    pushes the task, with others, straight to that worker;
 3. the worker runs it and sends the result back in a batch: small values inline, large ones
    written once to shared memory and sent as a location;
 4. the driver stores the value, wakes ``get`` and any task waiting for it, and frees it when
    the last ref to it anywhere is gone.

Modules: ``protocol`` (every message), ``transport`` (signed frames), ``links`` (the Unix
sockets drivers and workers on one machine send them on), ``wire``, ``serialization``,
``object_store`` (shared memory), ``core_client`` (owner and submitter), ``cluster`` (spawn and
stop), ``head/``, ``node/``, ``worker/``.
"""
