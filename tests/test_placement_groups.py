"""Placement groups (``nbray.util.placement_group``) and the scheduling strategies that use
them, on one node and on a cluster of three node processes."""
from __future__ import annotations

import logging
import os
import threading

import pytest

import nbray
from nbray.util.queue import Queue
from conftest import wait_until
from nbray.util.placement_group import (get_current_placement_group, get_placement_group,
                                        placement_group, placement_group_table,
                                        remove_placement_group)
from nbray.util.scheduling_strategies import PlacementGroupSchedulingStrategy as InGroup

pytestmark = pytest.mark.timeout(120)


@nbray.remote
def where():
    return nbray.get_runtime_context().get_node_id(), os.getpid()


@nbray.remote
def child_group():
    group = get_current_placement_group()
    return group.id.hex() if group else None


@nbray.remote
def parent_in_group():
    return child_group.remote()         # the ref: the caller reads it after


@nbray.remote(max_retries=3)
def holds_its_bundle(q):
    q.put("started")
    # until its worker is killed; not in nbray.get, which would lend its CPU to the next task
    threading.Event().wait(60)


@nbray.remote
def waits_for_its_group(pg):
    return pg.wait(30)          # inside a task that captures it


@nbray.remote
class InBundle:
    def ping(self):
        return "pong"


def test_a_group_reserves_its_resources_and_tasks_run_in_its_bundles(module_cluster):
    cpus = nbray.cluster_resources()["CPU"]
    pg = placement_group([{"CPU": 1}] * int(cpus), name="all-cpus")
    assert pg.wait(30)
    assert nbray.get(pg.ready()) == pg
    row = placement_group_table(pg)
    assert row["state"] == "CREATED" and row["strategy"] == "PACK" and row["name"] == "all-cpus"
    assert len(row["bundles_to_node_id"]) == int(cpus)
    assert get_placement_group("all-cpus") == pg
    node, _ = nbray.get(where.options(scheduling_strategy=InGroup(pg, 0)).remote())
    assert node == row["bundles_to_node_id"][0]
    assert len(nbray.get([where.options(scheduling_strategy=InGroup(pg)).remote()
                          for _ in range(6)])) == 6
    outside = where.remote()            # every CPU is the group's: it waits
    ready, _ = nbray.wait([outside], timeout=0.5)
    assert ready == []
    remove_placement_group(pg)
    assert nbray.get(outside, timeout=30)[0] == node       # it runs once they come back
    assert placement_group_table(pg)["state"] == "REMOVED"
    with pytest.raises(ValueError, match="no placement group named"):
        get_placement_group("all-cpus")


def test_removing_a_group_ends_the_actors_in_it(module_cluster):
    pg = placement_group([{"CPU": 1}])
    a = InBundle.options(scheduling_strategy=InGroup(pg, 0)).remote()
    assert nbray.get(a.ping.remote(), timeout=30) == "pong"
    q = Queue()
    running = holds_its_bundle.options(scheduling_strategy=InGroup(pg, 0)).remote(q)
    assert q.get(timeout=30) == "started"
    queued = where.options(num_cpus=1, scheduling_strategy=InGroup(pg, 0)).remote()
    remove_placement_group(pg)          # its nodes end what runs in it soon after

    def died():
        try:
            nbray.get(a.ping.remote(), timeout=30)
        except nbray.ActorDiedError:
            return True
    wait_until(died, 30, "the actor in the removed group to die")
    for ref in (running, queued, where.options(scheduling_strategy=InGroup(pg)).remote()):
        with pytest.raises(Exception, match="was removed"):     # never a hang
            nbray.get(ref, timeout=60)
    assert not pg.wait(0.1)


def test_child_tasks_are_captured_when_asked(module_cluster):
    pg = placement_group([{"CPU": 1}])
    assert pg.wait(30)
    captured = parent_in_group.options(scheduling_strategy=InGroup(
        pg, placement_group_capture_child_tasks=True)).remote()
    assert nbray.get(nbray.get(captured), timeout=30) == pg.id.hex()
    free = parent_in_group.options(scheduling_strategy=InGroup(pg)).remote()
    assert nbray.get(nbray.get(free), timeout=30) is None
    assert nbray.get(waits_for_its_group.options(scheduling_strategy=InGroup(
        pg, placement_group_capture_child_tasks=True)).remote(pg), timeout=60)
    remove_placement_group(pg)


@nbray.remote
def uses_group(pg):
    return nbray.get(where.options(scheduling_strategy=InGroup(pg, 0)).remote())[0]


def test_a_group_handle_travels_to_tasks(module_cluster):
    pg = placement_group([{"CPU": 1}])
    assert pg.wait(30)
    assert nbray.get(uses_group.remote(pg), timeout=30) == \
        placement_group_table(pg)["bundles_to_node_id"][0]
    remove_placement_group(pg)


def test_a_group_no_node_can_hold_waits_with_a_warning(module_cluster, caplog):
    with caplog.at_level(logging.WARNING, logger="nbray"):
        pg = placement_group([{"CPU": 1}, {"GPU": 4}])
    assert "bundle 1 (GPU=4) fits on no node" in caplog.text
    assert not pg.wait(0.3)
    assert placement_group_table(pg)["state"] == "PENDING"
    with pytest.raises(nbray.GetTimeoutError):
        nbray.get(where.options(scheduling_strategy=InGroup(pg)).remote(), timeout=0.3)
    remove_placement_group(pg)


def test_placement_group_bad_inputs(module_cluster):
    with pytest.raises(ValueError, match="strategy"):
        placement_group([{"CPU": 1}], strategy="BOGUS")
    for bad in ([], [{}], [{"CPU": -1}], [{"CPU": 0}], "CPU", [{"CPU": True}]):
        with pytest.raises(ValueError):
            placement_group(bad)
    with pytest.raises(ValueError, match="lifetime"):
        placement_group([{"CPU": 1}], lifetime="forever")
    pg = placement_group([{"CPU": 0.5}], name="taken")
    with pytest.raises(ValueError, match="already exists"):
        placement_group([{"CPU": 0.5}], name="taken")
    with pytest.raises(ValueError, match="bundle_index"):
        InGroup(pg, 1)
    with pytest.raises(TypeError, match="PlacementGroup"):
        InGroup("taken")
    with pytest.raises(ValueError, match="scheduling_strategy"):
        where.options(scheduling_strategy="EVERYWHERE")
    with pytest.raises(ValueError, match="scheduling_strategy"):
        InBundle.options(scheduling_strategy=3)
    remove_placement_group(pg)
    with pytest.raises(TypeError):
        remove_placement_group("taken")
