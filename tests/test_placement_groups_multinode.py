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


def test_spread_tasks_and_a_group_rescheduled_after_its_node_died(three_nodes):
    c, nodes = three_nodes
    seen = {nbray.get(r, timeout=60)[0]
            for r in [where.options(scheduling_strategy="SPREAD").remote() for _ in range(6)]}
    assert len(seen) >= 2
    pg = placement_group([{"CPU": 1}])
    assert pg.wait(30)
    first = placement_group_table(pg)["bundles_to_node_id"][0]
    victim = next(n for n in nodes if n.node_id == first)
    if victim is c.head_node:       # the head's node cannot be removed alone: move it
        remove_placement_group(pg)
        pg = placement_group([{"CPU": 1}], strategy="STRICT_SPREAD")
        blocker = placement_group([{"CPU": 1}])     # holds the head's CPU if it picks it
        assert pg.wait(30) and blocker.wait(30)
        first = placement_group_table(pg)["bundles_to_node_id"][0]
        victim = next(n for n in nodes if n.node_id == first)
        assert victim is not c.head_node or pytest.skip("both groups on the head's node")
    c.remove_node(victim, allow_graceful=False)
    wait_until(lambda: placement_group_table(pg)["state"] in ("RESCHEDULING", "PENDING",
                                                              "CREATED") and
               placement_group_table(pg)["bundles_to_node_id"].get(0) not in (None, first),
               30, "the group to be placed again on a live node")
    assert pg.wait(30)
    assert nbray.get(where.options(scheduling_strategy=InGroup(pg, 0)).remote(),
                     timeout=60)[0] != first


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
