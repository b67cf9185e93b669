"""Interpreter exit and ``fork``, for every pool: one hook each, registered once.

Guarantee: when the interpreter exits, :func:`interpreter_exiting` turns true (under
:data:`EXIT_LOCK`, so a ``submit`` holding that lock either queues its work before the flag
flips or is refused after) and then every pool's exit callback runs, before the interpreter
joins its non-daemon threads, as the stdlib pools' hooks do.  In a child made by ``fork``
the lock is fresh and every pool's fork callback runs: the child never waits for threads,
processes or locks of its parent's pools.
"""

from __future__ import annotations

import os
import threading
from typing import Callable

__all__ = ["EXIT_LOCK", "interpreter_exiting", "on_exit_and_fork"]

_exiting = False
#: held while the exit flag flips, and by a submit that checks it and queues work
EXIT_LOCK = threading.Lock()
_exit_callbacks: list[Callable[[], None]] = []
_fork_callbacks: list[Callable[[], None]] = []


def interpreter_exiting() -> bool:
    """Whether the interpreter has started to exit (pools then take no new work)."""
    return _exiting


def on_exit_and_fork(at_exit: Callable[[], None], in_forked_child: Callable[[], None]) -> None:
    """Register one kind of pool's hooks (once, at import of its module).

    ``at_exit`` runs after the flag is set (latest registered first, as ``atexit`` orders
    them); ``in_forked_child`` runs in a forked child, where it must forget the parent's
    pools without waiting for or locking anything.
    """
    _exit_callbacks.append(at_exit)
    _fork_callbacks.append(in_forked_child)


def _at_exit() -> None:
    global _exiting
    with EXIT_LOCK:
        _exiting = True
    for callback in reversed(_exit_callbacks):
        callback()


def _after_fork_in_child() -> None:
    # Another thread may have held the lock at the fork; it does not exist in the child.
    EXIT_LOCK._at_fork_reinit()  # type: ignore[attr-defined]
    for callback in _fork_callbacks:
        callback()


# Pool threads are daemons (a stuck, abandoned one must not block exit): this hook, run
# before the interpreter joins non-daemon threads, is where pools finish their work.
threading._register_atexit(_at_exit)  # type: ignore[attr-defined]
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
