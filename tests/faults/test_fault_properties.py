"""Property test: random interleavings of submit, cancel, imap with early close, timed tasks
and shutdown on a small pool, checked after every step.

After each step every tracked future is pending or running, or resolved consistently: a
plain task has its right result, a timed task (which blocks until the end of the example)
failed with ``TaskTimeoutError``, and a cancelled future was cancelled by the test or by
``shutdown(cancel_futures=True)``.  At teardown everything is resolved and no pool thread or
worker process is left.  The thread-pool machine runs most examples; a process-pool (fork)
variant runs a few.
"""

from __future__ import annotations

import itertools
import multiprocessing
import threading
import time
from typing import Any, Optional

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import mtasklite as mt
from support import processes, tasks

#: upper bound for anything at teardown (never reached when things work)
LIMIT = 10.0
_names = itertools.count()


class Tracked:
    """A future the machine submitted, with what it must end as."""

    __slots__ = ("cancel_requested", "expected", "future", "timed")

    def __init__(self, future: Any, expected: Any = None, timed: bool = False):
        self.future = future
        self.expected = expected
        self.timed = timed
        self.cancel_requested = False


class ThreadPoolMachine(RuleBasedStateMachine):
    kind = "threads"

    def __init__(self) -> None:
        super().__init__()
        self.pids_before = set(processes.child_processes())
        self.threads_before = processes.pool_threads()
        self.release = threading.Event()  # never set before teardown: timed tasks time out
        self.ex: Any = None
        self.tracked: list[Tracked] = []
        self.shut = False
        self.shut_cancelled = False

    @initialize(workers=st.integers(1, 2))
    def start_pool(self, workers: int) -> None:
        self.ex = self.make_executor(workers)

    def make_executor(self, workers: int) -> Any:
        return mt.StatefulThreadPoolExecutor(workers, thread_name_prefix=f"mt-prop-{next(_names)}")

    def blocking_task(self) -> tuple[Any, tuple[Any, ...]]:
        return tasks.wait_event, ("blocked", self.release)

    # -- rules --------------------------------------------------------------------------------

    @rule(x=st.integers(-1000, 1000))
    def submit(self, x: int) -> None:
        if self.shut:
            with pytest.raises(RuntimeError, match="after shutdown"):
                self.ex.submit(tasks.square, x)
            return
        self.tracked.append(Tracked(self.ex.submit(tasks.square, x), x * x))

    @rule(timeout=st.sampled_from([0.05, 0.1, 0.2]))
    def submit_timed(self, timeout: float) -> None:
        fn, args = self.blocking_task()
        if self.shut:
            with pytest.raises(RuntimeError, match="after shutdown"):
                self.ex.submit_with_timeout(timeout, fn, *args)
            return
        self.tracked.append(Tracked(self.ex.submit_with_timeout(timeout, fn, *args), timed=True))

    @precondition(lambda self: self.tracked)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        tracked = data.draw(st.sampled_from(self.tracked))
        if tracked.future.cancel():
            tracked.cancel_requested = True
            assert tracked.future.cancelled()
        else:  # only a running or finished future refuses
            assert tracked.future.running() or tracked.future.done()

    @rule(
        n=st.integers(0, 30),
        take=st.integers(0, 10),
        chunksize=st.sampled_from([1, 3, None]),
        ordered=st.booleans(),
    )
    def imap_then_close(self, n: int, take: int, chunksize: Optional[int], ordered: bool) -> None:
        method = self.ex.imap if ordered else self.ex.imap_unordered
        it = method(tasks.square, range(n), chunksize=chunksize, buffersize=4)
        try:
            if self.shut and n and take:
                with pytest.raises(RuntimeError, match="after shutdown"):
                    next(it)
                return
            got = list(itertools.islice(it, take))
        finally:
            it.close()
        if ordered:
            assert got == [x * x for x in range(min(n, take))]
        else:
            assert len(got) == min(n, take)
            assert set(got) <= {x * x for x in range(n)}

    @rule(wait=st.booleans(), cancel_futures=st.booleans())
    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        self.ex.shutdown(wait=wait, cancel_futures=cancel_futures)
        self.shut = True
        self.shut_cancelled |= cancel_futures
        if wait:  # the stdlib contract: every pending future is done when it returns
            pending = [t.future for t in self.tracked if not t.future.done()]
            assert not pending, f"shutdown(wait=True) returned with pending futures: {pending}"

    # -- checks -------------------------------------------------------------------------------

    @invariant()
    def futures_are_consistent(self) -> None:
        for tracked in self.tracked:
            fut = tracked.future
            if not fut.done():
                continue  # pending or running
            if fut.cancelled():
                assert tracked.cancel_requested or self.shut_cancelled, "cancelled by nobody"
            elif tracked.timed:
                assert isinstance(fut.exception(), mt.TaskTimeoutError), fut.exception()
            else:
                assert fut.result() == tracked.expected

    def teardown(self) -> None:
        if self.ex is None:
            return
        try:
            start = time.monotonic()
            self.ex.shutdown(wait=True)
            assert time.monotonic() - start < LIMIT
            pending = [t.future for t in self.tracked if not t.future.done()]
            assert not pending, f"unresolved at teardown: {pending}"
            self.futures_are_consistent()
            processes.assert_gone(
                set(processes.child_processes()) - self.pids_before,
                processes.pool_threads() - self.threads_before,
                timeout=LIMIT,
            )
        finally:
            self.release.set()
            if isinstance(self.ex, mt.StatefulProcessPoolExecutor):
                self.ex.terminate()


class ProcessPoolMachine(ThreadPoolMachine):
    kind = "fork"

    def make_executor(self, workers: int) -> Any:
        return mt.StatefulProcessPoolExecutor(workers, multiprocessing.get_context("fork"))

    def blocking_task(self) -> tuple[Any, tuple[Any, ...]]:
        return tasks.log_then_hang, ("blocked", "/dev/null")


ThreadPoolMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
ProcessPoolMachine.TestCase.settings = settings(
    max_examples=8,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

TestThreadPoolMachine = pytest.mark.timeout(120)(ThreadPoolMachine.TestCase)
TestProcessPoolMachine = pytest.mark.timeout(120)(ProcessPoolMachine.TestCase)
