"""The pickled form of a message: as it is, except the two that every task and call sends.

Pickling a small frozen class costs several times what pickling a plain tuple of the same
fields does (it runs the class's reduce protocol, and each end looks the class up by its
module and name): measured here, 4.9 / 3.6 us to pickle / unpickle a ``PushTasks`` of one
call, against 1.5 / 1.7 us as plain tuples. So ``PushTasks`` and ``TaskResults``, and the
specs, results and values inside them, travel as plain tuples tagged by their first item, and
are made into their classes again on arrival. Every other message is pickled as it is.
"""
from __future__ import annotations

from nbray.runtime import protocol as P

_new = tuple.__new__
#: first items of the tagged tuples (no message pickles to a plain tuple of its own)
_PUSH, _RESULTS = -1, -2


def encode(msg):
    """What ``pickle.dumps`` is given for ``msg``."""
    kind = type(msg)
    if kind is P.PushTasks:
        return (_PUSH, msg.owner, [_spec_out(s) for s in msg.tasks], msg.functions)
    if kind is P.TaskResults:
        return (_RESULTS, [tuple(r) if r.values is None else     # None: bounced
                           (r.task_id, tuple(map(tuple, r.values)), *r[2:])
                           for r in msg.results])
    return msg


def decode(obj):
    """The message that ``encode``'s result, unpickled, stands for (ValueError: a tuple of
    another shape, which no peer of this release sends)."""
    if type(obj) is not tuple:
        return obj
    tag = obj[0]
    if tag == _PUSH and len(obj) == 4:
        return _new(P.PushTasks, (obj[1], [_spec_in(s) for s in obj[2]], obj[3]))
    if tag == _RESULTS and len(obj) == 2:
        return _new(P.TaskResults, ([_result_in(r) for r in obj[1]],))
    raise ValueError(f"a tuple tagged {tag!r} of {len(obj)} items is not a message")


_SPEC_N, _RESULT_N, _VALUE_N = (len(c._fields) for c in (P.TaskSpec, P.TaskResult, P.Value))


def _spec_out(spec: P.TaskSpec) -> tuple:
    blob = spec.args_blob
    return (spec.task_id, spec.fn_id, spec.name,
            tuple(blob) if type(blob) is P.Value else blob,     # a Value: in shared memory
            tuple(map(tuple, spec.arg_values)), *spec[5:])


def _spec_in(s: tuple) -> P.TaskSpec:
    if len(s) != _SPEC_N:
        raise ValueError(f"a task spec of {len(s)} fields")
    blob = s[3]
    return _new(P.TaskSpec, (s[0], s[1], s[2],
                             _value_in(blob) if type(blob) is tuple else blob,
                             tuple([_value_in(v) for v in s[4]]), *s[5:]))


def _result_in(r: tuple) -> P.TaskResult:
    if len(r) != _RESULT_N:
        raise ValueError(f"a task result of {len(r)} fields")
    if r[1] is None:
        return _new(P.TaskResult, r)
    return _new(P.TaskResult, (r[0], tuple([_value_in(v) for v in r[1]]), *r[2:]))


def _value_in(v: tuple) -> P.Value:
    if len(v) != _VALUE_N:
        raise ValueError(f"a value of {len(v)} fields")
    return _new(P.Value, v)
