"""Checks and names for what users pass as ``worker=``: a warning for one stateful object
shared by several worker threads, and the name messages use for the user's worker."""

from __future__ import annotations

import functools
import types
import warnings
from typing import Any, Optional, Sequence, Union

from ._cpu import usable_cpu_count
from .stateful import DelayedInit, SentByValue, WorkerHandle, WorkerLike

__all__ = [
    "NamedWorkerHandle",
    "stateful_thread_count",
    "warn_shared_instances",
    "workers_name",
]


def stateful_thread_count(
    specs: Optional[list[WorkerLike]], max_workers: Optional[int]
) -> Optional[int]:
    """The thread pool's size when the caller gave none.

    The stdlib's default, ``min(32, CPUs + 4)``, suits I/O-bound stateless tasks; when every
    thread builds its own object from one ``@delayed_init`` spec (a model, say), each extra
    thread is one more copy, so the default is then one thread per CPU.
    """
    if max_workers is not None or specs is None or len(specs) != 1:
        return max_workers
    if not isinstance(specs[0], DelayedInit):
        return None  # a plain function is shared, not copied: the stdlib's default
    return usable_cpu_count()


def warn_shared_instances(specs: Optional[list[WorkerLike]], workers: int) -> None:
    """Warn when worker threads would share one stateful object (an instance, not a spec).

    A thread pool hands a plain object to its workers as is, so one instance given for
    several workers gets overlapping calls; ``@delayed_init`` gives each worker its own.
    """
    if specs is None:
        return
    shared = specs * workers if len(specs) == 1 else specs
    seen: set[int] = set()
    for spec in shared:
        if not _is_plain_instance(spec):
            continue
        if id(spec) in seen:
            warnings.warn(
                f"worker= gives one object ({type(spec).__name__} instance) to several worker "
                "threads, which will call it at the same time; decorate its class with "
                "@mtasklite.delayed_init so that each worker builds its own",
                UserWarning,
                stacklevel=3,
            )
            return
        seen.add(id(spec))


def _is_plain_instance(obj: object) -> bool:
    """An object with state of its own (not a function, class, spec or handle)."""
    stateless = (
        types.FunctionType,
        types.BuiltinFunctionType,
        types.MethodType,
        functools.partial,
        type,
        DelayedInit,
        SentByValue,
        WorkerHandle,
    )
    return not isinstance(obj, stateless) and bool(getattr(obj, "__dict__", None))


class NamedWorkerHandle(WorkerHandle):
    """``ex.worker`` under the name of the user's worker, which messages show (a task that
    timed out is ``work(3)``, not the handle)."""

    def __init__(self, name: str):
        self.__qualname__ = name

    def __reduce__(self) -> tuple[Any, ...]:  # type: ignore[override]
        return (NamedWorkerHandle, (self.__qualname__,))

    def __repr__(self) -> str:
        return f"<mtasklite worker handle for {self.__qualname__}>"


def workers_name(worker: Union[WorkerLike, Sequence[WorkerLike]]) -> str:
    """What to call the user's worker(s) in messages: the function or class name they share."""
    workers = worker if isinstance(worker, (list, tuple)) else [worker]
    names = set()
    for one in workers:
        target = one.spec if isinstance(one, SentByValue) else one
        if isinstance(target, DelayedInit):
            target = target.cls
        names.add(str(getattr(target, "__qualname__", None) or type(target).__qualname__))
    return names.pop() if len(names) == 1 else "worker"
