"""Argument-passing and exception-handling modes of the pqdm layer and :class:`~mtasklite.Pool`.

Both are ``str`` enums, so plain strings (``"kwargs"``, ``"deferred"``) work wherever a mode is
expected and compare equal to the members.
"""

from __future__ import annotations

import enum
from typing import Union

__all__ = ["ArgumentPassing", "ExceptionBehaviour", "argument_passing", "exception_behaviour"]


class ArgumentPassing(str, enum.Enum):
    """How each input item is passed to the worker."""

    AS_SINGLE_ARG = "single_arg"  #: ``worker(item)``
    AS_ARGS = "args"  #: ``worker(*item)``
    AS_KWARGS = "kwargs"  #: ``worker(**item)``


class ExceptionBehaviour(str, enum.Enum):
    """What a failed item does to the iteration."""

    IGNORE = "ignore"  #: yield the exception object in place of the result
    IMMEDIATE = "immediate"  #: stop at once and raise the worker's exception
    DEFERRED = "deferred"  #: finish everything, then raise all exceptions together


#: pqdm's name for single-argument passing
_ARGUMENT_ALIASES = {"direct": ArgumentPassing.AS_SINGLE_ARG}


def argument_passing(value: Union[ArgumentPassing, str]) -> ArgumentPassing:
    """Parse an argument-passing mode (pqdm's ``"direct"`` is accepted for ``"single_arg"``)."""
    if isinstance(value, str) and value in _ARGUMENT_ALIASES:
        return _ARGUMENT_ALIASES[value]
    try:
        return ArgumentPassing(value)
    except ValueError:
        valid = ", ".join(repr(m.value) for m in ArgumentPassing)
        raise ValueError(
            f"unknown argument_type {value!r}; expected one of {valid} (or 'direct')"
        ) from None


def exception_behaviour(value: Union[ExceptionBehaviour, str]) -> ExceptionBehaviour:
    """Parse an exception-handling mode."""
    try:
        return ExceptionBehaviour(value)
    except ValueError:
        valid = ", ".join(repr(m.value) for m in ExceptionBehaviour)
        raise ValueError(
            f"unknown exception behaviour {value!r}; expected one of {valid}"
        ) from None
