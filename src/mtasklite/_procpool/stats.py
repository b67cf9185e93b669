"""Per-slot counters behind ``ex.worker_stats()``.

Guarantee: counting costs no message: the dispatcher adds to a slot's counters from what it
already handles (each Results batch, each overrun, each death, each start), and the resident
memory comes from the progress cell or, where the worker does not measure it, from reading
``/proc`` at the moment of the call.  Only the dispatcher thread writes the counters; a call
from another thread reads a snapshot that may be one batch behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional


@dataclass(frozen=True)
class WorkerStats:
    """One worker slot of a process pool, as ``ex.worker_stats()`` reports it."""

    index: int  #: the slot (``worker_index()`` inside its worker)
    pid: Optional[int]  #: the current process, ``None`` while the slot has none
    tasks_completed: int  #: items whose outcome (result or exception) came back
    failures: int  #: of those, items that raised (timeouts and crashes are counted apart)
    timeouts: int  #: items stopped at their ``task_timeout``
    crashes: int  #: deaths the pool did not ask for (signal, ``os._exit``, OOM kill, ...)
    restarts: int  #: processes started in this slot after its first
    busy_seconds: float  #: time spent in task functions, as the worker measured it
    resident_bytes: Optional[int]  #: the process's resident memory, where it can be read


class SlotCounters:
    """What the dispatcher counts for one slot (see :class:`WorkerStats`)."""

    __slots__ = ("busy_seconds", "crashes", "failures", "starts", "tasks_completed", "timeouts")

    def __init__(self) -> None:
        self.tasks_completed = 0
        self.failures = 0
        self.timeouts = 0
        self.crashes = 0
        self.starts = 0
        self.busy_seconds = 0.0

    def add_results(
        self, kept: int, errors: Optional[Mapping[int, object]], elapsed: float
    ) -> None:
        """A batch of results came back, of which the first ``kept`` count."""
        self.tasks_completed += kept
        if errors:
            self.failures += sum(1 for index in errors if index < kept)
        self.busy_seconds += elapsed

    def snapshot(self, index: int, pid: Optional[int], resident: Optional[int]) -> WorkerStats:
        return WorkerStats(
            index=index,
            pid=pid,
            tasks_completed=self.tasks_completed,
            failures=self.failures,
            timeouts=self.timeouts,
            crashes=self.crashes,
            restarts=max(0, self.starts - 1),
            busy_seconds=self.busy_seconds,
            resident_bytes=resident,
        )
