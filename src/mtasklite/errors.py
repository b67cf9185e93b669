"""Exceptions raised by mtasklite executors.

Each one subclasses the stdlib exception that code written for ``concurrent.futures`` already
catches, so swapping executor classes never changes which ``except`` clause runs.
"""

from __future__ import annotations

import concurrent.futures
import pickle
from concurrent.futures.process import BrokenProcessPool, _RemoteTraceback
from concurrent.futures.thread import BrokenThreadPool
from typing import Optional

__all__ = [
    "DeferredExceptions",
    "DeserializationError",
    "RemoteError",
    "TaskPicklingError",
    "TaskTimeoutError",
    "WorkerCrashedError",
    "WorkerInitError",
    "WorkerStopping",
]

# On 3.9/3.10 ``concurrent.futures.TimeoutError`` is its own class; from 3.11 on it *is* the
# built-in.  Inherit from both where they differ so either ``except`` catches a task timeout.
if issubclass(concurrent.futures.TimeoutError, TimeoutError):
    _TIMEOUT_BASES: tuple[type[BaseException], ...] = (TimeoutError,)
else:  # pragma: no cover - exercised on 3.9/3.10 only
    _TIMEOUT_BASES = (concurrent.futures.TimeoutError, TimeoutError)


class TaskTimeoutError(*_TIMEOUT_BASES):  # type: ignore[misc]
    """A task ran longer than its ``task_timeout`` and was stopped.

    Its message names the limit, the worker index and the task.
    """


class WorkerStopping(BaseException):
    """Raised inside a task whose worker process the pool is stopping (a timeout,
    ``cancel_running``, ``terminate()``, shutdown's stop of a slow start).

    Guarantee: ``finally`` blocks and ``with`` exits run before the worker exits, within the
    executor's ``stop_grace``; SIGKILL follows if the task is still running then.  A
    ``BaseException``, like ``KeyboardInterrupt``, so ``except Exception`` does not swallow
    it.  The task's future has already failed (or been cancelled) when it is raised.
    """


class WorkerCrashedError(BrokenProcessPool):
    """The worker process running this task died (signal, ``os._exit``, segfault, OOM kill).

    Only the task that was running is failed; the slot is respawned and the pool goes on.
    ``slot``, ``pid`` and ``exitcode`` describe the dead worker (a negative exit code is the
    number of the signal that killed it).  When the pid is known, ``__cause__`` says which
    process died and how, in Python 3.15's words (see :func:`abrupt_exit_cause`).
    """

    def __init__(self, message: str, slot: int = -1, pid: int = -1, exitcode: int | None = None):
        super().__init__(message)
        self.slot = slot
        self.pid = pid
        self.exitcode = exitcode
        if pid >= 0:
            self.__cause__ = abrupt_exit_cause(pid, exitcode)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.args[0], self.slot, self.pid, self.exitcode))


def abrupt_exit_cause(pid: int, exitcode: Optional[int]) -> BaseException:
    """The ``__cause__`` of an error raised because worker process ``pid`` died.

    Python 3.15's ``BrokenProcessPool`` carries this cause: a ``_RemoteTraceback`` (the type the
    stdlib uses for what happened in a worker) whose ``tb`` reads "Process {pid} terminated
    abruptly with exit code {exitcode}"; ours carry the same on every Python, so code (and
    tests) written against 3.15 find it.  A negative exit code is minus the killing signal.
    """
    text = f"\n'''\nProcess {pid} terminated abruptly with exit code {exitcode}\n'''"
    return _RemoteTraceback(text)  # type: ignore[arg-type]  # the stub says traceback: it is text


class WorkerInitError(BrokenThreadPool, BrokenProcessPool):
    """A stateful worker's constructor (or the pool ``initializer``) raised.

    The pool is broken, as the stdlib breaks it on a failing initializer; the original
    exception is chained as ``__cause__``.  It is a ``BrokenThreadPool`` *and* a
    ``BrokenProcessPool``, so stdlib ``except`` clauses for either executor catch it.
    """


class DeserializationError(BrokenProcessPool):
    """A task could not be unpickled in the worker, or its result in the parent.

    Only the affected task fails; the cause is chained.  (The stdlib breaks the whole pool
    here, hence the ``BrokenProcessPool`` base.)
    """


class RemoteError(Exception):
    """Stands in for an exception raised in a worker process that could not be sent back.

    ``type_name`` is the qualified name of the original exception type; the message carries
    its text, and ``__cause__`` holds the remote traceback.
    """

    def __init__(self, type_name: str, message: str):
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.type_name, str(self.args[0]).partition(": ")[2]))


class TaskPicklingError(pickle.PicklingError):
    """A task (its function or an argument) could not be pickled to send it to a worker.

    Only that task fails.  For lambdas, closures and functions defined interactively, install
    the ``cloudpickle`` extra (``pip install 'mtasklite[cloudpickle]'``).
    """


class DeferredExceptions(Exception):
    """Raised at the end of a ``"deferred"`` run: ``args`` holds every item's exception.

    They are in input order (also when results were yielded unordered).
    """
