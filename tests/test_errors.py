"""Errors: remote exceptions, their propagation, serialization failures, timeouts, bad calls."""
from __future__ import annotations

import threading
import time

import pytest

import nbray

pytestmark = pytest.mark.timeout(60)


class CustomError(Exception):
    """An exception class defined in the test module (the workers cannot import it)."""


class CustomErrorWithState(Exception):
    def __init__(self, message, code):
        super().__init__(message, code)
        self.code = code


@nbray.remote
def fail_with_value_error(x):
    raise ValueError(f"bad value {x}")


@nbray.remote
def fail_with_custom(message):
    err = CustomError(message)
    err.detail = {"answer": 42}
    raise err


@nbray.remote
def fail_with_stateful(code):
    raise CustomErrorWithState("stateful failure", code)


@nbray.remote
def fail_with_key_error():
    return {}["missing"]


@nbray.remote
def fail_with_os_error():
    open("/nonexistent-dir-nbray/file")


@nbray.remote
def identity(x):
    return x


@nbray.remote
def slow(seconds):
    time.sleep(seconds)
    return seconds


@nbray.remote
def returns_unpicklable():
    return threading.Lock()


@nbray.remote
def raises_unpicklable():
    err = ValueError("carries a lock")
    err.lock = threading.Lock()
    raise err


# ---- remote exceptions ---------------------------------------------------------------------------
def test_remote_value_error_is_remote_error_and_value_error(any_cluster):
    ref = fail_with_value_error.remote(7)
    with pytest.raises(ValueError) as info:
        nbray.get(ref)
    err = info.value
    assert isinstance(err, nbray.RemoteError)
    assert isinstance(err, nbray.NbrayError)
    assert isinstance(err, ValueError)
    assert err.args == ("bad value 7",)
    assert isinstance(err.cause, ValueError) and not isinstance(err.cause, nbray.RemoteError)
    assert err.task_name == "fail_with_value_error"
    text = str(err)
    assert "fail_with_value_error" in text
    assert "bad value 7" in text
    assert "Traceback (most recent call last)" in text
    assert 'raise ValueError(f"bad value {x}")' in text          # the remote source line
    assert "test_errors.py" in text
    assert err.traceback_text in text


def test_remote_traceback_shows_source_of_a_cell_that_is_no_file(module_cluster):
    """A notebook cell's code has a file name that exists only in the kernel's linecache: the
    function carries those lines, so the worker's traceback shows them."""
    import linecache
    name = "/tmp/nbray-no-such-dir/cell-17.py"
    source = "def helper(v):\n    raise KeyError(f'no key {v}')\n\n" \
             "def from_cell(v):\n    return helper(v) + 1\n"
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    namespace = {}
    exec(compile(source, name, "exec"), namespace)
    with pytest.raises(KeyError) as info:
        nbray.get(nbray.remote(namespace["from_cell"]).remote(5))
    text = info.value.traceback_text
    assert f'File "{name}", line 5, in from_cell' in text
    assert "return helper(v) + 1" in text
    assert f'File "{name}", line 2, in helper' in text
    assert "raise KeyError(f'no key {v}')" in text


def test_remote_error_caught_as_remote_error(any_cluster):
    with pytest.raises(nbray.RemoteError, match="bad value 1"):
        nbray.get(fail_with_value_error.remote(1))


def test_builtin_error_types_are_preserved(any_cluster):
    with pytest.raises(KeyError) as info:
        nbray.get(fail_with_key_error.remote())
    assert isinstance(info.value, nbray.RemoteError)
    assert info.value.args == ("missing",)
    with pytest.raises(FileNotFoundError) as info:
        nbray.get(fail_with_os_error.remote())
    assert isinstance(info.value, nbray.RemoteError)
    assert "/nonexistent-dir-nbray/file" in str(info.value)


