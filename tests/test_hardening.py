"""Regressions from the adversarial hunt (issue 21): hangs, a pool-breaking race, work that ran
twice, chunking that never adapted, a misleading message.

Process tests run under ``fork``, ``spawn`` and ``forkserver`` where the start method matters;
each checks what a user sees (a result, the right exception, a pool that keeps working, a call
that returns in time) and leaves no worker behind (the ``guard`` fixture of the fault suite).
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

import mtasklite as mt
import support
from mtasklite._procpool.blame import describe_start_death, starting_death_is_a_crash
from mtasklite.processes import pqdm as process_pqdm
from support import files, processes, specs, tasks
from support.executors import FAULT_LIMIT, PROCESS_KINDS, Guard

pytestmark = pytest.mark.timeout(60)


def _returns_within(call: Callable[[], Any], seconds: float) -> tuple[bool, Any]:
    """Run ``call`` in a thread; whether it returned within ``seconds``, and what it returned
    (or raised).  A deadlocked call is left behind as a daemon thread instead of hanging."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return (not thread.is_alive(), outcome[0] if outcome else None)


# --- 1. a task that raises StopIteration -----------------------------------------------------


LINES = ["alpha beta", "gamma", "", "delta epsilon", "", "zeta"] * 3


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", PROCESS_KINDS)
def test_stop_iteration_from_a_task_fails_exactly_that_item(guard: Guard, kind: str) -> None:
    ex = guard.make(kind)
    # pqdm's way: every item's outcome in place, the failing ones as their exception
    outcomes = list(
        process_pqdm(LINES, tasks.first_word, n_jobs=2, mp_context=_ctx(kind), chunk_size=6)
    )
    assert len(outcomes) == len(LINES)
    for line, outcome in zip(LINES, outcomes):
        if line:
            assert outcome == line.split()[0]
        else:
            assert isinstance(outcome, StopIteration), outcome
    # imap stops at the first failing item, after the ones before it; as in the stdlib's
    # map, the StopIteration surfaces as the RuntimeError a generator turns it into
    got = []
    with pytest.raises(RuntimeError) as caught:
        for word in ex.imap(tasks.first_word, LINES, chunksize=len(LINES)):
            got.append(word)
    assert isinstance(caught.value.__cause__, StopIteration)
    assert got == ["alpha", "gamma"]
    futures = [ex.submit(tasks.first_word, line) for line in LINES[:3]]
    assert isinstance(futures[2].exception(FAULT_LIMIT), StopIteration)
    assert ex.submit(tasks.square, 4).result(FAULT_LIMIT) == 16
    ex.shutdown()


def _ctx(kind: str) -> Any:
    import multiprocessing

    return multiprocessing.get_context(kind)


# --- 2. done-callbacks run by shutdown(cancel_futures=True) ----------------------------------


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
    returned, outcome = _returns_within(
        lambda: ex.shutdown(wait=False, cancel_futures=True), FAULT_LIMIT
    )
    assert returned, "shutdown(cancel_futures=True) deadlocked on a done-callback"
    assert outcome is None
    assert all(fut.cancelled() for fut in queued[1:])
    assert len(seen) >= 3, seen
    if action == "submit":
        assert all("cannot schedule new futures after shutdown" in text for text in seen)
    guard.let_go()
    returned, _ = _returns_within(ex.shutdown, FAULT_LIMIT)
    assert returned
    assert running.done()


# --- 5. cancel_running: a cancel() that lands as the result arrives --------------------------


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


# --- 3. a task that closes its inherited descriptors -----------------------------------------


@pytest.mark.timeout(40)
@pytest.mark.parametrize("kind", PROCESS_KINDS)
def test_task_closing_its_descriptors_never_freezes_the_pool(guard: Guard, kind: str) -> None:
    ex = guard.make(kind, 2)
    ex.wait_ready(FAULT_LIMIT)
    started = time.monotonic()
    closer = ex.submit_with_timeout(1.0, tasks.close_fds_then_sleep, support.HANG, guard.log)
    assert files.wait_for_lines(guard.log, 1)
    # the other worker keeps serving while the closer runs on with its pipes gone
    assert ex.submit(tasks.square, 5).result(FAULT_LIMIT) == 25
    assert time.monotonic() - started < 1.0 + FAULT_LIMIT
    # its limit is enforced and reported as such, not as a crash
    err = closer.exception(FAULT_LIMIT)
    assert isinstance(err, mt.TaskTimeoutError), err
    assert time.monotonic() - started < 1.0 + FAULT_LIMIT
    # a task that closes them and returns cannot report back: it fails, nothing hangs
    short = ex.submit(tasks.close_fds_then_sleep, 0.0, guard.log)
    assert isinstance(short.exception(FAULT_LIMIT), mt.WorkerCrashedError)
    assert [ex.submit(tasks.square, i).result(FAULT_LIMIT) for i in range(4)] == [0, 1, 4, 9]
    returned, _ = _returns_within(ex.shutdown, FAULT_LIMIT)
    assert returned


