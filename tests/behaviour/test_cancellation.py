"""Cancelling work: ``Future.cancel()`` (and asyncio cancellation) with ``cancel_running=True``
stops a running task and replaces its worker, a cancel that lands as the result arrives leaves
the pool healthy, and done-callbacks run by ``shutdown(cancel_futures=True)`` may use the
executor.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from concurrent.futures import Future
from typing import Any, Optional

import pytest

from support import files, tasks
from support.executors import FAULT_LIMIT, Guard, returns_within

# --- done-callbacks run by shutdown(cancel_futures=True) ----------------------------------


@pytest.mark.parametrize("kind", ["fork", "threads"])
@pytest.mark.parametrize("action", ["submit", "shutdown", "terminate", "cancel"])
def test_done_callbacks_may_use_the_executor_while_shutdown_cancels(
    guard: Guard, kind: str, action: str
) -> None:
    if action == "terminate" and kind == "threads":
        pytest.skip("thread pools have no terminate()")
    ex = guard.make(kind, 1)
    running = ex.submit(tasks.hang_unless, "blocker", guard.log, guard.release_file)
    assert files.wait_for_lines(guard.log, 1)
    queued = [ex.submit(tasks.square, i) for i in range(4)]
    seen: list[Any] = []

    def on_done(fut: Future[Any]) -> None:
        if not fut.cancelled():
            return
        if action == "submit":  # a retry pattern: resubmit cancelled work
            try:
                ex.submit(tasks.square, 1)
            except RuntimeError as exc:
                seen.append(str(exc))
        elif action == "shutdown":
            ex.shutdown(wait=False)
            seen.append("shut down")
        elif action == "terminate":
            ex.terminate(wait=False)
            seen.append("terminated")
        else:
            seen.append(queued[0].cancel())

    for fut in queued:
        fut.add_done_callback(on_done)
    returned, outcome = returns_within(
        lambda: ex.shutdown(wait=False, cancel_futures=True), FAULT_LIMIT
    )
    assert returned, "shutdown(cancel_futures=True) deadlocked on a done-callback"
    assert outcome is None
    assert all(fut.cancelled() for fut in queued[1:])
    assert len(seen) >= 3, seen
    if action == "submit":
        assert all("cannot schedule new futures after shutdown" in text for text in seen)
    guard.let_go()
    returned, _ = returns_within(ex.shutdown, FAULT_LIMIT)
    assert returned
    assert running.done()


# --- cancel_running: a cancel() that lands as the result arrives --------------------------


@pytest.fixture
def cancel_as_the_result_lands(monkeypatch: pytest.MonkeyPatch) -> list[Future[Any]]:
    """Make the first three futures the dispatcher completes be cancelled by the "caller" just
    before the dispatcher sets them (the interleaving the race produces); returns them."""
    raced: list[Future[Any]] = []
    original_result, original_exception = Future.set_result, Future.set_exception

    def race(fut: Future[Any]) -> None:
        if (
            len(raced) < 3  # the two submits and one imap chunk below
            and threading.current_thread().name.endswith("-dispatcher")
            and fut.running()
        ):
            raced.append(fut)
            assert fut.cancel()

    def set_result(self: Future[Any], result: Any) -> None:
        race(self)
        original_result(self, result)

    def set_exception(self: Future[Any], exception: Optional[BaseException]) -> None:
        race(self)
        original_exception(self, exception)

    monkeypatch.setattr(Future, "set_result", set_result)
    monkeypatch.setattr(Future, "set_exception", set_exception)
    return raced


@pytest.mark.parametrize("kind", ["fork", "spawn"])
def test_cancel_landing_as_the_result_arrives_keeps_the_pool_healthy(
    guard: Guard, kind: str, cancel_as_the_result_lands: list[Future[Any]]
) -> None:
    ex = guard.make(kind, 2, cancel_running=True)
    first = [ex.submit(tasks.square, 1), ex.submit(tasks.fail_on, 3, 3)]
    assert files.wait_for(lambda: all(f.done() for f in first), FAULT_LIMIT)
    chunked = ex.imap(tasks.square, range(6), chunksize=3)
    with pytest.raises(cf.CancelledError):
        list(chunked)
    assert len(cancel_as_the_result_lands) == 3
    assert all(f.cancelled() for f in cancel_as_the_result_lands)
    # the dispatcher survived: everything afterwards works
    assert [ex.submit(tasks.square, i).result(FAULT_LIMIT) for i in range(4)] == [0, 1, 4, 9]
    assert list(ex.imap(tasks.square, range(20), chunksize=4)) == [x * x for x in range(20)]
    ex.shutdown()


@pytest.mark.timeout(30)
def test_cancelling_running_asyncio_tasks_in_a_loop_never_breaks_the_pool(guard: Guard) -> None:
    import asyncio

    ex = guard.make("fork", 2, cancel_running=True)

    async def churn() -> int:
        loop = asyncio.get_running_loop()
        rounds = 0
        deadline = time.monotonic() + 2.0  # a bounded stress: the race is timing-dependent
        while time.monotonic() < deadline:
            pending = [loop.run_in_executor(ex, tasks.square, i) for i in range(4)]
            await asyncio.sleep(0)  # sleep-ok: yields to the loop once, no waiting
            for task in pending[::2]:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            rounds += 1
        return rounds

    assert asyncio.run(churn()) > 0
    assert ex.submit(tasks.square, 7).result(FAULT_LIMIT) == 49
    ex.shutdown()
