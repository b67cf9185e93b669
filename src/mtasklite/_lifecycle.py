"""One executor life-cycle for every mtasklite pool: accepting, then broken or shut down.

Guarantee: once an executor is broken or shut down, or the interpreter is exiting, it takes
no new work, and the refusal reads the same on every backend: a broken pool raises its own
breakage (what broke it matters more than the shutdown that may have followed), then a shut
down one ``RuntimeError`` with the stdlib's words, then one refused for the interpreter's
exit.  The decision is :func:`refusal`, a pure function; :class:`ExecutorLifecycle` applies
it to an executor that says where its state lives.
"""

from __future__ import annotations

import enum
from typing import Optional

from ._exit_hooks import interpreter_exiting

__all__ = [
    "EXIT_MESSAGE",
    "SHUTDOWN_MESSAGE",
    "WAIT_AFTER_SHUTDOWN_MESSAGE",
    "ExecutorLifecycle",
    "Refusal",
    "refusal",
]

#: what submitting to a shut-down pool raises: the stdlib's words (code matches on them), and
#: the usual cause when it surfaces from a result iterator returned out of its ``with`` block
SHUTDOWN_MESSAGE = (
    "cannot schedule new futures after shutdown (a lazy imap result, or map with buffersize, "
    "must be consumed before its executor shuts down: iterate it inside the with block)"
)
#: what submitting raises once the interpreter exits (the stdlib's words)
EXIT_MESSAGE = "cannot schedule new futures after interpreter shutdown"
#: what ``wait_ready()`` raises on a shut-down pool
WAIT_AFTER_SHUTDOWN_MESSAGE = "cannot wait for workers after shutdown"


class Refusal(enum.Enum):
    """Why an executor takes no new work."""

    BROKEN = "broken"
    SHUT_DOWN = "shut down"
    EXITING = "interpreter exiting"


def refusal(broken: bool, shut_down: bool, exiting: bool) -> Optional[Refusal]:
    """Why new work is refused, or ``None`` when it is accepted (breakage first, see the
    module docstring)."""
    if broken:
        return Refusal.BROKEN
    if shut_down:
        return Refusal.SHUT_DOWN
    if exiting:
        return Refusal.EXITING
    return None


class ExecutorLifecycle:
    """``_accepting()`` and ``_check_accepting()``, written once.

    The executor provides three methods saying where its state lives: ``_is_broken()``,
    ``_is_shut_down()`` and ``_broken_error()`` (the exception a broken pool raises, a fresh
    one per call: it is raised in many threads).  Call ``_check_accepting`` under the lock
    that guards those flags, together with it queueing the work.
    """

    def _is_broken(self) -> bool:
        raise NotImplementedError

    def _is_shut_down(self) -> bool:
        raise NotImplementedError

    def _broken_error(self) -> BaseException:
        raise NotImplementedError

    def _refusal(self) -> Optional[Refusal]:
        return refusal(self._is_broken(), self._is_shut_down(), interpreter_exiting())

    def _accepting(self) -> bool:
        """Whether ``submit`` would take new work now."""
        return self._refusal() is None

    def _check_accepting(self, after_shutdown: str = SHUTDOWN_MESSAGE) -> None:
        """Raise what ``submit`` raises when the pool takes no new work (``after_shutdown``:
        the message for a shut-down pool, e.g. :data:`WAIT_AFTER_SHUTDOWN_MESSAGE`)."""
        why = self._refusal()
        if why is Refusal.BROKEN:
            raise self._broken_error()
        if why is Refusal.SHUT_DOWN:
            raise RuntimeError(after_shutdown)
        if why is Refusal.EXITING:
            raise RuntimeError(EXIT_MESSAGE)
