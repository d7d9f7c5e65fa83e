"""Worker processes: run tasks pushed by the clients that lease them (``executor.py``)."""
