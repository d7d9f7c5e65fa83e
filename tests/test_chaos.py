"""The chaos test: a DAG of over 10,000 tasks (maps feeding reduces feeding a final sum, and an
actor accumulating partial sums) finishes with the exact answer on a three-node cluster while a
random worker is SIGKILLed every 0.5 s, the actor's worker once, and one whole node once.

The workload is ``benchmarks/chaos.py``'s (its longer version, with the undisturbed run for
comparison, is the benchmark). The test prints what the faults cost: tasks retried, objects
rebuilt, actor calls replayed."""
from __future__ import annotations

import importlib.util
import json
import os
import sys

import cloudpickle
import pytest

import nbray
from test_multinode import MultiNode, multi  # noqa: F401

pytestmark = pytest.mark.timeout(120)

_spec = importlib.util.spec_from_file_location(
    "chaos_workload", os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks",
                                   "chaos.py"))
chaos_workload = importlib.util.module_from_spec(_spec)
sys.modules["chaos_workload"] = chaos_workload
_spec.loader.exec_module(chaos_workload)
cloudpickle.register_pickle_by_value(chaos_workload)     # workers cannot import it


def test_a_dag_of_ten_thousand_tasks_survives_killed_workers_and_a_killed_node(
        multi, monkeypatch, capsys):
    monkeypatch.setenv("NBRAY_NODE_TIMEOUT_S", "2")        # the head and nodes read it
    multi.start(num_workers=2)
    multi.add_node(num_workers=1)
    multi.add_node(num_workers=1)
    nbray.init(address=multi.address)
    maps = 10_000
    answer, report = chaos_workload.run_with_faults(maps, every=0.5, seed=1)
    with capsys.disabled():
        print("\nchaos test:", json.dumps(report))
    assert answer == chaos_workload.expected(maps)          # exact, every run
    assert report["tasks"] >= 10_000 and report["node_killed"]
    assert report["workers_killed"] >= 3
    assert report["objects_rebuilt"] >= 1 and report["actor_calls_replayed"] >= 1
    events = report["events"]               # each fault is in the event log, with its cause
    assert events["task_reconstructed"] == report["objects_rebuilt"]
    assert events["task_retried"] >= report["tasks_retried"]
    assert events["node_died"] == 1 and events["actor_restarted"] == report["actor_restarts"]
    assert events["actor_replayed"] >= 1
