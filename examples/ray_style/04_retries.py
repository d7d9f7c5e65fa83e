"""Retrying failed tasks. If the worker running a task dies, the task is run again, up to
``max_retries`` times; here the task kills its own process on the first attempt (it notes
the attempt in a file of a temporary directory), so the second attempt succeeds. An exception
raised by the task's own code is not retried unless ``retry_exceptions`` says so: ``True``
retries any exception, a list retries only those types, and other errors surface at once."""
import os
import tempfile

import nbray as ray

ray.init(num_cpus=2)
scratch = tempfile.mkdtemp()


def attempts(tag):
    """Count one more attempt of ``tag`` in the scratch directory; return the count."""
    path = os.path.join(scratch, tag)
    with open(path, "a") as f:
        f.write("x")
    return os.path.getsize(path)


@ray.remote(max_retries=2)
def dies_once():
    if attempts("crash") == 1:
        os._exit(1)                     # the worker process is gone, as if it crashed
    return "survived"


@ray.remote(max_retries=3, retry_exceptions=True)
def flaky():
    if attempts("flaky") < 3:
        raise ConnectionError("not yet")
    return "third time lucky"


@ray.remote(max_retries=3, retry_exceptions=[TimeoutError])
def picky(tag, error):
    if attempts(tag) == 1:
        raise error("first try fails")
    return "ok"


assert ray.get(dies_once.remote()) == "survived"
assert ray.get(flaky.remote()) == "third time lucky"
assert os.path.getsize(os.path.join(scratch, "flaky")) == 3    # it ran three times
assert ray.get(picky.remote("t", TimeoutError)) == "ok"     # listed: retried
try:
    ray.get(picky.remote("k", KeyError))                    # not listed: fails at once
except KeyError:
    print("KeyError was not retried, as asked")
else:
    raise AssertionError("the KeyError should have surfaced")
print("retries worked")
