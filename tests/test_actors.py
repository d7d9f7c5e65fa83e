"""Actors: creation, ordered calls, handles passed around, concurrency, names, kill, failures,
restarts with retried calls, the end of an actor when no handle is left, the state API and
ActorPool. Every test runs on a real cluster whose teardown checks that nothing leaked."""
from __future__ import annotations

import asyncio
import os
import threading
import time

import numpy as np
import pytest

import nbray
from conftest import pid_alive, wait_until

pytestmark = pytest.mark.timeout(90)


@nbray.remote
class Counter:
    def __init__(self, start=0):
        self.n = start
        self.log = []

    def inc(self, by=1):
        self.n += by
        return self.n

    def record(self, caller, i):
        self.log.append((caller, i))
        return len(self.log)

    def get_log(self):
        return list(self.log)

    def value(self):
        return self.n

    def pid(self):
        return os.getpid()

    def slow(self, seconds, marker=None):
        if marker:
            with open(marker, "w") as f:
                f.write(str(os.getpid()))
        time.sleep(seconds)
        return self.n

    def fail(self, text):
        raise KeyError(text)

    @nbray.method(num_returns=2)
    def pair(self):
        return self.n, -self.n

    def __nbray_state__(self):
        return {"n": self.n, "calls": len(self.log)}


@nbray.remote
def call_n_times(handle, caller, n):
    return nbray.get([handle.record.remote(caller, i) for i in range(n)])[-1]


@nbray.remote
def total(a):
    return float(a.sum())


# ---- creation and calls --------------------------------------------------------------------------
def test_create_returns_a_handle_at_once_and_calls_return_refs(any_cluster):
    t0 = time.monotonic()
    c = Counter.remote(10)
    assert time.monotonic() - t0 < 0.5              # returns before the actor exists
    assert isinstance(c, nbray.ActorHandle)
    ref = c.inc.remote()
    assert isinstance(ref, nbray.ObjectRef)
    assert nbray.get(ref, timeout=30) == 11
    assert nbray.get(c.inc.remote(5)) == 16
    a, b = c.pair.remote()
    assert nbray.get([a, b]) == [16, -16]
    assert nbray.get(c.pair.options(num_returns=1).remote()) == (16, -16)


def test_actor_runs_in_a_worker_process_of_its_own(module_cluster):
    c1, c2 = Counter.remote(), Counter.remote()
    p1, p2 = nbray.get([c1.pid.remote(), c2.pid.remote()], timeout=30)
    assert p1 != p2 and os.getpid() not in (p1, p2)
    assert p1 in module_cluster.worker_pids() and p2 in module_cluster.worker_pids()
    # the node still runs tasks while both actors hold their workers
    assert nbray.get(total.remote(np.ones(10)), timeout=30) == 10.0


def test_calls_from_one_caller_run_in_submission_order(any_cluster):
    c = Counter.remote()
    refs = [c.record.remote("driver", i) for i in range(2000)]
    assert nbray.get(refs) == list(range(1, 2001))
    assert nbray.get(c.get_log.remote()) == [("driver", i) for i in range(2000)]