# --- 4. a timed-out task that forked a child holding the worker's pipes ----------------------


@pytest.mark.timeout(40)
@pytest.mark.parametrize("kind", PROCESS_KINDS)
def test_worker_killed_after_a_timeout_is_replaced_though_its_child_holds_the_pipes(
    guard: Guard, kind: str, tmp_path: Path
) -> None:
    pid_file = str(tmp_path / "grandchild")
    ex = guard.make(kind, 1)
    try:
        forker = ex.submit_with_timeout(
            0.5, tasks.fork_child_then_hang, pid_file, guard.release_file
        )
        assert isinstance(forker.exception(FAULT_LIMIT), mt.TaskTimeoutError)
        assert files.wait_for_lines(pid_file, 1)
        started = time.monotonic()
        # the child lives on (up to 30 s, until released), yet the replacement starts now
        assert ex.submit(tasks.square, 3).result(FAULT_LIMIT) == 9
        assert time.monotonic() - started < FAULT_LIMIT
        assert processes.alive(int(files.read_lines(pid_file)[0])), "the test needs the child alive"
        returned, _ = _returns_within(ex.shutdown, FAULT_LIMIT)
        assert returned, "shutdown() waited for the killed worker's child"
    finally:
        guard.let_go()
        processes.wait_gone([int(pid) for pid in files.read_lines(pid_file)], FAULT_LIMIT)


# --- 6. a replacement killed while rebuilding its object -------------------------------------


@pytest.mark.timeout(40)
@pytest.mark.parametrize("kind", PROCESS_KINDS)
def test_replacement_killed_while_rebuilding_is_a_crash_the_pool_survives(
    guard: Guard, kind: str, tmp_path: Path
) -> None:
    logs = [str(tmp_path / "builds0"), str(tmp_path / "builds1")]
    ex = guard.make(kind, None, worker=[specs.SlowRebuild(log, guard.release_file) for log in logs])
    ex.wait_ready(FAULT_LIMIT)
    crashed = ex.submit(tasks.crash_on, 1, 1, "exit")
    assert isinstance(crashed.exception(FAULT_LIMIT), mt.WorkerCrashedError)
    # its replacement is rebuilding (slowly): kill it there, as the OOM killer might
    assert files.wait_for(lambda: any(len(files.read_lines(log)) == 2 for log in logs))
    rebuilding = next(log for log in logs if len(files.read_lines(log)) == 2)
    os.kill(int(files.read_lines(rebuilding)[1]), signal.SIGKILL)
    # the pool is not broken: the healthy worker serves, a new replacement builds
    assert ex.submit(tasks.square, 3).result(FAULT_LIMIT) == 9
    assert files.wait_for_lines(rebuilding, 3)
    guard.let_go()
    ex.wait_ready(FAULT_LIMIT)
    assert list(ex.imap(tasks.square, range(10), chunksize=2)) == [x * x for x in range(10)]
    ex.shutdown()


@pytest.mark.parametrize(
    ("ever_ready", "is_crash"),
    [(True, True), (False, False)],
)
def test_a_death_while_starting_is_a_crash_only_once_the_slot_has_been_ready(
    ever_ready: bool, is_crash: bool
) -> None:
    assert starting_death_is_a_crash(ever_ready) is is_crash


# --- 10. what a death while starting is reported as ------------------------------------------


def test_start_death_message_says_what_happened() -> None:
    plain = describe_start_death(0, 1, False, None, "spawn")
    assert plain == (
        "worker 0 died while starting (exit code 1), before running any task "
        "(did its main module fail to import under spawn?)"
    )
    assert "initializer" not in plain
    assert "main module" not in describe_start_death(2, -9, False, None, "fork")
    # our code ran, with an initializer or a spec to blame
    blamed = describe_start_death(1, 3, True, "the pool initializer in worker 1", "spawn")
    assert blamed.startswith("the pool initializer in worker 1 failed: the worker died while")
    assert "exit code 3" in blamed and "main module" not in blamed
    # nothing of ours to blame: no initializer, no spec
    assert describe_start_death(1, 3, True, None, "fork").startswith("worker 1 died while")


