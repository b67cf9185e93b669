"""Pool arguments: how each input item reaches the worker, and the checks that report a bad
argument under the name the caller used (``n_jobs``, either spelling of the exception mode)."""

from __future__ import annotations

import collections.abc
from typing import Any, Callable, Optional, Union

from ._validate import positive_int_or_none
from .constants import ExceptionBehaviour, exception_behaviour

__all__ = ["KeywordArgs", "StarArgs", "check_n_jobs", "either_spelling"]


class StarArgs:
    """Calls ``fn(*item)``; a non-iterable item fails with a message naming the mode."""

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        self.__qualname__ = getattr(fn, "__qualname__", type(fn).__qualname__)  # for messages

    def __call__(self, item: Any) -> Any:
        if not isinstance(item, collections.abc.Iterable):
            raise TypeError(
                f"argument_type='args' needs an iterable of arguments per input item, got "
                f"{type(item).__name__}: {item!r:.80}"
            )
        return self.fn(*item)


class KeywordArgs:
    """Calls ``fn(**item)``; a non-mapping item fails with a message naming the mode."""

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        self.__qualname__ = getattr(fn, "__qualname__", type(fn).__qualname__)  # for messages

    def __call__(self, item: Any) -> Any:
        if not isinstance(item, collections.abc.Mapping):
            raise TypeError(
                f"argument_type='kwargs' needs a mapping of keyword arguments per input item, "
                f"got {type(item).__name__}: {item!r:.80}"
            )
        return self.fn(**item)


def check_n_jobs(n_jobs: Optional[int], workers: object) -> None:
    """Refuse a bad ``n_jobs`` under its own name (the executor would say ``max_workers``)."""
    if positive_int_or_none("n_jobs", n_jobs) is None:
        return
    if isinstance(workers, (list, tuple)) and n_jobs != len(workers):
        raise ValueError(
            f"n_jobs={n_jobs} does not match the {len(workers)} workers given in "
            "worker_or_worker_arr (omit n_jobs to use one worker per entry)"
        )


def either_spelling(
    behavior: Union[ExceptionBehaviour, str], behaviour: Union[ExceptionBehaviour, str, None]
) -> ExceptionBehaviour:
    """``exception_behavior`` (Pool's spelling) or ``exception_behaviour`` (pqdm's)."""
    chosen = exception_behaviour(behavior)
    if behaviour is None:
        return chosen
    other = exception_behaviour(behaviour)
    if chosen is not ExceptionBehaviour.IMMEDIATE and chosen is not other:
        raise TypeError(
            f"exception_behavior={chosen.value!r} and exception_behaviour={other.value!r} "
            "disagree; pass one of the two spellings"
        )
    return other
