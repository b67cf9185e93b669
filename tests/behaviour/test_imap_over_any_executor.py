"""The lazy windowing engine: ``imap`` / ``imap_unordered`` / ``map(buffersize=)``.

Every engine test runs on three backends: the stateful thread executor's own methods (with
their default, adaptive chunks, and with ``chunksize=1``, the drainer engine, unless the test
passes a chunksize), and the generic ``mtasklite.imap(executor, fn, ...)`` over a plain stdlib
``ThreadPoolExecutor``.
"""

from __future__ import annotations

import collections.abc
import concurrent.futures
import functools
import gc
import io
import itertools
import math
import operator
import threading
from typing import Any, Callable, Iterator, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tqdm import tqdm

import mtasklite as mt

BLOCK_LIMIT = 10.0

WORKERS = 2

STPE = mt.StatefulThreadPoolExecutor


class Backend:
    """One way of running the engine: ``imap`` / ``imap_unordered`` over a live pool."""

    def __init__(self, kind: str, prefix: str, workers: int = WORKERS):
        self.kind = kind
        self.workers = workers
        self.executor: concurrent.futures.ThreadPoolExecutor
        if kind == "stateful":
            ex = STPE(workers, prefix)
            self.executor = ex
            self.imap: Callable[..., mt.ResultIterator[Any]] = ex.imap
            self.imap_unordered: Callable[..., mt.ResultIterator[Any]] = ex.imap_unordered
        elif kind == "stateful-1":
            ex = STPE(workers, prefix)
            self.executor = ex
            self.imap = functools.partial(ex.imap, chunksize=1)
            self.imap_unordered = functools.partial(ex.imap_unordered, chunksize=1)
        else:
            std = concurrent.futures.ThreadPoolExecutor(workers, prefix)
            self.executor = std
            self.imap = functools.partial(mt.imap, std)
            self.imap_unordered = functools.partial(mt.imap_unordered, std)

    def iterate(self, ordered: bool) -> Callable[..., mt.ResultIterator[Any]]:
        return self.imap if ordered else self.imap_unordered

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True)


@pytest.fixture(params=["stateful", "stateful-1", "stdlib"])
def backend(
    request: pytest.FixtureRequest, prefix: str, release: threading.Event
) -> Iterator[Backend]:
    b = Backend(request.param, prefix)
    yield b
    release.set()  # never leave a task blocked while shutting down
    b.shutdown()


ordered_param = pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])


def square(x: int) -> int:
    return x * x


# --- results -------------------------------------------------------------------------------


@ordered_param
@pytest.mark.parametrize("chunksize", [1, 3, None])
@pytest.mark.parametrize("buffersize", [1, 5, None])
def test_results_match_builtin_map(
    backend: Backend, ordered: bool, chunksize: Optional[int], buffersize: Optional[int]
) -> None:
    data = list(range(-20, 57))
    got = list(backend.iterate(ordered)(square, data, chunksize=chunksize, buffersize=buffersize))
    expected = list(map(square, data))
    if ordered:
        assert got == expected
    else:
        assert sorted(got) == sorted(expected)


@ordered_param
def test_several_iterables_zip_like_builtin_map(backend: Backend, ordered: bool) -> None:
    it = backend.iterate(ordered)(pow, range(30), [2] * 12, itertools.repeat(1000))
    got = list(it)
    expected = list(map(pow, range(30), [2] * 12, itertools.repeat(1000)))
    assert len(expected) == 12
    assert got == expected if ordered else sorted(got) == sorted(expected)