MAIN_THAT_FAILS_IN_THE_CHILD = """
import multiprocessing
import sys

if __name__ == "__mp_main__":  # how a spawned child imports this script
    import a_module_only_the_parent_has  # noqa: F401

if __name__ == "__main__":
    import mtasklite as mt

    ex = mt.StatefulProcessPoolExecutor(1, multiprocessing.get_context("spawn"))
    try:
        ex.submit(abs, -1).result(30)
    except Exception as exc:
        print(type(exc).__name__, exc)
    ex.shutdown()
"""


@pytest.mark.timeout(60)
def test_spawned_worker_whose_main_module_fails_to_import_is_reported_as_such(
    tmp_path: Path,
) -> None:
    script = tmp_path / "main_fails_in_child.py"
    script.write_text(MAIN_THAT_FAILS_IN_THE_CHILD)
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=50, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("WorkerInitError worker 0 died while starting"), proc.stdout
    assert "did its main module fail to import under spawn?" in proc.stdout
    assert "initializer" not in proc.stdout


# --- 8. a result the parent cannot unpickle --------------------------------------------------


UNREADABLE_TASKS = {
    "reconstructor raises": tasks.count_then_unreadable_on,
    "nested in a container": tasks.count_then_nested_unreadable_on,
    "class missing in the parent": tasks.count_then_missing_class_on,
    "reconstructor exits": tasks.count_then_exit_on_unpickle_on,
}


@pytest.mark.parametrize(
    ("kind", "case"),
    [(kind, "reconstructor raises") for kind in PROCESS_KINDS]
    + [
        ("fork", "nested in a container"),
        ("spawn", "class missing in the parent"),
        ("fork", "reconstructor exits"),
    ],
)
def test_unreadable_result_fails_only_its_item_and_nothing_runs_twice(
    guard: Guard, kind: str, case: str
) -> None:
    task = UNREADABLE_TASKS[case]
    # the workers define the class the missing-class case returns; the parent never does
    init = {"initializer": tasks.define_not_in_parent}
    outcomes = list(
        process_pqdm(
            range(20),
            functools.partial(task, target=7, log=guard.log),
            n_jobs=2,
            chunk_size=10,
            mp_context=_ctx(kind),
            disable=True,
            **init,
        )
    )
    err = outcomes[7]
    assert isinstance(err, mt.DeserializationError), err
    assert "could not be unpickled" in str(err)
    assert outcomes[:7] + outcomes[8:] == [x * 10 for x in range(20) if x != 7]
    runs = sorted(int(line) for line in files.read_lines(guard.log))
    assert runs == list(range(20)), "every item runs exactly once"
    # imap raises at the bad item, after the ones before it
    ex = guard.make(kind, 2, **init)
    got = []
    with pytest.raises(mt.DeserializationError):
        for value in ex.imap(
            functools.partial(task, target=3, log=guard.log), range(8), chunksize=8
        ):
            got.append(value)
    assert got == [0, 10, 20]
    assert ex.submit(pow, 2, 5).result(timeout=30) == 32, "the pool is still usable"
    ex.shutdown()


# --- 7. a KeyboardInterrupt a task raised is not a Ctrl-C ------------------------------------


def _consume(ex: Any, how: str) -> list[Any]:
    fn, items, targets = tasks.raise_keyboard_interrupt_on, range(10), [3] * 10
    if how == "map":
        return list(ex.map(fn, items, targets))
    if how == "imap":
        return list(ex.imap(fn, items, targets, chunksize=1))
    return list(ex.imap(fn, items, targets, chunksize=None))


@pytest.mark.parametrize("kind", ["fork", "spawn", "threads"])
@pytest.mark.parametrize("how", ["map", "imap", "adaptive imap"])
def test_keyboard_interrupt_raised_by_a_task_is_reraised_and_the_pool_stays_usable(
    guard: Guard, kind: str, how: str
) -> None:
    ex = guard.make(kind, 2)
    with pytest.raises(KeyboardInterrupt, match="raised by task 3"):
        _consume(ex, how)
    assert ex.submit(tasks.square, 3).result(FAULT_LIMIT) == 9
    assert list(ex.imap(tasks.square, range(6), chunksize=2)) == [0, 1, 4, 9, 16, 25]
    ex.shutdown()


