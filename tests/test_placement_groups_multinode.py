"""Placement groups and the "SPREAD" strategy on a cluster of three node processes: where
the strategies put bundles, and a group placed again after its node is SIGKILLed."""
from __future__ import annotations

import os

import pytest

import nbray
from nbray.cluster_utils import Cluster
from nbray.util.placement_group import placement_group, placement_group_table, \
    remove_placement_group
from nbray.util.scheduling_strategies import PlacementGroupSchedulingStrategy as InGroup
from conftest import wait_until

pytestmark = pytest.mark.timeout(120)


@nbray.remote
def where():
    return nbray.get_runtime_context().get_node_id(), os.getpid()


@pytest.fixture
def three_nodes(tmp_path, monkeypatch, no_cluster):
    from nbray.config import CONFIG
    monkeypatch.setattr(CONFIG, "run_root", str(tmp_path / "run"))
    c = Cluster(head_node_args={"num_cpus": 1, "_system_config": {"node_timeout_s": 1.5}})
    try:
        nodes = [c.head_node, c.add_node(num_cpus=1), c.add_node(num_cpus=1)]
        c.connect()
        yield c, nodes
    finally:
        c.shutdown()


def test_strategies_place_bundles_across_nodes(three_nodes):
    c, nodes = three_nodes
    ids = {n.node_id for n in nodes}
    spread = placement_group([{"CPU": 0.5}] * 3, strategy="STRICT_SPREAD")
    assert spread.wait(30)
    placed = placement_group_table(spread)["bundles_to_node_id"]
    assert set(placed.values()) == ids
    for i in range(3):                  # each task runs on its bundle's node
        assert nbray.get(where.options(num_cpus=0.5, scheduling_strategy=InGroup(
            spread, i)).remote(), timeout=60)[0] == placed[i]
    too_spread = placement_group([{"CPU": 0.1}] * 4, strategy="STRICT_SPREAD")
    too_packed = placement_group([{"CPU": 0.5}] * 2, strategy="STRICT_PACK")
    assert not too_spread.wait(1) and not too_packed.wait(0.1)    # 3 nodes; 0.5 free each
    remove_placement_group(spread)
    assert too_packed.wait(30)          # now a node has 1 CPU free
    assert len(set(placement_group_table(too_packed)["bundles_to_node_id"].values())) == 1
    for pg in (too_spread, too_packed):
        remove_placement_group(pg)
    packed = placement_group([{"CPU": 1}] * 2, strategy="PACK")     # 1 CPU a node: two
    assert packed.wait(30)
    assert len(set(placement_group_table(packed)["bundles_to_node_id"].values())) == 2
    remove_placement_group(packed)


@nbray.remote
def where_else():
    return nbray.get_runtime_context().get_node_id()


@nbray.remote(num_cpus=0.5)
class Member:
    def node(self):
        return nbray.get_runtime_context().get_node_id()


def test_spread_tasks_and_a_group_rescheduled_after_its_node_died(three_nodes):
    c, nodes = three_nodes
    refs = []
    for _ in range(6):          # two functions interleaved: each spreads on its own
        refs.append(where.options(scheduling_strategy="SPREAD").remote())
        refs.append(where_else.options(scheduling_strategy="SPREAD").remote())
    got = nbray.get(refs, timeout=60)
    assert len({g[0] for g in got[0::2]}) >= 2 and len(set(got[1::2])) >= 2
    workers = [n for n in nodes if n is not c.head_node]
    pg = placement_group([{"CPU": 0.5}] * 2, strategy="STRICT_SPREAD")
    blocker = placement_group([{"CPU": 1}], strategy="STRICT_PACK")   # the head's CPU, if
    assert pg.wait(30) and blocker.wait(30)                          # it is free
    remove_placement_group(blocker)     # its node is where the lost bundle can go
    placed = placement_group_table(pg)["bundles_to_node_id"]
    members = [Member.options(scheduling_strategy=InGroup(pg, i)).remote() for i in (0, 1)]
    assert nbray.get([m.node.remote() for m in members], timeout=60) == [placed[0], placed[1]]
    victim_index = next((i for i in (0, 1) if placed[i] in {w.node_id for w in workers}),
                        None)
    if victim_index is None:
        pytest.skip("both bundles landed on the head's node")
    victim = next(w for w in workers if w.node_id == placed[victim_index])
    survivor = members[1 - victim_index]
    c.remove_node(victim, allow_graceful=False)
    wait_until(lambda: placement_group_table(pg)["bundles_to_node_id"].get(victim_index)
               not in (None, victim.node_id) or None, 30,
               "the lost bundle to be placed again on a live node")
    assert pg.wait(30)
    assert placement_group_table(pg)["bundles_to_node_id"][1 - victim_index] == \
        placed[1 - victim_index]                        # the other bundle stayed
    assert nbray.get(survivor.node.remote(), timeout=30) == placed[1 - victim_index]
    again = nbray.get(where.options(num_cpus=0.5, scheduling_strategy=InGroup(
        pg, victim_index)).remote(), timeout=60)[0]
    assert again not in (victim.node_id, placed[1 - victim_index])


def test_hard_node_affinity_runs_there_or_waits(three_nodes):
    from nbray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On
    c, nodes = three_nodes
    for n in nodes:
        assert nbray.get(where.options(scheduling_strategy=On(n.node_id, soft=False))
                         .remote(), timeout=60)[0] == n.node_id
    gone = nodes[2]
    c.remove_node(gone, allow_graceful=False)
    wait_until(lambda: [x["state"] for x in nbray.state.nodes()
                        if x["node_id"] == gone.node_id] == ["dead"], 20, "the node's death")
    with pytest.raises(nbray.GetTimeoutError):      # hard: never elsewhere
        nbray.get(where.options(scheduling_strategy=On(gone.node_id, soft=False)).remote(),
                  timeout=1)
