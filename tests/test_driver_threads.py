"""The driver's threads: user threads share the sockets with the I/O thread through a baton."""
from __future__ import annotations

import threading
import time

import pytest

import nbray
from nbray import api
from conftest import wait_until


@nbray.remote
def add(a, b):
    return a + b


@nbray.remote
def sleep_then(x, seconds):
    time.sleep(seconds)
    return x


@pytest.mark.timeout(60)
def test_many_threads_submit_and_get_at_once(module_cluster):
    results, errors = {}, []

    def run(t):
        try:
            refs = [add.remote(t, i) for i in range(200)]
            results[t] = nbray.get(refs, timeout=30)
        except BaseException as e:      # surfaced below, with the thread that failed
            errors.append((t, e))

    threads = [threading.Thread(target=run, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(45)
    assert not errors
    assert results == {t: [t + i for i in range(200)] for t in range(8)}


@pytest.mark.timeout(60)
def test_a_chain_advances_while_nobody_calls_get(module_cluster):
    # the last get left the baton with the user thread; the I/O thread must take it back
    nbray.get(add.remote(0, 0))
    ref = add.remote(0, 1)
    for _ in range(30):
        ref = add.remote(ref, 1)
    client = api._driver.client
    wait_until(lambda: client.objects[ref.binary()].value is not None, 20,
               "the chain to finish in the background")
    assert nbray.get(ref) == 31


@pytest.mark.timeout(60)
def test_short_get_in_one_thread_while_another_waits_long(module_cluster):
    slow = sleep_then.remote("slow", 2.0)
    box = {}
    waiter = threading.Thread(target=lambda: box.setdefault("slow", nbray.get(slow)))
    waiter.start()
    wait_until(lambda: api._driver.client._waiters or api._driver.client._baton_busy, 10,
               "the waiting thread to be inside get")
    t0 = time.monotonic()
    assert nbray.get([add.remote(1, 2) for _ in range(20)], timeout=10) == [3] * 20
    assert time.monotonic() - t0 < 1.5     # not held until the slow task ends
    waiter.join(10)
    assert box == {"slow": "slow"}


@pytest.mark.timeout(60)
def test_get_timeout_in_one_thread_does_not_disturb_another(module_cluster):
    slow = sleep_then.remote(1, 1.0)
    failures = []

    def timed():
        try:
            nbray.get(slow, timeout=0.1)
        except nbray.GetTimeoutError:
            return
        failures.append("no timeout")

    th = threading.Thread(target=timed)
    th.start()
    assert nbray.get(slow, timeout=10) == 1
    th.join(10)
    assert not failures