@ordered_param
def test_empty_input_yields_nothing(backend: Backend, ordered: bool) -> None:
    assert list(backend.iterate(ordered)(square, [])) == []
    assert list(backend.iterate(ordered)(square, iter([]), chunksize=4)) == []


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    a=st.lists(st.integers(-(10**6), 10**6), max_size=60),
    b=st.one_of(st.none(), st.lists(st.integers(-5, 5), max_size=60)),
    chunksize=st.sampled_from([1, 2, 7, None]),
    buffersize=st.one_of(st.none(), st.integers(1, 9)),
    workers=st.integers(1, 4),
    ordered=st.booleans(),
    generic=st.booleans(),
)
def test_property_results_match_builtin_map(
    a: list[int],
    b: Optional[list[int]],
    chunksize: Optional[int],
    buffersize: Optional[int],
    workers: int,
    ordered: bool,
    generic: bool,
) -> None:
    fn: Callable[..., int] = operator.sub if b is not None else operator.neg
    iterables: tuple[Any, ...] = (a, b) if b is not None else (a,)
    expected = list(map(fn, *iterables))
    kwargs = {"chunksize": chunksize, "buffersize": buffersize}
    if generic:
        with concurrent.futures.ThreadPoolExecutor(workers, "mt-hyp-std") as std:
            func = mt.imap if ordered else mt.imap_unordered
            # unsized input (a generator) must behave the same as sized input
            got = list(func(std, fn, *(iter(x) for x in iterables), **kwargs))
    else:
        with STPE(workers, "mt-hyp") as ex:
            method = ex.imap if ordered else ex.imap_unordered
            result = method(fn, *iterables, **kwargs)
            assert len(result) == len(expected)
            got = list(result)
    assert got == expected if ordered else sorted(got) == sorted(expected)


def test_generic_imap_over_stateful_executor_uses_its_workers(prefix: str) -> None:
    @mt.delayed_init
    class Add:
        def __init__(self, k: int) -> None:
            self.k = k

        def __call__(self, x: int) -> int:
            return x + self.k

    with STPE(2, prefix, worker=Add(100)) as ex:
        assert list(mt.imap(ex, ex.worker, range(10))) == list(range(100, 110))
        assert sorted(mt.imap_unordered(ex, ex.worker, range(10), chunksize=3)) == list(
            range(100, 110)
        )


# --- ordering ------------------------------------------------------------------------------


def make_one_finishes_first(started2: threading.Event) -> Callable[[int], int]:
    """Task 0 returns only after task 2 started; with two workers that means task 1 is done."""

    def fn(x: int) -> int:
        if x == 0:
            assert started2.wait(BLOCK_LIMIT)
        if x == 2:
            started2.set()
        return x

    return fn


def test_ordered_yields_by_input_position_not_completion(backend: Backend) -> None:
    fn = make_one_finishes_first(threading.Event())
    assert list(backend.imap(fn, range(10), buffersize=4)) == list(range(10))


def test_unordered_yields_results_as_they_arrive(backend: Backend) -> None:
    fn = make_one_finishes_first(threading.Event())
    got = list(backend.imap_unordered(fn, range(10), buffersize=4))
    assert got[0] == 1, got
    assert sorted(got) == list(range(10))


# --- laziness and bounded read-ahead -------------------------------------------------------


@ordered_param
def test_nothing_is_read_before_the_first_next(
    backend: Backend, ordered: bool, counting: Any
) -> None:
    src = counting(itertools.count())
    it = backend.iterate(ordered)(square, src, buffersize=3, chunksize=2)
    assert src.pulled == 0
    with it:
        next(it)
        assert 0 < src.pulled <= 3 * 2


@pytest.mark.parametrize(
    ("n", "chunksize", "buffersize"),
    [(200_000, 64, 8), (200_000, 500, 3), (5_000, 1, 5)],
    ids=["200k-c64-b8", "200k-c500-b3", "5k-c1-b5"],
)
@ordered_param
def test_long_generator_streams_with_bounded_read_ahead(
    backend: Backend, ordered: bool, n: int, chunksize: int, buffersize: int
) -> None:
    pulled = 0

    def source() -> Iterator[int]:
        nonlocal pulled
        for i in range(n):
            pulled += 1
            yield i

    bound = buffersize * chunksize
    consumed = 0
    worst = 0
    total = 0
    for y in backend.iterate(ordered)(
        operator.neg, source(), chunksize=chunksize, buffersize=buffersize
    ):
        if ordered and y != -consumed:
            pytest.fail(f"item {consumed} came back as {y}")
        consumed += 1
        total += y
        ahead = pulled - consumed  # pulled from the input but not yet handed to us
        if ahead > bound:
            pytest.fail(f"after {consumed} results {pulled} were pulled (> {bound} ahead)")
        worst = max(worst, ahead)
    assert consumed == n
    assert total == -n * (n - 1) // 2
    assert pulled == n
    assert worst <= bound


