"""The head (Ray's GCS): the cluster's tables and its global view."""
