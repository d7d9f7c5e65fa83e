"""Generators: items per second a streaming task delivers to its caller (one message per
item), the time from ``.remote()`` to the first item, and the same count through
``num_returns="dynamic"``. Prints one JSON object.

    python benchmarks/generators.py
"""
from __future__ import annotations

import json
import statistics
import time

import nbray


@nbray.remote
def items(n):
    for i in range(n):
        yield i


@nbray.remote
def one():
    yield 1


def main() -> None:
    nbray.init(num_cpus=2)
    for r in items.remote(100):         # warm: workers started, functions shipped
        nbray.get(r)
    rates, first, dynamic = [], [], []
    for _ in range(5):
        t = time.perf_counter()
        n = sum(1 for _ in items.remote(10_000))
        rates.append(n / (time.perf_counter() - t))
    for _ in range(200):
        t = time.perf_counter()
        next(one.remote())
        first.append((time.perf_counter() - t) * 1e6)
    for _ in range(5):
        t = time.perf_counter()
        refs = list(nbray.get(items.options(num_returns="dynamic").remote(10_000)))
        dynamic.append(len(refs) / (time.perf_counter() - t))
    nbray.shutdown()
    print(json.dumps({"streaming_items_per_s": round(max(rates)),
                      "streaming_items_per_s_runs": [round(r) for r in rates],
                      "first_item_us_p50": round(statistics.median(first), 1),
                      "first_item_us_p99": round(sorted(first)[int(0.99 * len(first))], 1),
                      "dynamic_items_per_s": round(max(dynamic))}))


if __name__ == "__main__":
    main()
