"""The lazy DAG API. ``.bind()`` records a call instead of making it: ``f.bind`` a task,
``Cls.bind`` an actor, ``node.method.bind`` a call on that actor, and a live handle's
``handle.method.bind`` a call on an existing actor. ``with InputNode() as inp:`` stands in for
the arguments given later (``inp[0]`` positionally, ``inp.rate`` by keyword), and
``MultiOutputNode`` gathers several results. Nothing runs until ``dag.execute(...)``, which
submits the whole graph and returns refs at once; the same graph is executed again with other
inputs. Each execution runs a node once however many nodes use it, and builds its
``Cls.bind`` actors afresh, which the sums and the log of calls below check."""
import nbray as ray
from nbray.dag import InputNode, MultiOutputNode

ray.init(num_cpus=2)


@ray.remote
class CallLog:
    def __init__(self):
        self.seen = []

    def note(self, what):
        self.seen.append(what)
        return what

    def entries(self):
        return list(self.seen)


@ray.remote
def prices(n, log):
    ray.get(log.note.remote(f"prices({n})"))
    return [10 * (i + 1) for i in range(n)]


@ray.remote
def with_tax(values, rate):
    return [round(v * (1 + rate), 2) for v in values]


@ray.remote
def summary(raw, taxed):
    return {"raw": sum(raw), "taxed": round(sum(taxed), 2)}


@ray.remote
class Till:
    def __init__(self, opening):
        self.cash = opening

    def ring_up(self, amounts):
        self.cash += sum(amounts)
        return round(self.cash, 2)


log = CallLog.remote()
with InputNode() as inp:
    raw = prices.bind(inp[0], log)          # used by two nodes below, runs once
    taxed = with_tax.bind(raw, inp.rate)
    till = Till.bind(100)
    dag = MultiOutputNode([summary.bind(raw, taxed), till.ring_up.bind(taxed),
                           log.note.bind("graph done")])

first = dag.execute(3, rate=0.5)             # 10, 20, 30 -> 15, 30, 45
assert isinstance(first, list) and all(isinstance(r, ray.ObjectRef) for r in first)
print("first run:", ray.get(first))
assert ray.get(first) == [{"raw": 60, "taxed": 90.0}, 190.0, "graph done"]

second = dag.execute(2, rate=0.1)            # 10, 20 -> 11, 22; a fresh Till from 100
assert ray.get(second) == [{"raw": 30, "taxed": 33.0}, 133.0, "graph done"]
entries = ray.get(log.entries.remote())
assert sorted(entries) == ["graph done", "graph done", "prices(2)", "prices(3)"], entries

with InputNode() as n:                       # an input used whole
    chain = with_tax.bind(prices.bind(n, log), 0.25)
assert ray.get(chain.execute(1)) == [12.5]
assert ray.get(chain.execute(2)) == [12.5, 25.0]
ray.shutdown()
