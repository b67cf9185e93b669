"""Soak: a million tiny tasks through a process pool's imap, watching the parent's memory and
file descriptors.  Deselected by default; run with
``python -m pytest -m slow tests/soak/test_soak.py``.
"""

from __future__ import annotations

import gc
import multiprocessing
import time
from typing import Optional

import pytest

import mtasklite as mt
from support import processes, tasks
from support.processes import open_fds

TOTAL = 1_000_000
WARMUP = 100_000
#: parent RSS after the warm-up and late in the run may differ by less than this: a full
#: window of adaptive chunks (8 x 16,384 items and their results, about 5 MiB) may be held
#: at one point and not the other, while a leak of 10 bytes per task would add 9 MiB
RSS_SLACK = 8 * 2**20


def rss_bytes() -> int:
    """The resident set size of this process, from /proc (VmRSS)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "chunksize",
    [
        None,  # the default: adaptive chunks, a few hundred pieces of work
        10,  # 100,000 pieces: per-task bookkeeping (futures, jobs, messages) must not pile up
    ],
)
def test_a_million_tiny_tasks_do_not_grow_the_parent(chunksize: Optional[int]) -> None:
    children_before = set(processes.child_processes())
    threads_before = processes.pool_threads()
    fds_before = open_fds()
    ex = mt.StatefulProcessPoolExecutor(2, multiprocessing.get_context("fork"))
    start = time.monotonic()
    total = 0
    count = 0
    rss_warm = fds_warm = rss_late = 0
    with ex:
        for value in ex.imap(tasks.square, range(TOTAL), chunksize=chunksize):
            total += value
            count += 1
            if count == WARMUP:
                gc.collect()
                rss_warm, fds_warm = rss_bytes(), open_fds()
            elif count == TOTAL - WARMUP:  # still in steady state: a full window in flight
                gc.collect()
                rss_late = rss_bytes()
        gc.collect()
        rss_end, fds_end = rss_bytes(), open_fds()
    elapsed = time.monotonic() - start
    assert count == TOTAL
    assert total == sum(x * x for x in range(TOTAL))
    growth = (rss_end - rss_warm) / rss_warm
    print(
        f"\n{TOTAL} tasks (chunksize={chunksize}) in {elapsed:.1f} s; parent RSS "
        f"{rss_warm / 2**20:.1f} MiB after {WARMUP}, {rss_late / 2**20:.1f} MiB after "
        f"{TOTAL - WARMUP}, {rss_end / 2**20:.1f} MiB at the end ({growth:+.2%}); fds "
        f"{fds_before} before, {fds_warm} after {WARMUP}, {fds_end} at the end"
    )
    # Both points have a window of chunks in flight, though not always equally full (at the
    # very end nothing is in flight, so RSS is lower there; it must not be higher).
    steady = rss_late - rss_warm
    assert abs(steady) < RSS_SLACK, f"parent RSS changed by {steady / 2**20:+.1f} MiB"
    assert rss_end <= rss_warm + RSS_SLACK, f"parent RSS grew by {growth:+.2%}"
    assert fds_end <= fds_warm, f"file descriptors grew from {fds_warm} to {fds_end}"
    processes.assert_gone(
        set(processes.child_processes()) - children_before,
        processes.pool_threads() - threads_before,
        timeout=10,
    )
