"""Per-worker counters behind ``ex.worker_stats()``, for every executor.

Guarantee: counting costs no message.  A process pool's dispatcher adds to a slot's counters
from what it already handles (each Results batch, each overrun, each death, each start); a
thread pool's worker thread adds to its own counters after each task; a Dask worker keeps
its counters in its own process until ``worker_stats()`` asks for them (one round trip per
call, none per task).  Each counter has one writer; a reader on another thread gets a
snapshot that may be one task or batch behind.

``WorkerStats`` is written out rather than a dataclass: importing ``dataclasses`` costs
several milliseconds that a one-shot script would pay on first use of a pool.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional

from ._chunk_run import ChunkResult

__all__ = ["SlotCounters", "Tally", "WorkerStats"]


_FIELDS = (
    "index",
    "pid",
    "tasks_completed",
    "failures",
    "timeouts",
    "crashes",
    "restarts",
    "busy_seconds",
    "resident_bytes",
)


class WorkerStats:
    """One worker of an executor, as ``ex.worker_stats()`` reports it (read-only).

    ``None`` marks a field that does not apply to the backend: a thread has no process of
    its own (``pid`` and ``resident_bytes``); Dask restarts its workers itself, so a Dask
    worker's ``crashes`` and ``restarts`` are unknown to the executor.
    """

    __slots__ = _FIELDS

    index: int  #: the slot (``worker_index()`` inside its worker); Dask: the worker's rank
    pid: Optional[int]  #: the current process, ``None`` while the slot has none, or a thread
    tasks_completed: int  #: items whose outcome (result or exception) came back
    failures: int  #: of those, items that raised (timeouts and crashes are counted apart)
    timeouts: int  #: items stopped at their ``task_timeout``
    crashes: Optional[int]  #: deaths the pool did not ask for (signal, ``os._exit``, OOM kill)
    restarts: Optional[int]  #: processes (threads) started in this slot after its first
    busy_seconds: float  #: time spent in task functions, as the worker measured it
    resident_bytes: Optional[int]  #: the process's resident memory, where it can be read

    def __init__(
        self,
        *,
        index: int,
        pid: Optional[int],
        tasks_completed: int,
        failures: int,
        timeouts: int,
        crashes: Optional[int],
        restarts: Optional[int],
        busy_seconds: float,
        resident_bytes: Optional[int],
    ):
        values = locals()
        for name in _FIELDS:
            object.__setattr__(self, name, values[name])

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"WorkerStats is read-only (tried to set {name!r})")

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in _FIELDS)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WorkerStats):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in _FIELDS)
        return f"WorkerStats({fields})"

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only __init__: rebuild through a helper (Dask ships these between processes).
        return (_rebuild, self._values())


def _rebuild(*values: object) -> WorkerStats:
    return WorkerStats(**dict(zip(_FIELDS, values)))  # type: ignore[arg-type]


class SlotCounters:
    """What is counted for one worker slot (see :class:`WorkerStats`)."""

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

    def add_one(self, failed: bool, elapsed: float) -> None:
        """One item ran (``failed``: it raised)."""
        self.tasks_completed += 1
        self.failures += failed
        self.busy_seconds += elapsed

    def add_outcome(self, result: Any, failed: bool, elapsed: float) -> None:
        """A thread or Dask task ended: a chunk's or a drainer's report counts its items, any
        other result counts one item."""
        kind = type(result)  # exact types: a user's subclass or tuple is one item
        if kind is ChunkResult:
            self.add_results(len(result.values), result.errors, result.elapsed)
        elif kind is Tally:
            self.tasks_completed += result.items
            self.failures += result.failures
            self.busy_seconds += result.elapsed
        else:
            self.add_one(failed, elapsed)

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


class Tally(NamedTuple):
    """What a thread ``imap`` drainer ran: a drainer is one pool task serving many items."""

    items: int
    failures: int
    elapsed: float
