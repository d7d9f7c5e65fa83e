"""``multiprocessing.Pool`` code on the cluster. ``nbray.util.multiprocessing.Pool`` has the
standard library pool's interface, but its processes are actors: ``Pool(2, initializer=...)``
makes two, each running the initializer once, here to load a lookup table into that process.
``map`` and ``starmap`` return results in order, ``imap_unordered`` yields them as they are
done, and ``apply_async`` returns an ``AsyncResult`` whose ``callback`` receives the value.
Leaving the ``with`` block terminates the pool's actors, as the standard library's does."""
import os
import threading

import nbray as ray
from nbray.util.multiprocessing import Pool

ray.init(num_cpus=2)


def load_table(base):
    os.environ["UNIT_TABLE"] = f"{base},{os.getpid()}"     # per-process state, set once


def to_grams(kg):
    base, _ = os.environ["UNIT_TABLE"].split(",")
    return kg * int(base)


def where_loaded(_):
    return os.environ["UNIT_TABLE"]


def price(weight, per_kg):
    return round(weight * per_kg, 2)


got = []
finished = threading.Event()


def on_done(value):
    got.append(value)
    finished.set()


with Pool(2, initializer=load_table, initargs=(1000,)) as pool:
    assert pool.map(to_grams, [1, 2, 3, 4, 5]) == [1000, 2000, 3000, 4000, 5000]
    tables = set(pool.map(where_loaded, range(8), chunksize=1))
    print("initialized processes:", sorted(tables))
    assert len(tables) == 2 and all(t.startswith("1000,") for t in tables)
    assert os.getpid() not in {int(t.split(",")[1]) for t in tables}

    assert sorted(pool.imap_unordered(to_grams, range(6))) == [0, 1000, 2000, 3000, 4000, 5000]
    assert pool.starmap(price, [(2, 1.25), (0.5, 8.0), (3, 0.1)]) == [2.5, 4.0, 0.3]

    result = pool.apply_async(to_grams, (7,), callback=on_done)
    assert result.get(timeout=20) == 7000 and result.successful()
    assert finished.wait(10) and got == [7000]
ray.shutdown()