@pytest.mark.parametrize("kind", ["fork", "spawn"])
def test_task_keyboard_interrupt_leaving_with_waits_for_running_work(
    guard: Guard, kind: str
) -> None:
    # Only a real Ctrl-C stops the workers on leaving ``with``; a task's own interrupt
    # leaves it like any other exception: shutdown(wait=True), running work completes.
    ex = guard.make(kind, 2)
    with pytest.raises(KeyboardInterrupt, match="raised by a task"), ex:
        running = ex.submit(tasks.hang_unless, "running", guard.log, guard.release_file)
        assert files.wait_for_lines(guard.log, 1)
        ex.submit(tasks.release_then_raise_keyboard_interrupt, guard.release_file).result()
    assert running.result(0) == "running"


def test_task_keyboard_interrupt_in_pool_immediate_mode_keeps_the_pool() -> None:
    with mt.Pool(
        tasks.raise_keyboard_interrupt_on, 2, argument_type="args", exception_behavior="immediate"
    ) as pool:
        with pytest.raises(KeyboardInterrupt, match="raised by task 3"):
            list(pool([(x, 3) for x in range(8)]))
        assert list(pool([(x, -1) for x in range(4)])) == [0, 10, 20, 30]


# --- 9. unbounded pqdm / Pool chunk adaptively -----------------------------------------------


@pytest.mark.parametrize("entry", ["pqdm default", "Pool(bounded=False)", "Pool(bounded=True)"])
def test_unbounded_runs_chunk_adaptively_like_bounded_ones(
    monkeypatch: pytest.MonkeyPatch, entry: str
) -> None:
    chunk_sizes: list[int] = []
    submit_chunk = mt.StatefulProcessPoolExecutor._submit_chunk

    def counting(self: Any, fn: Any, items: Any, star: bool, timeout: Any) -> Any:
        chunk_sizes.append(len(items))
        return submit_chunk(self, fn, items, star, timeout)

    monkeypatch.setattr(mt.StatefulProcessPoolExecutor, "_submit_chunk", counting)
    items = range(20_000)
    if entry == "pqdm default":  # pqdm's default is bounded=False
        out = list(
            process_pqdm(items, tasks.square, n_jobs=2, mp_context=_ctx("fork"), disable=True)
        )
    else:
        bounded = entry == "Pool(bounded=True)"
        with mt.Pool(tasks.square, 2, bounded=bounded, mp_context=_ctx("fork")) as pool:
            out = list(pool(items))
    assert out == [x * x for x in items]
    assert sum(chunk_sizes) == len(items)
    # one task per item was 20000 tasks; adaptive sizing needs a few dozen at most (the cap
    # alone, total / (4 x workers) = 2500 items, allows 8)
    assert len(chunk_sizes) <= 100, f"{len(chunk_sizes)} chunks: {chunk_sizes[:10]}..."
    assert max(chunk_sizes) > 100


def test_unbounded_sizer_goes_all_in_only_once_the_estimate_has_settled() -> None:
    from mtasklite.windowing import AdaptiveChunkSize, ChunkResult

    def sample(seconds: float, count: int) -> ChunkResult:
        return ChunkResult([None] * count, None, seconds)

    bounded = AdaptiveChunkSize(2, 200_000)
    unbounded = AdaptiveChunkSize(2, 200_000, unbounded=True)
    assert bounded.inflight_limit == unbounded.inflight_limit == 2  # probing: one per worker
    # one slow early sample: trusted, but not yet a reason to send out everything at its size
    for sizer in (bounded, unbounded):
        sizer.observe(sample(0.002, 1), 1)
    assert bounded.inflight_limit == float("inf")  # the window's buffersize bounds it
    assert unbounded.inflight_limit == 2 * AdaptiveChunkSize.UNSETTLED_CHUNKS_PER_WORKER
    # fast chunks follow; the size grows as when bounded, then everything goes out
    while unbounded.inflight_limit != float("inf"):
        unbounded.observe(sample(0.01, unbounded.size), unbounded.size)
    assert unbounded.size >= 100  # the slow sample alone gave 4
