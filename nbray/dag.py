"""The lazy DAG API: build a graph of calls with ``.bind()``, run it with ``.execute()``.

    with InputNode() as x:
        dag = combine.bind(double.bind(x), Counter.bind(10).add.bind(x))
    nbray.get(dag.execute(3))

``f.bind(...)`` is a ``FunctionNode``, ``Cls.bind(...)`` a ``ClassNode`` (an actor, made anew
each execution), ``node.method.bind(...)`` or ``handle.method.bind(...)`` a
``ClassMethodNode``; arguments may be nodes, also inside lists, tuples and dicts. The one
``InputNode`` of a graph stands for ``execute``'s arguments: the whole of a single argument,
``x[i]`` the ``i``-th positional one, ``x["k"]`` or ``x.k`` a keyword one.
``MultiOutputNode([a, b])`` makes ``execute`` return a list.

``execute`` lowers the graph the way ``nbray.dataflow``'s ``eval()`` lowers its groups: one
walk that submits each node once (a node two others use runs once), inside one
``nbray.util.group()``, so the whole graph reaches the scheduler as one unit and its tasks
wait on each other's refs, never on the driver. It returns at once: refs (an actor handle
for a ``ClassNode``; a list for a ``MultiOutputNode``).
"""
from __future__ import annotations

__all__ = ["DAGNode", "InputNode", "InputAttributeNode", "FunctionNode", "ClassNode",
           "ClassMethodNode", "MultiOutputNode"]