def test_order_per_caller_with_several_callers_at_once(any_cluster):
    c = Counter.remote()
    tasks = [call_n_times.remote(c, f"task{k}", 200) for k in range(3)]
    threads_done = []

    def driver_thread(k):
        refs = [c.record.remote(f"thread{k}", i) for i in range(200)]
        nbray.get(refs)
        threads_done.append(k)

    threads = [threading.Thread(target=driver_thread, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    nbray.get(tasks, timeout=60)
    for t in threads:
        t.join(60)
    assert sorted(threads_done) == [0, 1]
    log = nbray.get(c.get_log.remote())
    assert len(log) == 1000
    for caller in ["task0", "task1", "task2", "thread0", "thread1"]:
        assert [i for who, i in log if who == caller] == list(range(200)), caller


def test_arguments_may_be_refs_and_calls_wait_for_them_in_order(any_cluster):
    @nbray.remote
    def later(x, seconds):
        time.sleep(seconds)
        return x

    c = Counter.remote(nbray.put(100))                     # a ref as constructor argument
    slow_arg = later.remote(5, 0.5)
    first = c.record.remote("a", slow_arg)                 # waits for its input...
    second = c.record.remote("a", 6)                       # ...and the next call waits behind it
    assert nbray.get([first, second]) == [1, 2]
    assert nbray.get(c.get_log.remote()) == [("a", 5), ("a", 6)]
    assert nbray.get(c.value.remote()) == 100
    big = nbray.put(np.arange(1_000_000, dtype=np.float64))

    @nbray.remote
    class Holder:
        def __init__(self, a):
            self.a = a

        def sum(self, b):
            return float(self.a.sum() + b.sum()), self.a.flags.writeable

    h = Holder.remote(big)
    assert nbray.get(h.sum.remote(big)) == (2 * float(np.arange(1_000_000).sum()), False)


def test_handles_pass_to_tasks_and_to_other_actors(any_cluster):
    c = Counter.remote()

    @nbray.remote
    class Forwarder:
        def __init__(self, target):
            self.target = target

        def bump(self, k):
            return nbray.get([self.target.inc.remote() for _ in range(k)])[-1]

        def through_task(self, k):
            return nbray.get(call_n_times.remote(self.target, "fwd", k))

    f = Forwarder.remote(c)
    assert nbray.get(f.bump.remote(3), timeout=30) == 3
    assert nbray.get(f.through_task.remote(4), timeout=30) == 4
    assert nbray.get(c.inc.remote()) == 4
    assert nbray.get(call_n_times.remote(c, "t", 2)) == 6
    assert repr(c).startswith("Actor(Counter, ")


# ---- concurrency ---------------------------------------------------------------------------------
@nbray.remote
class AsyncActor:
    def __init__(self):
        self.running = 0
        self.peak = 0

    async def work(self, seconds):
        self.running += 1
        self.peak = max(self.peak, self.running)
        await asyncio.sleep(seconds)
        self.running -= 1
        return self.peak

    async def peak_seen(self):
        return self.peak

    def sync_method(self):
        return "sync in an async actor"


def test_async_methods_run_concurrently(any_cluster):
    a = AsyncActor.remote()
    nbray.get(a.peak_seen.remote(), timeout=30)
    t0 = time.monotonic()
    refs = [a.work.remote(0.5) for _ in range(20)]
    nbray.get(refs, timeout=30)
    elapsed = time.monotonic() - t0
    assert nbray.get(a.peak_seen.remote()) == 20
    assert elapsed < 5          # 20 x 0.5 s one after another would take 10 s
    assert nbray.get(a.sync_method.remote()) == "sync in an async actor"


def test_async_concurrency_is_bounded_by_max_concurrency(any_cluster):
    a = AsyncActor.options(max_concurrency=3).remote()
    nbray.get([a.work.remote(0.2) for _ in range(9)], timeout=30)
    assert nbray.get(a.peak_seen.remote()) == 3


@nbray.remote
class Threaded:
    def __init__(self):
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0

    def work(self, seconds):
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(seconds)
        with self.lock:
            self.running -= 1
        return threading.get_ident()

    def peak_seen(self):
        return self.peak

    def nested(self, n):
        return sum(nbray.get([total.remote(np.ones(k + 1)) for k in range(n)]))


def test_threaded_actor_runs_up_to_max_concurrency_calls_at_once(any_cluster):
    t = Threaded.options(max_concurrency=4).remote()
    idents = nbray.get([t.work.remote(0.3) for _ in range(12)], timeout=30)
    assert nbray.get(t.peak_seen.remote()) == 4
    assert len(set(idents)) == 4
    # calls of a threaded actor may wait in get on tasks, several at a time
    assert nbray.get([t.nested.remote(5) for _ in range(4)], timeout=30) == [15.0] * 4


def test_one_at_a_time_by_default(any_cluster):
    t = Threaded.remote()
    nbray.get([t.work.remote(0.05) for _ in range(6)], timeout=30)
    assert nbray.get(t.peak_seen.remote()) == 1


# ---- errors --------------------------------------------------------------------------------------
def test_method_exception_is_raised_with_its_type_and_the_actor_lives_on(any_cluster):
    c = Counter.remote()
    with pytest.raises(KeyError) as info:
        nbray.get(c.fail.remote("nope"))
    assert isinstance(info.value, nbray.RemoteError)
    assert "Counter.fail" in str(info.value)
    assert 'raise KeyError(text)' in info.value.traceback_text
    assert nbray.get(c.inc.remote()) == 1


@nbray.remote
class BadInit:
    def __init__(self, x):
        raise ValueError(f"cannot start with {x}")

    def method(self):
        return "never"


def test_init_failure_makes_every_call_fail_with_that_error(any_cluster):
    # nbray raises the __init__'s own error; Ray an ActorDiedError that quotes it
    error = ValueError if any_cluster.ctx.backend == "nbray" else nbray.ActorDiedError
    b = BadInit.remote(7)
    refs = [b.method.remote() for _ in range(3)]
    for ref in refs:
        with pytest.raises(error, match="cannot start with 7") as info:
            nbray.get(ref, timeout=30)
        assert 'raise ValueError(f"cannot start with {x}")' in (
            info.value.traceback_text if error is ValueError else str(info.value))
    with pytest.raises(error, match="cannot start with 7"):
        nbray.get(b.method.remote(), timeout=30)       # and later calls too


def test_unknown_method_and_direct_calls_are_clear_errors(any_cluster):
    nbray_leg = any_cluster.ctx.backend == "nbray"      # on Ray, the handle's errors are Ray's
    c = Counter.remote()
    with pytest.raises(AttributeError, match="actor Counter has no method 'nope'" if nbray_leg
                       else "nope"):
        c.nope.remote()
    with pytest.raises(TypeError, match="use Counter.remote"):
        Counter(1)
    with pytest.raises(TypeError, match=r"use \.inc\.remote" if nbray_leg else r"\.inc\.remote"):
        c.inc(1)
    with pytest.raises(TypeError, match="nbray.kill\\(\\) takes an actor handle"):
        nbray.kill(c.inc.remote())


@pytest.mark.parametrize("options, error", [
    ({"max_restarts": -2}, ValueError),
    ({"max_task_retries": "3"}, ValueError),
    ({"max_concurrency": 0}, ValueError),
    ({"num_cpus": -1}, ValueError),
    ({"resources": {"CPU": 1}}, ValueError),
    ({"name": ""}, TypeError),
    ({"bogus": 1}, ValueError),
    ({"lifetime": "forever"}, ValueError),
    ({"get_if_exists": True}, ValueError),
])
def test_invalid_actor_options(options, error):
    with pytest.raises(error):
        Counter.options(**options)


def test_unpicklable_constructor_argument_names_it(module_cluster):
    with pytest.raises(nbray.SerializationError, match="position 0 of Counter.__init__"):
        Counter.remote(threading.Lock())


def test_infeasible_actor_fails_its_calls(module_cluster):
    a = Counter.options(resources={"unobtainium": 1}).remote()
    with pytest.raises(nbray.ActorDiedError, match="unobtainium"):
        nbray.get(a.inc.remote(), timeout=30)


# ---- names ---------------------------------------------------------------------------------------
def test_named_actor_is_found_from_tasks_and_names_are_unique(any_cluster):
    c = Counter.options(name="learner").remote(1)
    with pytest.raises(ValueError, match="an actor named 'learner' already exists"):
        Counter.options(name="learner").remote()
    same = nbray.get_actor("learner")
    assert same == c
    assert nbray.get(same.inc.remote()) == 2

    @nbray.remote
    def use_by_name(k):
        h = nbray.get_actor("learner")
        return nbray.get([h.inc.remote() for _ in range(k)])[-1]

    assert nbray.get(use_by_name.remote(3), timeout=30) == 5
    again = Counter.options(name="learner", get_if_exists=True).remote()
    assert again == c
    with pytest.raises(ValueError, match="no actor named 'nobody'"):
        nbray.get_actor("nobody")
    other_ns = Counter.options(name="learner", namespace="other").remote(50)
    assert nbray.get(nbray.get_actor("learner", namespace="other").inc.remote()) == 51
    nbray.kill(c)
    nbray.kill(other_ns)
    wait_until(lambda: _no_actor("learner"), 10, "the name to be freed")
    fresh = Counter.options(name="learner").remote(100)     # the name is free again
    assert nbray.get(nbray.get_actor("learner").inc.remote()) == 101
    nbray.kill(fresh)


def _no_actor(name):
    try:
        nbray.get_actor(name)
    except ValueError:
        return True
    return False


# ---- kill, death, restarts -----------------------------------------------------------------------
def test_kill_ends_the_actor_and_later_calls_fail(any_cluster, tmp_path):
    c = Counter.remote()
    pid = nbray.get(c.pid.remote(), timeout=30)
    marker = str(tmp_path / "slow")
    running = c.slow.remote(30, marker)
    queued = c.inc.remote()
    wait_until(lambda: os.path.exists(marker), 20, "the slow call to start")
    nbray.kill(c)
    for ref in (running, queued, c.inc.remote()):
        with pytest.raises(nbray.ActorDiedError, match="killed with nbray.kill" if
                           any_cluster.ctx.backend == "nbray" else "kill"):
            nbray.get(ref, timeout=10)
    wait_until(lambda: not pid_alive(pid), 10, "the actor's worker to exit")
    nbray.kill(c)       # twice is harmless


# ---- cancel --------------------------------------------------------------------------------------
def test_cancel_a_queued_call(module_cluster, tmp_path):
    c = Counter.remote()
    marker = str(tmp_path / "slow")
    slow = c.slow.remote(1.0, marker)
    queued = c.inc.remote()
    wait_until(lambda: os.path.exists(marker), 20, "the slow call to start")
    nbray.cancel(queued)
    with pytest.raises(nbray.TaskCancelledError):
        nbray.get(queued, timeout=20)
    assert nbray.get(slow, timeout=20) == 0
    assert nbray.get(c.inc.remote()) == 1       # the cancelled call never ran


# ---- introspection -------------------------------------------------------------------------------
def test_state_actors_lists_class_worker_state_and_user_state(module_cluster, tmp_path):
    c = Counter.options(name="observed").remote(3)
    nbray.get([c.record.remote("x", i) for i in range(4)], timeout=30)
    pid = nbray.get(c.pid.remote())
    rows = nbray.state.actors({"name": "observed"})
    assert len(rows) == 1
    row = rows[0]
    assert row["class_name"] == "Counter" and row["state"] == "alive"
    assert row["worker_pid"] == pid and row["restarts"] == 0
    assert row["node_id"] == module_cluster.client.node_id.hex()
    assert row["user_state"] == {"n": 3, "calls": 4}
    assert row["queued"] == 0 and row["running"] == 0 and row["calls_done"] == 5
    assert row["busy"] is False
    # while it runs a long call it cannot answer: it is reported busy, without waiting long
    marker = str(tmp_path / "slow")
    slow = c.slow.remote(2.0, marker)
    c.inc.remote()
    wait_until(lambda: os.path.exists(marker), 20, "the slow call to start")
    t0 = time.monotonic()
    row = nbray.state.actors({"name": "observed"})[0]
    assert row["busy"] is True and time.monotonic() - t0 < 2.0
    nbray.get(slow)
    nbray.kill(c)
    row = wait_until(lambda: [r for r in nbray.state.actors({"name": "observed"},
                                                            detail=False)] or
                     [r for r in nbray.state.actors() if r["state"] == "dead" and
                      r["worker_pid"] == pid], 10, "the killed actor's row")[0]
    assert row["state"] == "dead"


# ---- ActorPool -----------------------------------------------------------------------------------
@nbray.remote
class Doubler:
    def double(self, x):
        time.sleep(0.01 * (x % 3))
        return 2 * x


def test_actor_pool_map_keeps_order_and_map_unordered_gets_all(any_cluster):
    pool = nbray.util.ActorPool([Doubler.remote() for _ in range(3)])
    assert list(pool.map(lambda a, v: a.double.remote(v), range(20))) == \
        [2 * v for v in range(20)]
    assert sorted(pool.map_unordered(lambda a, v: a.double.remote(v), range(20))) == \
        [2 * v for v in range(20)]
    pool.submit(lambda a, v: a.double.remote(v), 5)
    pool.submit(lambda a, v: a.double.remote(v), 6)
    assert pool.has_next()
    assert pool.get_next() == 10 and pool.get_next() == 12
    assert not pool.has_next()
    idle = pool.pop_idle()
    assert idle is not None
    with pytest.raises(ValueError, match="already in the pool"):
        pool.push(pool._idle[0])
    pool.push(idle)
    with pytest.raises(ValueError):
        nbray.util.ActorPool([])
