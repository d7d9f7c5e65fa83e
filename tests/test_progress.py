"""The progress bar of a long get of many refs (text in a terminal; a widget in a notebook), on
nbray's runtime and (marked ``ray``) on the Ray backend."""
from __future__ import annotations

import time

import pytest

import nbray

pytestmark = pytest.mark.timeout(120)


@nbray.remote
def nap(i, seconds):
    time.sleep(seconds)
    return i


def test_a_long_get_of_many_refs_shows_a_bar_that_reaches_the_end(any_cluster, capsys):
    cpus = nbray.cluster_resources()["CPU"]
    refs = [nap.remote(i, 0.0075 * cpus) for i in range(200)]     # about 1.5 s
    assert nbray.get(refs) == list(range(200))
    err = capsys.readouterr().err
    assert "nbray.get" in err and "200/200" in err


def test_no_bar_when_asked_not_to_or_when_it_is_quick(any_cluster, capsys):
    refs = [nap.remote(i, 0.015) for i in range(200)]
    assert nbray.get(refs, progress=False) == list(range(200))
    assert nbray.get(refs) == list(range(200))            # all ready: nothing to wait for
    assert "nbray.get" not in capsys.readouterr().err


def test_progress_true_shows_it_for_a_short_list_and_a_timeout_still_raises(any_cluster,
                                                                           capsys):
    refs = [nap.remote(i, 0.3) for i in range(3)]
    assert nbray.get(refs, progress=True) == [0, 1, 2]
    assert "3/3" in capsys.readouterr().err
    slow = [nap.remote(i, 5) for i in range(150)]
    t = time.monotonic()
    with pytest.raises(nbray.GetTimeoutError):
        nbray.get(slow, timeout=1.5)
    assert time.monotonic() - t < 10
    for ref in slow:
        nbray.cancel(ref)


def test_a_long_wait_for_many_shows_a_bar_up_to_num_returns(any_cluster, capsys):
    refs = [nap.remote(i, 0.015) for i in range(200)]
    ready, rest = nbray.wait(refs, num_returns=150)
    assert len(ready) >= 150 and len(ready) + len(rest) == 200
    err = capsys.readouterr().err
    assert "nbray.wait" in err and "150/150" in err
    nbray.get(refs, progress=False)
    ready, rest = nbray.wait(refs, num_returns=200, progress=False)
    assert len(ready) == 200 and "nbray.wait" not in capsys.readouterr().err
