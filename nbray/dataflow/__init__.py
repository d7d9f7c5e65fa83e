"""``nbray.dataflow``: a thin dataflow IR over tasks and actors, whose groups of tasks the
scheduler can place as units.

Four node types, each a group of ``n`` parallel outputs:

- ``Broadcast(fn, n, *args)``: ``n`` outputs, each the value ``fn(*args)`` (a task each, so
  every CPU can make its own copy where it will be used).
- ``Map(fn, inputs, args=per_input_args, num_returns=1)``: output ``i`` is
  ``fn(input_i, *args[i])``. With ``num_returns=R`` each output is a list of ``R`` parts: fed
  to ``ReduceActors`` with ``R`` reducers, that is a shuffle.
- ``InitActors(cls, n, per_actor_args)``: ``n`` actors of ``cls`` (a plain class or a remote
  one), actor ``i`` made with ``per_actor_args[i]``.
- ``ReduceActors(method_name, actors, inputs)``: one call of ``method_name`` on each actor.
  When each input is a list with one part per reducer (a shuffle), reducer ``r`` receives part
  ``r`` of every input; otherwise input ``i`` goes to reducer ``i % R``. Its outputs are the
  calls' results, one per reducer.

Nodes form a tree by being passed as inputs. ``node.eval()`` evaluates it semi-lazily: it
submits what of its subtree is not yet submitted and returns its outputs at once, as futures
(``ObjectRef``s; actor handles for ``InitActors``). Evaluating twice submits nothing again.

Edges between groups (``node.edge``): a ``Map`` over a ``Map`` or ``Broadcast`` is
``"one-to-one"`` (task ``i`` takes output ``i``); a shuffle into reducers is ``"all-to-all"``
(a BSP stage, but each reducer starts once its own parts exist: no global barrier); spread
inputs into reducers are ``"spread"``.

Group scheduling (on by default; ``set_group_scheduling(False)``, ``NBRAY_GROUP_SCHEDULING=0``
or ``eval(group_scheduling=False)`` switch it off): a group is submitted as one unit
(``nbray.util.group()``: one scheduling pass, one message per worker), each task with a soft
node affinity from ``placement.py`` (where its inputs are made), and reducer actors are made
when their first ``ReduceActors`` is evaluated, near the bulk of their inputs. Without it,
every task is a plain ``f.remote()`` placed by the scheduler as it comes, and actors are made
where the scheduler puts them.
"""
from __future__ import annotations

import os

import nbray
from nbray.dataflow import placement

__all__ = ["Broadcast", "Map", "InitActors", "ReduceActors", "Node", "set_group_scheduling",
           "group_scheduling", "lower"]

_group_scheduling = os.environ.get("NBRAY_GROUP_SCHEDULING", "1") not in ("0", "false", "no")


def set_group_scheduling(on: bool) -> None:
    """Switch group scheduling on or off for later evaluations (the vanilla per-task path
    when off), to compare the two on the same program."""
    global _group_scheduling
    _group_scheduling = bool(on)


def group_scheduling() -> bool:
    return _group_scheduling


def lower(submit, groups: bool | None = None):
    """Run ``submit()``, which submits a graph's tasks and actor calls, so that they reach the
    scheduler as one unit (``nbray.util.group()``) when group scheduling is on; returns what
    it returns. The IR's ``eval()`` and the lazy DAG API's ``execute()`` both lower this way."""
    if _group_scheduling if groups is None else groups:
        with nbray.util.group():
            return submit()
    return submit()


class Node:
    """A group of ``n`` parallel outputs; ``eval()`` returns them."""

    edge = "none"

    def __init__(self, n: int):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"a group needs at least one output, got n={n!r}")
        self.n = n
        self._out: list | None = None
        self.nodes: list[str] = [""] * n        # where each output is made ("" unknown)

    def __len__(self) -> int:
        return self.n

    @property
    def evaluated(self) -> bool:
        return self._out is not None

    def eval(self, group_scheduling: bool | None = None) -> list:
        """Submit what of this subtree is not yet submitted; return the outputs."""
        if self._out is None:
            groups = _group_scheduling if group_scheduling is None else group_scheduling
            ctx = _Context(groups)
            lower(lambda: self._evaluate(ctx), groups)
        return self._out

    def _evaluate(self, ctx: "_Context") -> list:
        if self._out is None:
            self._out = self._submit(ctx)
        return self._out

    def _submit(self, ctx: "_Context") -> list:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self.n}{' (evaluated)' if self.evaluated else ''}>"


class _Context:
    """One evaluation: whether groups are scheduled, and the cluster's nodes (read once)."""

    def __init__(self, groups: bool):
        self.groups = groups
        self._nodes = None

    @property
    def cluster(self) -> list[tuple[str, float]]:
        if self._nodes is None:
            # nbray.nodes(): Ray's keys on every backend
            self._nodes = [(n["NodeID"], float((n.get("Resources") or {}).get("CPU", 1)))
                           for n in nbray.nodes() if n["Alive"]]
        return self._nodes

    def options(self, node: str) -> dict:
        if not self.groups or not node:
            return {}
        from nbray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=True)}


def _remote_function(fn, **options):
    from nbray.remote_function import RemoteFunction
    if isinstance(fn, RemoteFunction):
        return fn.options(**options) if options else fn
    if not callable(fn):
        raise TypeError(f"expected a function, got {type(fn).__name__}")
    return nbray.remote(**options)(fn) if options else nbray.remote(fn)