# Regression (found by this suite in 3bb027a): for OSError subclasses RemoteError.__init__ runs
# OSError.__init__(cause, traceback_text, task_name), so errno is the cause object, strerror the
# traceback and filename the task name
def test_os_error_attributes_are_preserved(any_cluster):
    with pytest.raises(FileNotFoundError) as info:
        nbray.get(fail_with_os_error.remote())
    err = info.value
    assert err.filename == "/nonexistent-dir-nbray/file"
    assert err.errno == 2
    assert err.strerror == "No such file or directory"


def test_get_list_raises_first_error(any_cluster):
    refs = [identity.remote(1), fail_with_value_error.remote(2), identity.remote(3)]
    with pytest.raises(ValueError, match="bad value 2"):
        nbray.get(refs)
    assert nbray.get(refs[0]) == 1 and nbray.get(refs[2]) == 3


def test_error_propagates_to_dependent_task(any_cluster):
    bad = fail_with_value_error.remote(3)
    child = identity.remote(bad)
    grandchild = identity.remote(child)
    for ref in (bad, child, grandchild):
        with pytest.raises(ValueError) as info:
            nbray.get(ref)
        assert isinstance(info.value, nbray.RemoteError)
        assert "bad value 3" in str(info.value)
        assert "fail_with_value_error" in str(info.value)


def test_error_seen_through_nested_ref(any_cluster):
    @nbray.remote
    def get_inner(lst):
        return nbray.get(lst[0])

    with pytest.raises(ValueError) as info:
        nbray.get(get_inner.remote([fail_with_value_error.remote(4)]))
    assert isinstance(info.value, nbray.RemoteError)
    assert "bad value 4" in str(info.value)


def test_custom_exception_class_is_preserved(any_cluster):
    with pytest.raises(CustomError) as info:
        nbray.get(fail_with_custom.remote("custom failure"))
    err = info.value
    assert isinstance(err, nbray.RemoteError)
    assert type(err.cause) is CustomError
    assert err.args == ("custom failure",)
    assert err.detail == {"answer": 42}
    assert "custom failure" in str(err) and "fail_with_custom" in str(err)


# Regression (found by this suite in 3bb027a): RemoteError.from_parts cannot mix in an exception
# class whose __init__ does not take (cause, traceback, name); the error comes back as a plain
# RemoteError, so `except CustomErrorWithState` misses
def test_custom_exception_with_own_init_is_preserved(any_cluster):
    with pytest.raises(CustomErrorWithState) as info:
        nbray.get(fail_with_stateful.remote(17))
    assert isinstance(info.value, nbray.RemoteError)
    assert info.value.code == 17


def test_custom_exception_with_own_init_still_reported(any_cluster):
    with pytest.raises(nbray.RemoteError) as info:
        nbray.get(fail_with_stateful.remote(17))
    assert isinstance(info.value.cause, CustomErrorWithState)
    assert info.value.cause.code == 17
    assert "stateful failure" in str(info.value)


def test_unpicklable_exception_still_reported(any_cluster):
    with pytest.raises(nbray.RemoteError) as info:
        nbray.get(raises_unpicklable.remote())
    assert "carries a lock" in str(info.value)


def test_unpicklable_return_value_is_reported(any_cluster):
    with pytest.raises(TypeError) as info:
        nbray.get(returns_unpicklable.remote())
    assert isinstance(info.value, nbray.RemoteError)
    assert "lock" in str(info.value)
    assert nbray.get(identity.remote("still fine")) == "still fine"


def test_worker_survives_task_errors(any_cluster):
    refs = [fail_with_value_error.remote(i) for i in range(20)]
    for ref in refs:
        with pytest.raises(ValueError):
            nbray.get(ref)
    assert nbray.get([identity.remote(i) for i in range(10)]) == list(range(10))


# ---- serialization errors at submit --------------------------------------------------------------
def test_unpicklable_positional_argument(module_cluster):
    with pytest.raises(nbray.SerializationError) as info:
        identity.remote(threading.Lock())
    assert isinstance(info.value, TypeError)
    assert "position 0" in str(info.value)
    assert "identity" in str(info.value)


