"""Declaring resources and looking at the cluster. ``ray.init`` can give the local node a
number of CPUs and custom resources; a task that asks for ``resources={"sim": 2}`` runs only
where two units of "sim" are free, so at most two such tasks run at a time here.
``cluster_resources``, ``available_resources`` and ``nodes`` describe the cluster, and
``get_runtime_context`` tells code where it is running."""
import time

import nbray as ray

ray.init(num_cpus=2, resources={"sim": 4})

total = ray.cluster_resources()
print("cluster:", total)
assert total["CPU"] == 2 and total["sim"] == 4
assert set(ray.available_resources()) >= {"CPU", "sim"}

nodes = ray.nodes()
assert len(nodes) == 1 and nodes[0]["Alive"]
node_id = nodes[0]["NodeID"]


@ray.remote(num_cpus=0, resources={"sim": 2})
def simulate(step):
    time.sleep(0.2)
    ctx = ray.get_runtime_context()
    return step, ctx.get_node_id(), ctx.get_task_id(), ctx.get_job_id()


start = time.perf_counter()
results = ray.get([simulate.remote(i) for i in range(4)])
elapsed = time.perf_counter() - start
print(f"4 tasks needing 2 of 4 'sim' each took {elapsed:.2f} s")

driver = ray.get_runtime_context()
assert driver.get_task_id() is None                 # the driver is not a task
assert [r[0] for r in results] == [0, 1, 2, 3]
assert {r[1] for r in results} == {node_id} == {driver.get_node_id()}
assert len({r[2] for r in results}) == 4            # each task has its own id
assert {r[3] for r in results} == {driver.get_job_id()}   # all belong to this job