class Broadcast(Node):
    """``n`` outputs, each the value ``fn(*args)``."""

    def __init__(self, fn, n: int, *args):
        super().__init__(n)
        self.fn = _remote_function(fn)
        self.args = args

    def _submit(self, ctx):
        if ctx.groups:
            self.nodes = placement.spread(self.n, ctx.cluster)
        return [self.fn.options(**ctx.options(node)).remote(*self.args) if ctx.groups
                else self.fn.remote(*self.args) for node in self.nodes]


class Map(Node):
    """Output ``i`` is ``fn(input_i, *args[i])``; with ``num_returns=R`` a list of ``R``
    parts."""

    def __init__(self, fn, inputs, args=None, num_returns: int = 1):
        self.inputs = inputs
        n = inputs.n if isinstance(inputs, Node) else len(inputs)
        super().__init__(n)
        if args is not None and len(args) != n:
            raise ValueError(f"args must have one entry per input ({n}), got {len(args)}")
        self.args = [tuple(a) if isinstance(a, (tuple, list)) else (a,) for a in args] \
            if args is not None else [()] * n
        if isinstance(num_returns, bool) or not isinstance(num_returns, int) or \
                num_returns < 1:
            raise ValueError(f"num_returns must be a positive integer, got {num_returns!r}")
        self.num_returns = num_returns
        self.fn = _remote_function(fn, num_returns=num_returns) if num_returns > 1 else \
            _remote_function(fn)
        self.edge = "one-to-one" if isinstance(inputs, Node) else "none"

    @property
    def shuffle(self) -> bool:
        return self.num_returns > 1

    def _submit(self, ctx):
        if isinstance(self.inputs, Node):
            values = self.inputs._evaluate(ctx)
            upstream = self.inputs.nodes
        else:
            values, upstream = list(self.inputs), [""] * self.n
        if ctx.groups:
            self.nodes = placement.follow(upstream) if any(upstream) else \
                placement.spread(self.n, ctx.cluster)
            return [self.fn.options(**ctx.options(node)).remote(v, *a)
                    for v, a, node in zip(values, self.args, self.nodes)]
        return [self.fn.remote(v, *a) for v, a in zip(values, self.args)]


class InitActors(Node):
    """``n`` actors of ``cls``, actor ``i`` made with ``per_actor_args[i]``."""

    def __init__(self, cls, n: int, per_actor_args=None):
        super().__init__(n)
        from nbray.actor import ActorClass
        if isinstance(cls, ActorClass):
            self.cls = cls
        elif isinstance(cls, type):
            self.cls = nbray.remote(cls)
        else:
            raise TypeError(f"InitActors needs a class, got {type(cls).__name__}")
        if per_actor_args is not None and len(per_actor_args) != n:
            raise ValueError(f"per_actor_args must have one entry per actor ({n}), got "
                             f"{len(per_actor_args)}")
        self.per_actor_args = [tuple(a) if isinstance(a, (tuple, list)) else (a,)
                               for a in per_actor_args] if per_actor_args is not None \
            else [()] * n

    def _submit(self, ctx, near: list[str] | None = None):
        if ctx.groups:
            self.nodes = list(near) if near else placement.spread(self.n, ctx.cluster)
            return [self.cls.options(**ctx.options(node)).remote(*a)
                    for a, node in zip(self.per_actor_args, self.nodes)]
        return [self.cls.remote(*a) for a in self.per_actor_args]

    def _evaluate(self, ctx, near: list[str] | None = None) -> list:
        if self._out is None:
            self._out = self._submit(ctx, near)
        return self._out


class ReduceActors(Node):
    """One call of ``method_name`` per actor with its share of ``inputs``."""

    def __init__(self, method_name: str, actors, inputs):
        if not isinstance(method_name, str) or not method_name:
            raise TypeError(f"method_name must be a method's name, got {method_name!r}")
        self.method_name = method_name
        self.actors = actors
        self.inputs = inputs
        super().__init__(actors.n if isinstance(actors, Node) else len(actors))
        width = self.inputs.num_returns if isinstance(inputs, Map) else None
        if isinstance(inputs, Map) and inputs.shuffle and width != self.n:
            raise ValueError(f"a shuffle into {self.n} reducers needs each input split in "
                             f"{self.n} parts (Map(..., num_returns={self.n})), got {width}")
        self.edge = "all-to-all" if isinstance(inputs, Map) and inputs.shuffle else "spread"

    def _submit(self, ctx):
        if isinstance(self.inputs, Node):
            values = self.inputs._evaluate(ctx)
            upstream = self.inputs.nodes
        else:
            values, upstream = list(self.inputs), [""] * len(self.inputs)
        shuffle = self.edge == "all-to-all" or (
            not isinstance(self.inputs, Node) and values and
            all(isinstance(v, (list, tuple)) and len(v) == self.n for v in values))
        if isinstance(self.actors, InitActors):
            near = None
            if ctx.groups and not self.actors.evaluated:
                near = placement.reducers_for_shuffle(self.n, upstream, ctx.cluster) \
                    if shuffle else placement.reducers_for_spread(self.n, upstream,
                                                                   ctx.cluster)
            handles = self.actors._evaluate(ctx, near)
            self.nodes = list(self.actors.nodes)
        else:
            handles = list(self.actors)
        if shuffle:
            shares = [[v[r] for v in values] for r in range(self.n)]
        else:
            shares = [values[r::self.n] for r in range(self.n)]
        return [getattr(h, self.method_name).remote(*share) for h, share in zip(handles, shares)]
