"""``submit`` on an idle process pool hands the task straight to a worker from the calling
thread (no dispatcher wakeup: a quarter of the round trip).  What users rely on stays true
on that path: every future resolves with its own result, from any number of threads and
from done-callbacks (which run on the dispatcher's thread), a crash there fails only its
task, and timed tasks still go through the dispatcher, which watches their deadlines.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import signal
import threading
from typing import Any, Callable, Iterator

import pytest

import mtasklite as mt
from support import tasks
from support.executors import Guard, returns_within

LIMIT = 10.0


@pytest.fixture
def pool(guard: Guard, ctx: Any) -> Callable[..., mt.StatefulProcessPoolExecutor]:
    """Process pools of each start method, ready before the test submits (stopped by
    ``guard`` at teardown; the leak guard checks that nothing outlives them)."""

    def make(workers: int = 1, **kwargs: Any) -> mt.StatefulProcessPoolExecutor:
        ex: mt.StatefulProcessPoolExecutor = guard.make(ctx.get_start_method(), workers, **kwargs)
        ex.wait_ready(LIMIT)
        return ex

    return make


class DispatcherProbe:
    """Internal hooks: whether the dispatcher is asleep in its wait, and how many bytes were
    written to wake it (a system call each; a wakeup while it is awake writes nothing)."""

    def __init__(self, ex: mt.StatefulProcessPoolExecutor, monkeypatch: pytest.MonkeyPatch):
        from mtasklite._procpool import waiting

        dispatcher = ex._dispatcher
        wake, real_os, real_wait = dispatcher.control.wake, waiting.os, dispatcher.poller.wait
        self.writes = 0
        self.asleep = threading.Event()
        probe = self

        class CountingOs:
            def __getattr__(self, name: str) -> Any:
                return getattr(real_os, name)

            def write(self, fd: int, data: bytes) -> int:
                if fd == wake.write_fd:
                    probe.writes += 1
                return real_os.write(fd, data)

        def wait(objects: Any, timeout: Any = None) -> Any:
            probe.asleep.set()  # the hand-off lock is free from here until the wait returns
            try:
                return real_wait(objects, timeout)
            finally:
                probe.asleep.clear()

        monkeypatch.setattr(waiting, "os", CountingOs())
        monkeypatch.setattr(dispatcher.poller, "wait", wait)


def test_a_submit_to_an_idle_worker_is_sent_without_waking_the_dispatcher(
    pool: Callable[..., mt.StatefulProcessPoolExecutor], monkeypatch: pytest.MonkeyPatch
) -> None:
    ex = pool(1)
    probe = DispatcherProbe(ex, monkeypatch)
    for x in range(30):
        assert probe.asleep.wait(LIMIT)
        assert ex.submit(tasks.square, x).result(LIMIT) == x * x
    assert probe.writes == 0, "each task went straight to the idle worker"
    assert probe.asleep.wait(LIMIT)
    assert ex.submit_with_timeout(LIMIT, tasks.square, 7).result(LIMIT) == 49
    assert probe.writes == 1, "a timed task is queued for the dispatcher, which times it"
    (stats,) = ex.worker_stats()
    assert stats.tasks_completed == 31


def test_submits_from_threads_and_done_callbacks_all_resolve_with_their_own_results(
    pool: Callable[..., mt.StatefulProcessPoolExecutor],
) -> None:
    ex = pool(2)
    follow_ups: list[concurrent.futures.Future[int]] = []
    lock = threading.Lock()

    def resubmit(future: concurrent.futures.Future[int]) -> None:
        # Runs on the dispatcher's thread: a submit from there must queue, not deadlock.
        if future.result() % 7 == 0:
            with lock:
                follow_ups.append(ex.submit(tasks.add, future.result(), 1))

    def submitter(offset: int) -> list[int]:
        futures = [ex.submit(tasks.add, offset, x) for x in range(150)]
        for f in futures:
            f.add_done_callback(resubmit)
        return [f.result(LIMIT) for f in futures]

    with concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="mt-handoff") as callers:
        results = list(callers.map(submitter, [0, 1000, 2000, 3000]))
    for offset, values in zip([0, 1000, 2000, 3000], results):
        assert values == [offset + x for x in range(150)]
    with lock:
        expected = sorted(v + 1 for values in results for v in values if v % 7 == 0)
        assert sorted(f.result(LIMIT) for f in follow_ups) == expected


def test_a_crash_in_a_handed_off_task_fails_only_that_task(
    pool: Callable[..., mt.StatefulProcessPoolExecutor], monkeypatch: pytest.MonkeyPatch
) -> None:
    ex = pool(1)
    probe = DispatcherProbe(ex, monkeypatch)
    assert probe.asleep.wait(LIMIT)
    crashed = ex.submit(tasks.crash_on, 0, 0, "sigkill")
    assert isinstance(crashed.exception(LIMIT), mt.WorkerCrashedError)
    assert probe.writes == 0, "the crashed task was handed off, not queued"
    assert ex.submit(tasks.square, 5).result(LIMIT) == 25, "its replacement serves the next one"
    (stats,) = ex.worker_stats()
    assert (stats.crashes, stats.restarts) == (1, 1)


@pytest.mark.parametrize("sent", [True, False], ids=["after-the-send", "before-the-send"])
def test_a_ctrl_c_in_the_middle_of_a_hand_off_costs_only_that_worker(
    pool: Callable[..., mt.StatefulProcessPoolExecutor],
    monkeypatch: pytest.MonkeyPatch,
    sent: bool,
) -> None:
    ex = pool(1)
    probe = DispatcherProbe(ex, monkeypatch)
    courier = ex._dispatcher.courier
    real_send = courier._send_piece

    def interrupted_send(*args: Any) -> Any:
        # Internal hook: the KeyboardInterrupt a Ctrl-C raises in the submitting thread.
        monkeypatch.setattr(courier, "_send_piece", real_send)
        if sent:
            real_send(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(courier, "_send_piece", interrupted_send)
    assert probe.asleep.wait(LIMIT)
    with pytest.raises(KeyboardInterrupt):
        ex.submit(tasks.square, 4)
    # The worker that may hold a half-known task is replaced; nothing else is lost.
    assert [ex.submit(tasks.square, x).result(LIMIT) for x in range(5)] == [0, 1, 4, 9, 16]
    (stats,) = ex.worker_stats()
    assert (stats.crashes, stats.restarts) == (0, 1)


class CtrlCWhilePickled:
    """An argument whose pickling, in the submitting process, meets the user's Ctrl-C."""

    def __reduce__(self) -> Any:
        if multiprocessing.current_process().name == "MainProcess":
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10_000):  # Python runs the SIGINT handler at one of these
                pass
        return (CtrlCWhilePickled, ())


