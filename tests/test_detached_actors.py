"""A detached actor outlives the driver that made it: a new driver (another process) finds it
by name on the same cluster, with its state, and ``kill`` ends it."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import nbray
from nbray.cluster_utils import Cluster

pytestmark = pytest.mark.timeout(120)

DRIVER = """
import sys
import nbray as ray

ray.init(address=sys.argv[1])

@ray.remote
class Counter:
    def __init__(self):
        self.n = 0
    def add(self, k):
        self.n += k
        return self.n

step = sys.argv[2]
if step == "create":
    c = Counter.options(name="counter", namespace="jobs", lifetime="detached").remote()
    print(ray.get(c.add.remote(5)))
    try:
        Counter.options(name="counter", namespace="jobs", lifetime="detached").remote()
    except ValueError as e:
        print("taken")
    same = Counter.options(name="counter", namespace="jobs", lifetime="detached",
                           get_if_exists=True).remote()
    print(ray.get(same.add.remote(1)))
elif step == "use":
    c = ray.get_actor("counter", namespace="jobs")
    print(ray.get(c.add.remote(10)))
elif step == "kill":
    c = ray.get_actor("counter", namespace="jobs")
    ray.kill(c)
    try:
        ray.get(c.add.remote(1), timeout=30)
    except ray.ActorDiedError:
        print("dead")
elif step == "gone":
    try:
        ray.get_actor("counter", namespace="jobs")
    except ValueError:
        print("none")
"""


@pytest.fixture
def cluster(tmp_path, monkeypatch, no_cluster):
    from nbray.config import CONFIG
    root = str(tmp_path / "run")
    monkeypatch.setattr(CONFIG, "run_root", root)
    c = Cluster(head_node_args={"num_cpus": 2})
    try:
        yield c, root
    finally:
        c.shutdown()


def drive(tmp_path, root, address, step) -> list[str]:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    out = subprocess.run([sys.executable, str(script), address, step], capture_output=True,
                         text=True, timeout=60, env=dict(os.environ, NBRAY_RUN_ROOT=root))
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_a_detached_actor_outlives_its_driver_until_killed(cluster, tmp_path):
    c, root = cluster
    assert drive(tmp_path, root, c.address, "create") == ["5", "taken", "6"]
    assert drive(tmp_path, root, c.address, "use") == ["16"]      # its driver is gone
    assert drive(tmp_path, root, c.address, "use") == ["26"]
    assert drive(tmp_path, root, c.address, "kill") == ["dead"]
    assert drive(tmp_path, root, c.address, "gone") == ["none"]


def test_lifetime_is_checked(no_cluster):
    @nbray.remote
    class A:
        pass
    with pytest.raises(ValueError, match="lifetime"):
        A.options(lifetime="forever")
    assert A.__name__ == "A"
