"""Shared fixtures for the mtasklite test suite.

Conventions used by the tests:

* Pools get a ``thread_name_prefix`` starting with ``"mt-"`` (see :data:`POOL_THREAD_PREFIXES`)
  so the leak check below can tell their threads from unrelated ones (tqdm's monitor, ...).
* Nothing sleeps to synchronise: tasks that must block wait on an ``Event`` the test sets.
  The :func:`release` fixture is such an event; it is set at teardown, so a deliberately stuck
  (abandoned) worker thread can always finish before the leak check runs.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any, Callable, Iterator

import pytest

try:
    # Importing Dask registers tblib's pickling for every exception class that exists by then,
    # which makes the helpers' deliberately unsendable exceptions sendable.  Import it before
    # any test module defines them, so that never depends on which test file is collected
    # first (or whether a Dask test runs at all).
    import distributed  # noqa: F401
except ImportError:  # the dask extra is optional
    pass

#: Name prefixes of threads that belong to pools under test.  Stdlib executors created without
#: a prefix name their threads ``ThreadPoolExecutor-<n>_<i>``.
POOL_THREAD_PREFIXES: tuple[str, ...] = ("mt-", "ThreadPoolExecutor-")

#: How long teardown waits for pool threads to wind down before calling them leaked.
THREAD_EXIT_DEADLINE = 10.0

#: A generous upper bound for any single blocking wait inside a test (never reached when the
#: code under test works; it only turns a would-be hang into a failure).
BLOCK_LIMIT = 10.0

_prefix_counter = itertools.count()

#: tests/conformance holds the stdlib-suite runner, not pytest tests
collect_ignore = ["conformance"]


def _is_pool_thread(thread: threading.Thread) -> bool:
    return thread.name.startswith(POOL_THREAD_PREFIXES)


def _join_with_deadline(threads: list[threading.Thread], deadline: float) -> None:
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


@pytest.fixture(autouse=True)
def no_leaked_pool_threads() -> Iterator[None]:
    """Fail a test that leaves behind a pool thread it started (workers, watchdogs, ...).

    Threads alive before the test are ignored.  New ones get until a deadline to exit; the
    list is recomputed each round because a pool may start a thread while others wind down.
    """
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + THREAD_EXIT_DEADLINE
    while True:
        leftover = [
            t
            for t in threading.enumerate()
            if t not in before and t.is_alive() and _is_pool_thread(t)
        ]
        if not leftover or time.monotonic() >= deadline:
            break
        _join_with_deadline(leftover, deadline)
    assert not leftover, "pool threads survived the test: " + ", ".join(
        f"{t.name} (daemon={t.daemon})" for t in leftover
    )


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A unique ``thread_name_prefix`` for this test's pool (covered by the leak check)."""
    return f"mt-{next(_prefix_counter)}-{request.node.name[:40]}"


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """An event that blocked tasks wait on; always set at teardown."""
    event = threading.Event()
    yield event
    event.set()


class CountingIterator:
    """Wraps an iterable and counts how many items were pulled from it (by any thread)."""

    def __init__(self, iterable: Any):
        self._it = iter(iterable)
        self.pulled = 0
        self._lock = threading.Lock()

    def __iter__(self) -> CountingIterator:
        return self

    def __next__(self) -> Any:
        item = next(self._it)
        with self._lock:
            self.pulled += 1
        return item


@pytest.fixture
def counting() -> Callable[[Any], CountingIterator]:
    """Factory: ``counting(iterable)`` -> an unsized iterator with a ``pulled`` counter."""
    return CountingIterator
