"""``ex.aimap`` / ``ex.aimap_unordered`` (issue 18): ``async for`` over the lazy, bounded imap.

Every test drives a plain ``asyncio.run``.  Tasks that must block poll a release file (any
process) and log their start to a file (see :mod:`support.tasks`), so the tests can tell
which items ran; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import itertools
import sys
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Optional, TypeVar

import pytest

from support import files, inputs, processes, tasks
from support.executors import new_executor
from support.inputs import CountingIterator

pytestmark = pytest.mark.timeout(60)

#: upper bound for any single wait in these tests (never reached when things work)
LIMIT = 10.0

KINDS = ["threads", "fork"]

T = TypeVar("T")


def run(coro: Any) -> Any:
    """``asyncio.run`` under a deadline: a hang fails the test instead of stalling it."""

    async def bounded() -> Any:
        return await asyncio.wait_for(coro, 3 * LIMIT)

    return asyncio.run(bounded())


class Pools:
    """The executors a test made, the release switch of its blocked tasks, its start log."""

    def __init__(self, tmp_path: Path):
        self.executors: list[Any] = []
        self.release_file = str(tmp_path / "release")
        self.log = str(tmp_path / "log")

    def make(self, kind: str, workers: int = 2, **kwargs: Any) -> Any:
        ex = new_executor(kind, workers, **kwargs)
        self.executors.append(ex)
        return ex

    def let_go(self) -> None:
        Path(self.release_file).touch()

    def started(self) -> list[int]:
        """The items that started running, in start order."""
        return [int(line.split()[0]) for line in files.read_lines(self.log)]


@pytest.fixture
def pools(tmp_path: Path) -> Iterator[Pools]:
    made = Pools(tmp_path)
    try:
        yield made
    finally:
        made.let_go()
        for ex in made.executors:
            ex.shutdown(wait=True, cancel_futures=True)


async def collect(results: AsyncIterator[T]) -> list[T]:
    return [x async for x in results]


class PullLog:
    """An async generator over ``0, 1, ...`` (``stop`` items) that records how far it was
    read and which thread read it; it raises ``ValueError`` at ``fail_at``."""

    def __init__(self, stop: Optional[int] = None, fail_at: Optional[int] = None):
        self.stop = stop
        self.fail_at = fail_at
        self.pulled = 0
        self.threads: set[int] = set()

    async def items(self) -> AsyncIterator[int]:
        for i in itertools.count() if self.stop is None else range(self.stop):
            await asyncio.sleep(0)  # a real async source suspends between items
            self.threads.add(threading.get_ident())
            if i == self.fail_at:
                raise ValueError(f"input broke at {i}")
            self.pulled += 1
            yield i


# --- results: order, chunking, inputs ---------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunksize", [1, 3, None])
def test_results_and_order_match_imap(pools: Pools, kind: str, chunksize: Optional[int]) -> None:
    ex = pools.make(kind)
    data = list(range(200))

    async def main() -> None:
        ordered = await collect(ex.aimap(tasks.square, data, chunksize=chunksize, buffersize=3))
        assert ordered == list(ex.imap(tasks.square, data, chunksize=chunksize, buffersize=3))
        assert ordered == [x * x for x in data]
        unordered = await collect(ex.aimap_unordered(tasks.square, iter(data), chunksize=chunksize))
        assert sorted(unordered) == ordered
        # several inputs: fn(*args), stopping at the shortest one, as map does
        assert await collect(ex.aimap(pow, data, [2] * 5, chunksize=chunksize)) == [
            0,
            1,
            4,
            9,
            16,
        ]

    run(main())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunksize", [1, 4])
def test_async_generator_input_is_read_lazily_on_the_loop(
    pools: Pools, kind: str, chunksize: int
) -> None:
    ex = pools.make(kind)
    source = PullLog()  # infinite

    async def main() -> None:
        seen: list[int] = []
        async for value in ex.aimap(
            tasks.square, source.items(), chunksize=chunksize, buffersize=2
        ):
            seen.append(value)
            # never more than the window (2 tasks of ``chunksize`` items) ahead of the consumer
            assert source.pulled - len(seen) <= 2 * chunksize
            if len(seen) == 25:
                break
        assert seen == [x * x for x in range(25)]
        assert source.threads == {threading.get_ident()}  # read on the loop's thread

    run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_async_and_ordinary_inputs_mix(pools: Pools, kind: str) -> None:
    ex = pools.make(kind)

    async def main() -> None:
        short = PullLog(stop=6)
        assert await collect(ex.aimap(pow, short.items(), itertools.repeat(3))) == [
            x**3 for x in range(6)
        ]
        results = await collect(ex.aimap_unordered(pow, range(10), PullLog(stop=4).items()))
        assert sorted(results) == [1, 1, 4, 27]

    run(main())


def test_unordered_yields_in_completion_order(pools: Pools) -> None:
    ex = pools.make("threads")

    async def main() -> None:
        args = [(0, pools.log, pools.release_file), (1, pools.log, "/")]  # 1 is released at once
        results = ex.aimap_unordered(tasks.hang_unless, *zip(*args))
        assert await results.__anext__() == 1  # item 0 still blocks
        pools.let_go()
        assert await collect(results) == [0]

    run(main())


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunksize", [1, 3])
def test_task_error_is_raised_in_place_and_ends_the_iteration(
    pools: Pools, kind: str, chunksize: int
) -> None:
    ex = pools.make(kind)

    async def main() -> None:
        seen: list[int] = []
        results = ex.aimap(tasks.fail_on, range(100), itertools.repeat(7), chunksize=chunksize)
        with pytest.raises(ValueError, match="bad item 7"):
            async for value in results:
                seen.append(value)
        assert seen == [x * 10 for x in range(7)]
        with pytest.raises(StopAsyncIteration):  # an error ends it, as in a generator
            await results.__anext__()

    run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_input_errors_come_after_the_results_before_them(pools: Pools, kind: str) -> None:
    ex = pools.make(kind)

    async def main() -> None:
        for chunksize in (1, 4):
            seen: list[int] = []
            with pytest.raises(ValueError, match="input broke at 5"):
                async for value in ex.aimap(
                    tasks.square, PullLog(fail_at=5).items(), chunksize=chunksize
                ):
                    seen.append(value)
            assert seen == [0, 1, 4, 9, 16]
            seen.clear()
            ordinary = inputs.failing_input(10, 5)
            with pytest.raises(LookupError, match="input broke at 5"):
                async for value in ex.aimap(tasks.square, ordinary, chunksize=chunksize):
                    seen.append(value)
            assert seen == [0, 1, 4, 9, 16]

    run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_bad_arguments_are_refused_at_the_call(pools: Pools, kind: str) -> None:
    ex = pools.make(kind)
    with pytest.raises(ValueError, match="chunksize"):
        ex.aimap(tasks.square, range(3), chunksize=0)
    with pytest.raises(ValueError, match="buffersize"):
        ex.aimap_unordered(tasks.square, range(3), buffersize=-1)
    with pytest.raises(ValueError, match="task_timeout"):
        ex.aimap(tasks.square, range(3), task_timeout=0)
    with pytest.raises(TypeError, match="at least one iterable"):
        ex.aimap(tasks.square)
    with pytest.raises(TypeError, match="not iterable"):
        ex.aimap(tasks.square, 5)


# --- the loop is never blocked ----------------------------------------------------------------


class Ticker:
    """A coroutine ticking every ``period`` beside the work under test, noting when it ticked
    and how far the consumer had got (``progress``) at each tick."""

    def __init__(self, period: float = 0.01):
        self.period = period
        self.times: list[float] = []
        self.marks: list[int] = []
        self.progress = 0  # advanced by the consumer

    async def beside(self, work: Any) -> Any:
        """Await ``work`` with the ticker running."""
        stop = asyncio.Event()

        async def tick() -> None:
            while not stop.is_set():
                self.times.append(time.monotonic())
                self.marks.append(self.progress)
                await asyncio.sleep(self.period)  # sleep-ok: the ticker whose period is measured

        ticking = asyncio.ensure_future(tick())
        await asyncio.sleep(0)
        try:
            return await work
        finally:
            stop.set()
            await ticking
            self.times.append(time.monotonic())
            self.marks.append(self.progress)

    def longest_gap(self) -> float:
        return max(b - a for a, b in zip(self.times, self.times[1:]))

    def most_progress_between_ticks(self) -> int:
        return max(b - a for a, b in zip(self.marks, self.marks[1:]))


async def busy_consumer(results: AsyncIterator[int], ticker: Ticker) -> int:
    """Sum the results, spending 0.1 ms of CPU on each without awaiting anything else."""
    total = 0
    async for value in results:
        until = time.perf_counter() + 0.0001
        while time.perf_counter() < until:  # deliberate CPU work, not a wait
            pass
        total += value
        ticker.progress += 1
    return total


@pytest.mark.parametrize("kind", KINDS)
def test_a_ticker_beside_a_long_aimap_keeps_its_period(pools: Pools, kind: str) -> None:
    ex = pools.make(kind)
    ex.wait_ready(LIMIT)

    async def main() -> None:
        # Slow tasks: the consumer mostly waits, and the ticker keeps its period.
        ticker = Ticker()
        slow = await ticker.beside(
            collect(ex.aimap(tasks.slow_square, range(40), itertools.repeat(0.02)))
        )
        assert slow == [x * x for x in range(40)]
        assert ticker.longest_gap() < 0.25 and len(ticker.times) >= 10, ticker.times
        # A consumer slower than the workers: results are there before it asks for them, so
        # only the iterator can let the ticker in.  Counted in items rather than seconds (the
        # consumer's CPU time stretches on a loaded machine): the ticker runs every few dozen.
        ticker = Ticker()
        fast = await ticker.beside(busy_consumer(ex.aimap(tasks.square, range(4000)), ticker))
        assert fast == sum(x * x for x in range(4000))
        assert ticker.most_progress_between_ticks() < 1000, ticker.marks
        # No thread waits on the loop's behalf (the loop's default executor stayed unused).
        assert not [t for t in threading.enumerate() if t.name.startswith("asyncio_")]

    run(main())


# --- stopping: cancellation, break, aclose, timeouts ----------------------------------------


#: the window of the stopping tests: two items run, at most two more wait inside a worker
#: process (sent ahead: they run), so at least four are queued when the iteration stops
WINDOW = 8


def blocked_stream(ex: Any, pools: Pools, source: Iterator[int], first_blocked: int = 0) -> Any:
    """An ordered aimap whose tasks from ``first_blocked`` on log their start and block until
    released."""
    return ex.aimap(
        tasks.block_from,
        source,
        itertools.repeat(first_blocked),
        itertools.repeat(pools.log),
        itertools.repeat(pools.release_file),
        buffersize=WINDOW,
        chunksize=1,
    )


def assert_queued_work_was_cancelled(
    pools: Pools,
    ex: Any,
    kind: str,
    source: CountingIterator,
    could_run: set[int],
    consumed: int = 0,
) -> None:
    """After the iteration stopped: input was read no further than the window ahead of the
    ``consumed`` results, and once the blocked
    items are released only those that could have started by then run (threads), or at
    least fewer than were pulled (a process pool runs what it already sent to a worker)."""
    pulled = source.pulled
    assert pulled <= WINDOW + consumed, pulled
    pools.let_go()
    ex.shutdown(wait=True)
    assert source.pulled == pulled, "input was read after the iteration stopped"
    started = set(pools.started())
    if kind == "threads":
        assert started <= could_run, f"queued items ran after the iteration stopped: {started}"
    else:
        assert len(started) < pulled, f"all {pulled} pulled items ran: none was cancelled"


async def until_started(pools: Pools, count: int) -> None:
    """Wait, without blocking the loop, until ``count`` items have started."""
    deadline = time.monotonic() + LIMIT
    while len(pools.started()) < count:
        assert time.monotonic() < deadline, pools.started()
        await asyncio.sleep(0.005)  # sleep-ok: polling the start log under a deadline


@pytest.mark.parametrize("kind", KINDS)
def test_cancelling_the_consuming_task_cancels_queued_work(pools: Pools, kind: str) -> None:
    ex = pools.make(kind)
    source = CountingIterator(itertools.count())

    async def main() -> None:
        consumer = asyncio.ensure_future(collect(blocked_stream(ex, pools, iter(source))))
        await until_started(pools, 2)
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer

    run(main())
    assert_queued_work_was_cancelled(pools, ex, kind, source, could_run={0, 1})


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("how", ["break", "aclose", "async with"])
def test_leaving_early_cancels_queued_work(pools: Pools, kind: str, how: str) -> None:
    ex = pools.make(kind)
    source = CountingIterator(itertools.count())

    async def main() -> None:
        results = blocked_stream(ex, pools, iter(source), first_blocked=1)  # 0 returns at once
        if how == "async with":
            async with results:
                assert await results.__anext__() == 0
        else:
            async for value in results:
                assert value == 0
                break
            if how == "aclose":
                await results.aclose()
            else:
                del results  # ``break`` does not close an async iterator; dropping it does
                return
        with pytest.raises(StopAsyncIteration):
            await results.__anext__()

    run(main())
    # item 0's worker may have taken item 2 before the iteration stopped
    assert_queued_work_was_cancelled(pools, ex, kind, source, could_run={1, 2}, consumed=1)


@pytest.mark.parametrize("kind", KINDS)
def test_wait_for_around_the_loop_cancels_queued_work(pools: Pools, kind: str) -> None:
    ex = pools.make(kind)
    source = CountingIterator(itertools.count())

    async def main() -> None:
        stream = blocked_stream(ex, pools, iter(source))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(collect(stream), 0.3)

    run(main())
    assert_queued_work_was_cancelled(pools, ex, kind, source, could_run={0, 1})


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout() is new in 3.11")
def test_asyncio_timeout_around_the_loop_cancels_queued_work(pools: Pools) -> None:
    ex = pools.make("threads")
    source = CountingIterator(itertools.count())

    async def main() -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):  # type: ignore[attr-defined]
                async for _ in blocked_stream(ex, pools, iter(source)):
                    pass

    run(main())
    assert_queued_work_was_cancelled(pools, ex, "threads", source, could_run={0, 1})


@pytest.mark.parametrize("kind", KINDS)
def test_timeout_argument_is_an_overall_deadline(pools: Pools, kind: str) -> None:
    ex = pools.make(kind)
    source = CountingIterator(itertools.count())

    async def main() -> None:
        seen: list[int] = []
        began = time.monotonic()
        with pytest.raises(cf.TimeoutError):
            async for value in ex.aimap(
                tasks.block_from,
                iter(source),
                itertools.repeat(3),
                itertools.repeat(pools.log),
                itertools.repeat(pools.release_file),
                timeout=0.5,
                buffersize=WINDOW,
                chunksize=1,
            ):
                seen.append(value)
        assert 0.45 < time.monotonic() - began < LIMIT
        assert seen == [0, 1, 2]

    run(main())
    assert_queued_work_was_cancelled(pools, ex, kind, source, could_run={3, 4}, consumed=3)


def test_cancel_running_stops_running_tasks_too(pools: Pools) -> None:
    ex = pools.make("fork", cancel_running=True)

    async def main() -> None:
        consumer = asyncio.ensure_future(
            collect(ex.aimap(tasks.log_then_hang, range(10), itertools.repeat(pools.log)))
        )
        await until_started(pools, 2)
        pids = {int(line.split()[1]) for line in files.read_lines(pools.log)}
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        assert processes.wait_gone(pids, LIMIT) == set(), "the running tasks were not stopped"
        # The pool goes on with fresh workers.
        assert await collect(ex.aimap(tasks.square, range(4))) == [0, 1, 4, 9]

    run(main())
    assert sorted(pools.started()) == [0, 1]


def test_a_second_consumer_at_once_is_refused(pools: Pools) -> None:
    ex = pools.make("threads")

    async def main() -> None:
        results = ex.aimap(tasks.hang_unless, range(3), [pools.log] * 3, [pools.release_file] * 3)
        first = asyncio.ensure_future(results.__anext__())
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="already being awaited"):
            await results.__anext__()
        pools.let_go()
        assert await first == 0
        assert await collect(results) == [1, 2]

    run(main())


def test_aclose_from_another_task_ends_a_waiting_consumer(pools: Pools) -> None:
    ex = pools.make("threads")

    async def main() -> None:
        # A window of two on two threads: both tasks run, none is queued, so no cancelled
        # future wakes the consumer; aclose() itself must.
        results = ex.aimap(
            tasks.hang_unless, range(10), [pools.log] * 10, [pools.release_file] * 10, buffersize=2
        )
        consumer = asyncio.ensure_future(collect(results))
        await until_started(pools, 2)
        await results.aclose()
        assert await asyncio.wait_for(consumer, LIMIT) == []  # ended, not stuck

    run(main())
    pools.let_go()
    ex.shutdown(wait=True)
    assert sorted(pools.started()) == [0, 1]


# --- Dask ---------------------------------------------------------------------------------------


def scheduler_backlog(client: Any) -> int:
    """How many tasks the Dask scheduler still means to run or is running."""

    def count(dask_scheduler: Any) -> int:
        live = ("waiting", "queued", "no-worker", "processing")
        return sum(task.state in live for task in dask_scheduler.tasks.values())

    return int(client.run_on_scheduler(count))


def test_dask_executor_streams_and_cancels(dask_client: Any, pools: Pools) -> None:
    from mtasklite.dask import StatefulDaskExecutor

    ex = StatefulDaskExecutor(dask_client)
    source = CountingIterator(itertools.count())

    async def main() -> None:
        assert await collect(ex.aimap(tasks.square, PullLog(stop=30).items())) == [
            x * x for x in range(30)
        ]
        unordered = await collect(ex.aimap_unordered(tasks.square, range(30), chunksize=4))
        assert sorted(unordered) == [x * x for x in range(30)]
        async with blocked_stream(ex, pools, iter(source)) as results:
            consumer = asyncio.ensure_future(results.__anext__())
            await until_started(pools, 2)
            consumer.cancel()
            with pytest.raises(asyncio.CancelledError):
                await consumer

    try:
        run(main())
        assert source.pulled == WINDOW
        # Cancellations reach the scheduler from the executor's service thread; release the
        # blocked tasks only once it has dropped the queued ones, or they could still start.
        assert files.wait_for(lambda: scheduler_backlog(dask_client) == 0), "cancel never arrived"
        pools.let_go()
        assert ex.submit(tasks.square, 3).result(LIMIT) == 9  # queued behind what still runs
        assert len(pools.started()) < WINDOW, "every queued task ran after the cancellation"
    finally:
        ex.shutdown(wait=True)