@pytest.fixture
def ctrl_c_raises() -> Iterator[None]:
    """Python's own SIGINT handler, even where the test runner inherited SIGINT ignored (a
    shell's background job): the test is about what our pool does with the KeyboardInterrupt."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("ctrl_c_raises")
def test_a_ctrl_c_while_the_argument_is_pickled_reaches_the_caller(
    pool: Callable[..., mt.StatefulProcessPoolExecutor], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert threading.current_thread() is threading.main_thread()  # where Ctrl-C lands
    ex = pool(1)
    probe = DispatcherProbe(ex, monkeypatch)
    assert probe.asleep.wait(LIMIT)
    with pytest.raises(KeyboardInterrupt):
        ex.submit(tasks.identity, CtrlCWhilePickled())  # not taken as "unpicklable"
    assert [ex.submit(tasks.square, x).result(LIMIT) for x in range(3)] == [0, 1, 4]


class SubmitsWhilePickled:
    """An argument whose pickling uses the pool it is being sent through."""

    pool: Any = None

    def __reduce__(self) -> Any:
        if multiprocessing.current_process().name == "MainProcess":
            type(self).pool.worker_stats()
            type(self).pool.submit(tasks.square, 2)
        return (SubmitsWhilePickled, ())


def test_pickling_code_may_call_back_into_the_pool(
    pool: Callable[..., mt.StatefulProcessPoolExecutor], monkeypatch: pytest.MonkeyPatch
) -> None:
    ex = pool(2)
    probe = DispatcherProbe(ex, monkeypatch)
    monkeypatch.setattr(SubmitsWhilePickled, "pool", ex)
    assert probe.asleep.wait(LIMIT)
    done, value = returns_within(
        lambda: ex.submit(tasks.identity, SubmitsWhilePickled()).result(LIMIT), LIMIT
    )
    assert done, "the submitting thread deadlocked on the pool's own lock"
    assert isinstance(value, SubmitsWhilePickled)


def test_wait_ready_wakes_the_dispatcher_for_the_workers_it_starts(
    guard: Guard, monkeypatch: pytest.MonkeyPatch
) -> None:
    ex = guard.make("spawn", 2)  # spawn starts workers on demand: one per submit
    assert ex.submit(tasks.square, 3).result(LIMIT) == 9
    probe = DispatcherProbe(ex, monkeypatch)
    assert probe.asleep.wait(LIMIT)
    ex.wait_ready(LIMIT)
    assert probe.writes >= 1, "the sleeping dispatcher was not told of the new worker"