class DAGNode:
    """A call in a lazy graph; ``execute(*args, **kwargs)`` runs the graph up to it."""

    def __init__(self, args: tuple = (), kwargs: dict | None = None):
        self._args, self._kwargs = tuple(args), dict(kwargs or {})

    def execute(self, *args, **kwargs):
        from nbray.dataflow import lower
        inputs = {id(n) for n in _walk(self) if isinstance(n, InputNode)}
        if len(inputs) > 1:
            raise ValueError("a DAG has at most one InputNode; index it (x[0], x['k']) for "
                             "several inputs")
        if not inputs and (args or kwargs):
            raise TypeError(f"this DAG has no InputNode, so execute() takes no arguments, "
                            f"got {len(args)} positional and {len(kwargs)} keyword")
        done: dict = {}
        return lower(lambda: self._resolve(done, args, kwargs))

    def _resolve(self, done: dict, args: tuple, kwargs: dict):
        key = id(self)
        if key not in done:
            done[key] = self._run(done, args, kwargs)
        return done[key]

    def _bound(self, done: dict, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """This node's own arguments with every node in them replaced by its result."""
        def sub(v):
            if isinstance(v, DAGNode):
                return v._resolve(done, args, kwargs)
            if isinstance(v, (list, tuple)):
                return type(v)(sub(x) for x in v)
            if isinstance(v, dict):
                return {k: sub(x) for k, x in v.items()}
            return v
        return tuple(sub(a) for a in self._args), {k: sub(v) for k, v in self._kwargs.items()}

    def _run(self, done: dict, args: tuple, kwargs: dict):
        raise NotImplementedError

    def _children(self) -> list:
        out = []

        def scan(v):
            if isinstance(v, DAGNode):
                out.append(v)
            elif isinstance(v, (list, tuple)):
                for x in v:
                    scan(x)
            elif isinstance(v, dict):
                for x in v.values():
                    scan(x)
        scan(self._args)
        scan(self._kwargs)
        return out

    def __reduce__(self):
        raise TypeError(f"{type(self).__name__} cannot be sent to the cluster: pass "
                        f"dag.execute(...)'s refs instead")


def _walk(root: DAGNode):
    seen, stack = set(), [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        stack.extend(node._children())


class InputNode(DAGNode):
    """``execute``'s arguments; also a context manager (``with InputNode() as x:``)."""

    def __enter__(self) -> "InputNode":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def __getitem__(self, key) -> "InputAttributeNode":
        if isinstance(key, bool) or not isinstance(key, (int, str)):
            raise TypeError(f"an InputNode is indexed by a position or a keyword name, got "
                            f"{key!r}")
        return InputAttributeNode(self, key)

    def __getattr__(self, name: str) -> "InputAttributeNode":
        if name.startswith("_"):
            raise AttributeError(name)
        return InputAttributeNode(self, name)

    def _run(self, done, args, kwargs):
        if len(args) == 1 and not kwargs:
            return args[0]
        raise ValueError(f"the DAG uses its InputNode whole, so execute() takes exactly one "
                         f"argument, got {len(args)} positional and {len(kwargs)} keyword; "
                         f"index the InputNode (x[0], x['k']) to take several")


class InputAttributeNode(DAGNode):
    """One of ``execute``'s arguments: ``x[0]`` positional, ``x["k"]`` or ``x.k`` keyword."""

    def __init__(self, source: InputNode, key):
        super().__init__((source,))
        self._key = key

    def _run(self, done, args, kwargs):
        key = self._key
        try:
            return args[key] if isinstance(key, int) else kwargs[key]
        except (IndexError, KeyError):
            kind = "positional argument" if isinstance(key, int) else "keyword argument"
            raise ValueError(f"the DAG reads {kind} {key!r} of execute(), which was not "
                             f"given") from None


class FunctionNode(DAGNode):
    """``f.bind(*args, **kwargs)``: the task ``f.remote(...)``, once per execution."""

    def __init__(self, fn, args: tuple, kwargs: dict):
        super().__init__(args, kwargs)
        self._fn = fn

    def _run(self, done, args, kwargs):
        a, k = self._bound(done, args, kwargs)
        return self._fn.remote(*a, **k)

    def __repr__(self) -> str:
        return f"FunctionNode({self._fn._name})"


class ClassNode(DAGNode):
    """``Cls.bind(*args)``: an actor made each execution; ``node.method.bind(...)`` calls it."""

    def __init__(self, cls, args: tuple, kwargs: dict):
        super().__init__(args, kwargs)
        self._cls = cls

    def __getattr__(self, name: str) -> "_UnboundMethod":
        if name.startswith("_"):
            raise AttributeError(name)
        return _UnboundMethod(self, name, None)

    def _run(self, done, args, kwargs):
        a, k = self._bound(done, args, kwargs)
        return self._cls.remote(*a, **k)

    def __repr__(self) -> str:
        return f"ClassNode({self._cls._name})"


class _UnboundMethod:
    """``class_node.method``: ``.bind(...)`` it (``.options(num_returns=)`` first if need)."""

    def __init__(self, actor, name: str, num_returns: int | None):
        self._actor, self._name, self._num_returns = actor, name, num_returns

    def options(self, *, num_returns: int | None = None) -> "_UnboundMethod":
        return _UnboundMethod(self._actor, self._name, num_returns)

    def bind(self, *args, **kwargs) -> "ClassMethodNode":
        return ClassMethodNode(self._actor, self._name, self._num_returns, args, kwargs)


class ClassMethodNode(DAGNode):
    """A call of an actor's method: of a ``ClassNode``'s actor, or of a live actor's handle.
    Calls on one actor are made in the order the graph is walked (depth first, arguments
    left to right), so ``MultiOutputNode([a.inc.bind(1), a.read.bind()])`` reads after it
    adds."""

    def __init__(self, actor, name: str, num_returns: int | None, args: tuple, kwargs: dict):
        # the actor first: it is made (or called) before the arguments' own calls on it
        super().__init__((actor,) + tuple(args) if isinstance(actor, DAGNode) else args,
                         kwargs)
        self._actor, self._name, self._num_returns = actor, name, num_returns
        self._own_args = tuple(args)

    def _run(self, done, args, kwargs):
        handle = self._actor._resolve(done, args, kwargs) \
            if isinstance(self._actor, DAGNode) else self._actor
        a, k = self._bound(done, args, kwargs)
        if isinstance(self._actor, DAGNode):
            a = a[1:]
        method = getattr(handle, self._name)
        if self._num_returns is not None:
            method = method.options(num_returns=self._num_returns)
        return method.remote(*a, **k)

    def __repr__(self) -> str:
        return f"ClassMethodNode({self._name})"


class MultiOutputNode(DAGNode):
    """Several outputs: ``execute`` returns a list with one entry per node given."""

    def __init__(self, outputs):
        outputs = list(outputs)
        if not outputs or not all(isinstance(o, DAGNode) for o in outputs):
            raise TypeError("MultiOutputNode takes a non-empty list of DAG nodes")
        super().__init__((outputs,))

    def _run(self, done, args, kwargs):
        (outputs,), _ = self._bound(done, args, kwargs)
        return list(outputs)