def test_unpicklable_argument_names_its_position(module_cluster):
    @nbray.remote
    def many(*args, **kwargs):
        return len(args)

    with pytest.raises(nbray.SerializationError, match="position 2"):
        many.remote(1, "two", threading.Lock(), 4)
    with pytest.raises(nbray.SerializationError, match="keyword 'lk'"):
        many.remote(1, lk=threading.Lock())
    # nothing was submitted, and the function still works
    assert nbray.get(many.remote(1, 2)) == 2


def test_unpicklable_nested_argument(module_cluster):
    with pytest.raises(nbray.SerializationError, match="position 0"):
        identity.remote([1, {"lock": threading.Lock()}])


def test_function_capturing_unpicklable_value(any_cluster):
    lock = threading.Lock()

    @nbray.remote
    def uses_lock():
        return lock.locked()

    with pytest.raises(nbray.SerializationError) as info:
        uses_lock.remote()
    assert isinstance(info.value, TypeError)
    assert "uses_lock" in str(info.value)


def test_put_unpicklable_raises_type_error(any_cluster):
    with pytest.raises(TypeError):
        nbray.put(threading.Lock())


# Regression (found by this suite in 3bb027a): nbray.put() of an unserializable value raises the
# bare pickling TypeError, not nbray.SerializationError as .remote() does
def test_put_unpicklable_raises_serialization_error(any_cluster):
    with pytest.raises(nbray.SerializationError):
        nbray.put(threading.Lock())


# ---- get timeout ---------------------------------------------------------------------------------
def test_get_timeout_on_slow_task(any_cluster):
    ref = slow.remote(1.5)
    t0 = time.monotonic()
    with pytest.raises(nbray.GetTimeoutError) as info:
        nbray.get(ref, timeout=0.2)
    elapsed = time.monotonic() - t0
    assert isinstance(info.value, TimeoutError)
    assert 0.15 <= elapsed < 1.2, elapsed
    # the task was not cancelled by the timeout
    assert nbray.get(ref, timeout=10) == 1.5


def test_get_timeout_zero(any_cluster):
    ref = slow.remote(0.5)
    with pytest.raises(nbray.GetTimeoutError):
        nbray.get(ref, timeout=0)
    with pytest.raises(nbray.GetTimeoutError):
        nbray.get([identity.remote(1), ref], timeout=0.05)
    assert nbray.get(ref) == 0.5
    assert nbray.get(ref, timeout=0) == 0.5


# ---- API misuse ----------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [1, "ref", None, {"a": 1}, object()])
def test_get_wrong_type(any_cluster, bad):
    with pytest.raises(TypeError):
        nbray.get(bad)


def test_get_list_with_non_ref(any_cluster):
    ref = identity.remote(1)
    with pytest.raises(TypeError):
        nbray.get([ref, 2])
    with pytest.raises(TypeError):
        nbray.get([[ref]])


@pytest.mark.parametrize("timeout", [-1, -0.1, True])
def test_get_invalid_timeout(any_cluster, timeout):
    with pytest.raises((ValueError, TypeError)):
        nbray.get(identity.remote(1), timeout=timeout)


@pytest.mark.parametrize("bad", [1, None, "x", object()])
def test_wait_wrong_type(any_cluster, bad):
    with pytest.raises(TypeError):
        nbray.wait(bad)


def test_wait_single_ref_not_list(any_cluster):
    with pytest.raises(TypeError):
        nbray.wait(identity.remote(1))


def test_wait_list_with_non_ref(any_cluster):
    with pytest.raises(TypeError):
        nbray.wait([identity.remote(1), 5])


def test_wait_num_returns_too_large(any_cluster):
    refs = [identity.remote(i) for i in range(3)]
    with pytest.raises(ValueError):
        nbray.wait(refs, num_returns=4)
    with pytest.raises(ValueError):
        nbray.wait([], num_returns=1)


@pytest.mark.parametrize("num_returns", [-1, 1.5, True, "1"])
def test_wait_invalid_num_returns(any_cluster, num_returns):
    with pytest.raises((ValueError, TypeError)):
        nbray.wait([identity.remote(1)], num_returns=num_returns)


