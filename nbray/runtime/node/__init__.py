"""The node (one per machine, Ray's raylet): grants worker leases, runs the worker pool."""
