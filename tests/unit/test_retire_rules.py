"""Lifecycle decisions without starting a pool: when a worker process retires
(``max_tasks_per_child``, ``max_memory_per_child``), and how its memory is read.

What users rely on: a worker is replaced once it has run its task budget or holds more
resident memory than the limit after a task, never while under both, and never because its
memory could not be read.
"""

from __future__ import annotations

import os
from typing import Optional

import pytest

from mtasklite._procpool import blame, memory


@pytest.mark.parametrize(
    ("done", "max_tasks", "resident", "max_memory", "expected"),
    [
        (3, None, 5e9, None, False),  # no limits
        (3, 4, 0.0, None, False),  # under the task budget
        (4, 4, 0.0, None, True),  # budget reached
        (1, None, 200.0, 100, True),  # above the memory limit
        (1, None, 100.0, 100, False),  # at the limit is not above it
        (1, None, 0.0, 100, False),  # memory unknown: never a reason to retire
        (1, 9, 200.0, 100, True),  # either limit retires
    ],
)
def test_a_worker_retires_at_its_task_budget_or_above_its_memory_limit(
    done: int, max_tasks: Optional[int], resident: float, max_memory: Optional[int], expected: bool
) -> None:
    assert blame.retires(done, max_tasks, resident, max_memory) is expected


def test_resident_memory_of_this_process_is_read_and_grows_with_what_it_holds() -> None:
    before = memory.resident_bytes()
    assert before > 1 << 20, "a Python process holds more than a MiB"
    held = b"\x01" * (64 << 20)  # touched pages: resident
    after = memory.resident_bytes()
    assert after - before > 32 << 20
    del held


def test_resident_memory_of_another_process_is_read_or_zero() -> None:
    assert memory.resident_bytes(str(os.getpid())) > 1 << 20
    assert memory.resident_bytes("no-such-process") == 0