@ordered_param
@pytest.mark.parametrize("chunksize", [1, 3])
def test_default_buffersize_per_worker(
    backend: Backend, ordered: bool, chunksize: int, counting: Any
) -> None:
    # Our thread pool keeps 64 single items or 4 chunks per worker in flight; mt.imap over
    # another executor keeps 4 tasks per worker.
    src = counting(itertools.count())
    per_worker = 64 if backend.kind.startswith("stateful") and chunksize == 1 else 4
    bound = per_worker * backend.workers * chunksize
    most_ahead = 0
    with backend.iterate(ordered)(square, src, chunksize=chunksize) as it:
        for consumed, _ in enumerate(itertools.islice(it, 300), start=1):
            most_ahead = max(most_ahead, src.pulled - consumed)
    assert bound - chunksize <= most_ahead <= bound


@ordered_param
@pytest.mark.parametrize("chunksize", [1, 4, None])
def test_infinite_input_works(backend: Backend, ordered: bool, chunksize: Optional[int]) -> None:
    with backend.iterate(ordered)(square, itertools.count(), chunksize=chunksize) as it:
        got = list(itertools.islice(it, 500))
    expected = [x * x for x in range(500)]
    assert got == expected if ordered else len(set(got)) == 500


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["close", "with", "break", "drop"])
@ordered_param
def test_stopping_early_stops_reading_and_cancels_queued_tasks(
    backend: Backend, ordered: bool, how: str, release: threading.Event, counting: Any
) -> None:
    ran: list[int] = []
    finished: list[int] = []

    def fn(x: int) -> int:
        ran.append(x)
        if x > 0:
            release.wait(BLOCK_LIMIT)
        finished.append(x)
        return x

    buffersize = 8  # well above the number of workers: most submitted tasks are queued
    src = counting(itertools.count())
    make = backend.iterate(ordered)
    if how == "close":
        it = make(fn, src, buffersize=buffersize)
        assert next(it) == 0
        it.close()
        with pytest.raises(StopIteration):
            next(it)
    elif how == "with":
        with make(fn, src, buffersize=buffersize) as it:
            assert next(it) == 0
    elif how == "break":
        for x in make(fn, src, buffersize=buffersize):
            assert x == 0
            break
    else:
        it = make(fn, src, buffersize=buffersize)
        assert next(it) == 0
        del it
        gc.collect()
    # stopping returned although running tasks are still blocked
    assert sorted(finished) == [0]
    pulled = src.pulled
    assert pulled <= buffersize + 1
    release.set()
    backend.shutdown()
    assert src.pulled == pulled, "input was read after the iterator was stopped"
    # only task 0 and the tasks already running on the two workers may have run
    assert set(ran) <= set(range(1 + backend.workers)), sorted(ran)


# --- errors --------------------------------------------------------------------------------


def test_ordered_task_error_raises_at_its_position_and_cancels_the_rest(
    backend: Backend, release: threading.Event
) -> None:
    ran: list[int] = []

    def fn(x: int) -> int:
        ran.append(x)
        if x == 3:
            raise ValueError("bad item 3")
        if x > 3:
            release.wait(BLOCK_LIMIT)
        return x

    got: list[int] = []
    with pytest.raises(ValueError, match="bad item 3"):
        for x in backend.imap(fn, itertools.count(), buffersize=6):
            got.append(x)
    assert got == [0, 1, 2]
    release.set()
    backend.shutdown()
    # 4 and 5 may have been running on the two workers; later ones must have been cancelled
    assert set(ran) <= set(range(4 + backend.workers)), sorted(ran)


def test_unordered_task_error_raises_on_arrival(backend: Backend, release: threading.Event) -> None:
    ran: list[int] = []
    finished: list[int] = []

    def fn(x: int) -> int:
        ran.append(x)
        if x == 3:
            raise ValueError("bad item 3")
        if x > 3:
            release.wait(BLOCK_LIMIT)
        finished.append(x)
        return x

    got: list[int] = []
    with pytest.raises(ValueError, match="bad item 3"):
        for x in backend.imap_unordered(fn, itertools.count(), buffersize=6):
            got.append(x)
    assert set(got) <= {0, 1, 2}
    assert not any(x > 3 for x in finished), "the error must not wait for slower tasks"
    release.set()
    backend.shutdown()
    assert set(ran) <= set(range(4 + backend.workers)), sorted(ran)


