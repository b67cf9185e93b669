"""Unpickle what can be rebuilt of a message whose ``pickle.loads`` failed.

A worker sends a whole batch of results as one pickle (one ``dumps`` per batch keeps tiny
tasks fast).  If one result cannot be rebuilt in the parent (its class is missing there, its
reconstructor raises), ``loads`` fails for the whole batch; running the batch again would run
every item twice.  :func:`salvage` reads the same bytes again with a tolerant unpickler: each
object whose reconstruction fails becomes an :class:`Unrebuildable` holding the error, and
everything else comes back intact, so the caller fails only the items that hold one.

It uses the pure-Python unpickler (slow, but only ever on this failure path) and wraps the
opcodes that import or call code; the others only move data and cannot fail on a well-formed
stream.
"""

from __future__ import annotations

import io
import pickle
from typing import Any, Callable, ClassVar, Optional

__all__ = ["Unrebuildable", "find_unrebuildable", "salvage"]


class Unrebuildable:
    """Stands in for an object that could not be rebuilt; ``error`` says why."""

    __slots__ = ("error",)  # no __dict__: building state into it fails, and stays this

    def __init__(self, error: BaseException):
        self.error = error


_Handler = Callable[[Any], None]
_BASE: dict[int, _Handler] = pickle._Unpickler.dispatch


def _replacing(opcode: bytes, net: int) -> _Handler:
    """Wrap the handler of an opcode that pops operands and pushes one object (``net``: the
    change in stack length): if it fails, its operands give way to an Unrebuildable."""
    handler = _BASE[opcode[0]]

    def run(self: Any) -> None:
        stack = self.stack
        keep = len(stack) + net - 1  # the stack's length once the operands are popped
        operands = stack[keep:]
        try:
            handler(self)
        except BaseException as exc:  # a reconstructor's sys.exit() too: it runs in our thread
            del stack[keep:]
            stack.append(_placeholder(self, operands, exc))

    return run


def _filling(opcode: bytes) -> _Handler:
    """Wrap the handler of an opcode that adds marked items to the container below the mark
    (APPENDS, SETITEMS, ADDITEMS): if that fails, the container becomes an Unrebuildable."""
    handler = _BASE[opcode[0]]

    def run(self: Any) -> None:
        try:
            handler(self)
        except BaseException as exc:  # as above
            target = self.stack[-1]
            self.stack[-1] = _placeholder(self, [target], exc)

    return run


def _placeholder(unpickler: Any, operands: list[Any], exc: BaseException) -> Unrebuildable:
    # An operand that is already a stand-in carries the original reason.
    for operand in operands:
        if isinstance(operand, Unrebuildable):
            return operand
    made = Unrebuildable(exc)
    unpickler.placeholders.append(made)
    return made


class _TolerantUnpickler(pickle._Unpickler):
    dispatch: ClassVar[dict[int, _Handler]] = dict(_BASE)
    for _opcode, _net in (
        (pickle.GLOBAL, 1),
        (pickle.STACK_GLOBAL, -1),
        (pickle.REDUCE, -1),
        (pickle.NEWOBJ, -1),
        (pickle.NEWOBJ_EX, -2),
        (pickle.BUILD, -1),
        (pickle.APPEND, -1),
        (pickle.SETITEM, -2),
    ):
        dispatch[_opcode[0]] = _replacing(_opcode, _net)
    for _opcode in (pickle.APPENDS, pickle.SETITEMS, pickle.ADDITEMS):
        dispatch[_opcode[0]] = _filling(_opcode)
    del _opcode, _net

    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data))
        self.placeholders: list[Unrebuildable] = []


def salvage(data: bytes) -> tuple[Any, list[Unrebuildable]]:
    """Unpickle ``data``, standing in for what cannot be rebuilt; the object and the
    stand-ins made.  Raises if the stream itself cannot be read."""
    unpickler = _TolerantUnpickler(data)
    return unpickler.load(), unpickler.placeholders


def find_unrebuildable(obj: Any) -> Optional[Unrebuildable]:
    """The first stand-in held anywhere inside ``obj`` (containers and instance attributes),
    or ``None``."""
    seen: set[int] = set()
    todo = [obj]
    while todo:
        current = todo.pop()
        if isinstance(current, Unrebuildable):
            return current
        if id(current) in seen or isinstance(current, (str, bytes, int, float, type)):
            continue
        seen.add(id(current))
        if isinstance(current, dict):
            todo.extend(current.keys())
            todo.extend(current.values())
        elif isinstance(current, (list, tuple, set, frozenset)):
            todo.extend(current)
        else:
            if isinstance(current, BaseException):
                todo.extend(current.args)
            attributes = getattr(current, "__dict__", None)
            if isinstance(attributes, dict):
                todo.extend(attributes.values())
            slots = getattr(type(current), "__slots__", ())
            for name in (slots,) if isinstance(slots, str) else slots:
                todo.append(getattr(current, name, None))
    return None