def test_wait_duplicate_refs(any_cluster):
    ref = identity.remote(1)
    with pytest.raises(ValueError):
        nbray.wait([ref, ref], num_returns=1)


def test_wait_invalid_timeout(any_cluster):
    with pytest.raises((ValueError, TypeError)):
        nbray.wait([identity.remote(1)], timeout=-1)


def test_put_object_ref_is_type_error(any_cluster):
    with pytest.raises(TypeError):
        nbray.put(identity.remote(1))


@pytest.mark.parametrize("bad", [1, None, "x", [1]])
def test_cancel_wrong_type(any_cluster, bad):
    with pytest.raises(TypeError):
        nbray.cancel(bad)


def test_cancel_list_of_refs_is_type_error(any_cluster):
    with pytest.raises(TypeError):
        nbray.cancel([identity.remote(1)])


# ---- Ray's names: nbray.exceptions -----------------------------------------------------------
def test_ray_exception_names_are_nbrays_classes(any_cluster):
    from nbray import exceptions as ex
    with pytest.raises(ex.RayTaskError) as info:
        nbray.get(fail_with_custom.remote("ray names"))
    assert isinstance(info.value, CustomError) and isinstance(info.value, ex.RayError)
    assert isinstance(info.value.cause, CustomError) and info.value.cause.detail == {"answer": 42}
    with pytest.raises(ex.GetTimeoutError):
        nbray.get(slow.remote(5), timeout=0.05)
    for name in ("ActorDiedError", "TaskCancelledError", "ObjectLostError", "OwnerDiedError",
                 "WorkerCrashedError", "ObjectStoreFullError", "GetTimeoutError"):
        assert getattr(ex, name) is getattr(nbray, name)
        assert issubclass(getattr(ex, name), ex.RayError)
    assert ex.RayActorError is nbray.ActorDiedError


@nbray.remote
class Pinger:
    def ping(self):
        return "pong"


def test_killed_actor_raises_ray_actor_error(any_cluster):
    from nbray.exceptions import RayActorError
    a = Pinger.remote()
    assert nbray.get(a.ping.remote()) == "pong"
    nbray.kill(a)
    with pytest.raises(RayActorError):
        nbray.get(a.ping.remote(), timeout=30)


def test_object_ref_rebuilt_from_its_id_names_the_same_object(module_cluster):
    import gc
    ref = nbray.put({"k": [1, 2, 3]})
    again = nbray.ObjectRef(bytes.fromhex(ref.hex()))
    assert again == ref and nbray.get(again) == {"k": [1, 2, 3]}
    task_ref = identity.remote(7)
    assert nbray.get(nbray.ObjectRef(task_ref.binary())) == 7
    # after the object is freed: a clear error, not a hang or another object
    hex_id = ref.hex()
    del ref, again
    gc.collect()
    with pytest.raises(nbray.ObjectLostError, match="already freed"):
        nbray.get(nbray.ObjectRef(bytes.fromhex(hex_id)), timeout=10)
    with pytest.raises(ValueError, match="owner is unknown"):
        nbray.ObjectRef(bytes(20))
    with pytest.raises(ValueError, match="20 bytes"):
        nbray.ObjectRef(b"short")
    with pytest.raises(ValueError, match="20 bytes"):
        nbray.ObjectRef(hex_id)


class NeedsTwo(Exception):
    def __init__(self, item, n):
        super().__init__(f"{n} {item} short")      # its args do not fit its __init__


@nbray.remote
def raises_needs_two():
    raise NeedsTwo("bolts", 3)


def test_an_exception_that_cannot_be_unpickled_still_names_the_task(any_cluster):
    with pytest.raises(nbray.RemoteError) as info:
        nbray.get(raises_needs_two.remote())
    err = info.value
    assert err.task_name.endswith("raises_needs_two") and "NeedsTwo: 3 bolts short" in str(err)
    assert "raise NeedsTwo" in err.traceback_text