@ordered_param
def test_error_inside_a_chunk_raises_at_its_item(backend: Backend, ordered: bool) -> None:
    def fn(x: int) -> int:
        if x == 4:
            raise KeyError(x)
        return x

    got: list[int] = []
    with pytest.raises(KeyError):
        for x in backend.iterate(ordered)(fn, range(9), chunksize=3, buffersize=1):
            got.append(x)
    # buffersize=1: chunks run one at a time, so the items before 4 arrive first in both modes
    assert got == [0, 1, 2, 3]


@ordered_param
@pytest.mark.parametrize("chunksize", [1, 3, None])
@pytest.mark.parametrize("fail_at", [0, 5])
def test_input_error_is_raised_after_already_pulled_items(
    backend: Backend, ordered: bool, chunksize: Optional[int], fail_at: int
) -> None:
    def source() -> Iterator[int]:
        yield from range(fail_at)
        raise RuntimeError("input broke")

    got: list[int] = []
    with pytest.raises(RuntimeError, match="input broke"):
        for x in backend.iterate(ordered)(square, source(), chunksize=chunksize):
            got.append(x)
    expected = [x * x for x in range(fail_at)]
    assert got == expected if ordered else sorted(got) == sorted(expected)


@ordered_param
def test_overall_timeout_raises_timeout_error(
    backend: Backend, ordered: bool, release: threading.Event
) -> None:
    def fn(x: int) -> int:
        if x == 1:
            release.wait(BLOCK_LIMIT)
        return x

    got: list[int] = []
    with pytest.raises(concurrent.futures.TimeoutError):  # 3.9/3.10: not the builtin
        for x in backend.iterate(ordered)(fn, range(5), timeout=0.2, buffersize=5):
            got.append(x)
    assert not release.is_set()
    assert 1 not in got
    if ordered:
        assert got == [0]


# --- argument checking ---------------------------------------------------------------------


@ordered_param
@pytest.mark.parametrize(
    "kwargs",
    [{"chunksize": 0}, {"chunksize": -2}, {"buffersize": 0}, {"buffersize": -1}],
    ids=["chunksize=0", "chunksize=-2", "buffersize=0", "buffersize=-1"],
)
def test_non_positive_sizes_are_value_errors(
    backend: Backend, ordered: bool, kwargs: dict[str, int]
) -> None:
    with pytest.raises(ValueError):
        list(backend.iterate(ordered)(square, range(3), **kwargs))


# --- the result iterator -------------------------------------------------------------------


@ordered_param
def test_len_exactly_when_every_input_is_sized(backend: Backend, ordered: bool) -> None:
    make = backend.iterate(ordered)
    assert len(make(square, range(7))) == 7
    assert len(make(pow, range(7), [2, 2, 2])) == 3
    assert len(make(square, [])) == 0
    sized = make(square, range(7))
    next(sized)
    assert len(sized) == 7, "len() is the total number of results"
    sized.close()
    for unsized in (make(square, iter(range(7))), make(pow, range(7), itertools.repeat(2))):
        assert not isinstance(unsized, collections.abc.Sized)
        with pytest.raises(TypeError):
            len(unsized)
        unsized.close()


@ordered_param
def test_result_iterator_is_context_manager_and_iterator(backend: Backend, ordered: bool) -> None:
    it = backend.iterate(ordered)(square, range(5))
    assert isinstance(it, mt.ResultIterator)
    with it as entered:
        assert entered is it
        assert next(it) in {0, 1, 4, 9, 16}
    with pytest.raises(StopIteration):
        next(it)
    it.close()  # closing twice is harmless


@pytest.mark.parametrize("kind", ["stateful", "stdlib"])
def test_tqdm_gets_total_from_sized_input(kind: str, prefix: str) -> None:
    b = Backend(kind, prefix)
    try:
        out = io.StringIO()
        bar = tqdm(b.imap(square, range(37)), file=out, mininterval=0)
        assert bar.total == 37
        assert list(bar) == [x * x for x in range(37)]
        bar.close()
        assert "37/37" in out.getvalue()
        unsized = tqdm(b.imap(square, iter(range(5))), file=io.StringIO())
        assert unsized.total is None
        assert list(unsized) == [0, 1, 4, 9, 16]
        unsized.close()
    finally:
        b.shutdown()


