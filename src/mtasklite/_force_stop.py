"""Python 3.14's ``terminate_workers()`` / ``kill_workers()``, for our process pool on every
Python, as a mixin over the pool's own stop path."""

from __future__ import annotations

__all__ = ["KILL", "TERMINATE", "ForceStopMixin"]

#: ``_force_shutdown`` operations: the name of the ``Process`` method that signals a worker
#: (the stdlib's operation names, 3.14)
TERMINATE = "terminate"
KILL = "kill"


class ForceStopMixin:
    """``terminate_workers()`` and ``kill_workers()`` with 3.14's contract, on every Python.

    The pool provides ``_stop_workers(operation, wait)``: abort all work (queued futures
    cancelled, running ones failed with ``BrokenProcessPool``), mark the pool shut down and
    call ``operation`` on every live worker process, the deaths being taken for the stop
    rather than for crashes (nothing is respawned).
    """

    def _stop_workers(self, operation: str, wait: bool) -> None:
        raise NotImplementedError

    def terminate_workers(self) -> None:
        """Stop every worker now with SIGTERM (SIGKILL after ``stop_grace``), without waiting.

        Queued tasks are cancelled, running ones fail with ``BrokenProcessPool``, no worker is
        replaced, and ``submit`` raises ``RuntimeError`` afterwards.  Nothing is signalled if
        no worker ever started.
        """
        self._force_shutdown(operation=TERMINATE)

    def kill_workers(self) -> None:
        """As :meth:`terminate_workers`, but the workers get SIGKILL at once."""
        self._force_shutdown(operation=KILL)

    def _force_shutdown(self, operation: str) -> None:
        # The stdlib's name and contract (3.14): one entry point, unknown operations refused.
        if operation not in (TERMINATE, KILL):
            raise ValueError(f"Unsupported operation: {operation!r}")
        self._stop_workers(operation, wait=False)