@ordered_param
def test_huge_range_streams(backend: Backend, ordered: bool) -> None:
    with backend.iterate(ordered)(square, range(10**20)) as it:
        got = list(itertools.islice(it, 10))
    if ordered:
        assert got == [x * x for x in range(10)]
    else:  # as completed: ten distinct squares from the first window of input
        roots = sorted(math.isqrt(v) for v in got)
        assert [r * r for r in roots] == sorted(got)
        assert len(set(roots)) == 10 and roots[-1] < 100


# --- Executor.map ----------------------------------------------------------------------------


def test_map_without_buffersize_submits_everything_before_returning(
    prefix: str, counting: Any
) -> None:
    ran: list[int] = []
    src = counting(range(20))
    ex = STPE(2, prefix)
    it = ex.map(ran.append, src)
    assert src.pulled == 20, "stdlib semantics: map reads all input up front"
    ex.shutdown(wait=True)
    assert sorted(ran) == list(range(20)), "all tasks run even if the result is never iterated"
    assert list(it) == [None] * 20


@pytest.mark.parametrize(("chunksize", "buffersize"), [(1, 4), (3, 2)])
def test_map_with_buffersize_is_lazy_and_bounded(
    prefix: str, counting: Any, chunksize: int, buffersize: int
) -> None:
    src = counting(itertools.count())
    bound = chunksize * buffersize
    with STPE(2, prefix) as ex:
        it = ex.map(square, src, chunksize=chunksize, buffersize=buffersize)
        assert src.pulled <= bound
        got = []
        for consumed, y in enumerate(itertools.islice(it, 200), start=1):
            got.append(y)
            assert src.pulled - consumed <= bound
        it.close()
    assert got == [x * x for x in range(200)]


@pytest.mark.parametrize("chunksize", [1, 4])
@pytest.mark.parametrize("buffersize", [None, 3])
def test_map_results_match_builtin_map(
    prefix: str, chunksize: int, buffersize: Optional[int]
) -> None:
    with STPE(3, prefix) as ex:
        assert list(
            ex.map(pow, range(40), [3] * 25, chunksize=chunksize, buffersize=buffersize)
        ) == list(map(pow, range(40), [3] * 25))
        assert list(ex.map(square, [], buffersize=buffersize)) == []


def test_map_error_raises_at_its_position(prefix: str) -> None:
    got = []
    with STPE(2, prefix) as ex, pytest.raises(ZeroDivisionError):
        for x in ex.map(lambda d: 12 // d, [6, 4, 3, 0, 2], buffersize=2):
            got.append(x)
    assert got == [2, 3, 4]


@pytest.mark.parametrize("buffersize", [None, 2])
def test_map_timeout(prefix: str, release: threading.Event, buffersize: Optional[int]) -> None:
    def fn(x: int) -> int:
        if x == 1:
            release.wait(BLOCK_LIMIT)
        return x

    got = []
    with STPE(2, prefix) as ex:
        try:
            with pytest.raises(concurrent.futures.TimeoutError):  # 3.9/3.10: not the builtin
                for x in ex.map(fn, range(4), timeout=0.2, buffersize=buffersize):
                    got.append(x)
        finally:
            release.set()
    assert got == [0]


@pytest.mark.parametrize(
    "kwargs",
    [{"chunksize": 0}, {"chunksize": -1}, {"buffersize": 0}, {"buffersize": -3}],
    ids=["chunksize=0", "chunksize=-1", "buffersize=0", "buffersize=-3"],
)
def test_map_rejects_non_positive_sizes(prefix: str, kwargs: dict[str, int]) -> None:
    with STPE(1, prefix) as ex, pytest.raises(ValueError):
        ex.map(square, range(3), **kwargs)


def test_map_close_before_iterating_cancels_queued_tasks(
    prefix: str, release: threading.Event
) -> None:
    ran: list[int] = []

    def fn(x: int) -> int:
        ran.append(x)
        release.wait(BLOCK_LIMIT)
        return x

    ex = STPE(1, prefix)
    try:
        it = ex.map(fn, itertools.count(), buffersize=4)
        it.close()
    finally:
        release.set()
        ex.shutdown(wait=True)
    assert len(ran) <= 1, f"tasks ran after close(): {ran}"
