"""``mtasklite.Pool``: the original mtasklite API (``with Pool(...) as pool: for r in pool(it)``).

Both back ends run (``use_threads``); process pools use the default ``fork`` context.
Everything a worker process runs lives in :mod:`support.tasks` and :mod:`support.specs`.
"""

from __future__ import annotations

import functools
import gc
import inspect
import itertools
import multiprocessing
import os
import threading
from typing import Any

import pytest

import mtasklite as mt
from mtasklite import ArgumentPassing, ExceptionBehaviour, Pool
from support import inputs, leaks, specs, tasks
from support.processes import open_fds

BLOCK_LIMIT = 10.0
FORK = multiprocessing.get_context("fork")


@pytest.fixture(params=[True, False], ids=["threads", "processes"])
def use_threads(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


# --- signature and exports ---------------------------------------------------------------------


def test_signature_matches_the_original_api() -> None:
    params = inspect.signature(Pool).parameters
    assert list(params)[:11] == [
        "worker_or_worker_arr",
        "n_jobs",
        "argument_type",
        "exception_behavior",
        "bounded",
        "chunk_size",
        "chunk_prefill_ratio",
        "is_unordered",
        "use_threads",
        "task_timeout",
        "join_timeout",
    ]
    defaults = {name: p.default for name, p in params.items()}
    assert defaults["n_jobs"] is None
    assert defaults["argument_type"] == "single_arg"
    assert defaults["exception_behavior"] == "immediate"
    assert defaults["bounded"] is True
    assert defaults["chunk_size"] is None
    assert defaults["chunk_prefill_ratio"] is None
    assert defaults["is_unordered"] is False
    assert defaults["use_threads"] is False
    assert defaults["task_timeout"] is None
    assert defaults["join_timeout"] is None


def test_exports() -> None:
    from mtasklite import constants

    assert mt.Pool is Pool
    assert constants.ArgumentPassing is ArgumentPassing
    assert constants.ExceptionBehaviour is ExceptionBehaviour
    assert {m.value for m in ArgumentPassing} == {"single_arg", "args", "kwargs"}
    assert {m.value for m in ExceptionBehaviour} == {"ignore", "immediate", "deferred"}
    assert ArgumentPassing("kwargs") is ArgumentPassing.AS_KWARGS
    assert ExceptionBehaviour("deferred") == "deferred"
    assert callable(mt.delayed_init)
    assert mt.is_exception(RuntimeError())
    assert not mt.is_exception(RuntimeError)


# --- typical upstream code ---------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_upstream_usage_with_positional_arguments() -> None:
    from mtasklite import Pool, delayed_init  # noqa: F401  (what upstream code imports)

    # worker_or_worker_arr, n_jobs, argument_type, exception_behavior, bounded, chunk_size,
    # chunk_prefill_ratio, is_unordered, use_threads, task_timeout, join_timeout
    with Pool(
        [specs.Worker(i) for i in range(2)],
        2,
        "single_arg",
        "immediate",
        True,
        None,
        None,
        False,
        False,
        None,
        None,
    ) as pool:
        results = []
        for r in pool(range(20)):
            results.append(r)
    assert results == [x * x for x in range(20)]


@pytest.mark.timeout(20)
def test_upstream_usage_threads_positional(use_threads: bool) -> None:
    with Pool(tasks.add, 2, "args", "ignore", True, 1, 2, False, use_threads) as pool:
        assert list(pool([(1, 2), (3, 4), (5,)])) == [3, 7, 5]


# --- workers -----------------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_runs_in_a_worker_even_with_one_job(use_threads: bool) -> None:
    with Pool(tasks.where, 1, use_threads=use_threads) as pool:
        out = list(pool(range(3)))
    if use_threads:
        assert all(name.startswith("mtasklite-pool") for _, _, name in out), out
        assert all(name != threading.current_thread().name for _, _, name in out)
    else:
        assert all(pid != os.getpid() for _, pid, _ in out)


@pytest.mark.timeout(30)
def test_worker_list_sets_the_job_count_and_each_keeps_its_arguments(use_threads: bool) -> None:
    n = 3
    barrier = threading.Barrier(n) if use_threads else FORK.Barrier(n)
    workers = [specs.Tagged(f"t{i}", scale=10**i, barrier=barrier) for i in range(n)]
    with Pool(workers, use_threads=use_threads) as pool:
        assert pool.num_workers == n
        out = list(pool(range(24)))
    assert not any(mt.is_exception(r) for r in out), out
    assert all(
        tag == f"t{index}" and value == 10**index * x
        for x, (tag, value, index, *_) in zip(range(24), out)
    )
    assert {tag for tag, *_ in out} == {"t0", "t1", "t2"}


@pytest.mark.timeout(20)
def test_single_spec_is_built_once_per_worker(use_threads: bool) -> None:
    barrier = threading.Barrier(2) if use_threads else FORK.Barrier(2)
    with Pool(specs.Tagged("same", barrier=barrier), 2, use_threads=use_threads) as pool:
        out = list(pool(range(20)))
    assert {index for _, _, index, _, _ in out} == {0, 1}
    for worker in (0, 1):  # each worker's own instance counts its own calls
        calls = [c for _, _, index, _, c in out if index == worker]
        assert sorted(calls) == list(range(1, len(calls) + 1))


def test_worker_list_with_mismatched_n_jobs_is_value_error(use_threads: bool) -> None:
    with pytest.raises(ValueError):
        Pool([tasks.double, tasks.double], 3, use_threads=use_threads)


@pytest.mark.timeout(20)
def test_functools_partial_worker(use_threads: bool) -> None:
    with Pool(functools.partial(tasks.scaled_sum, b=1, scale=5), 2, use_threads=use_threads) as p:
        assert list(p(range(4))) == [5, 10, 15, 20]


# --- results -----------------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_results_have_len_for_sized_input_only(use_threads: bool) -> None:
    with Pool(tasks.double, 2, use_threads=use_threads) as pool:
        sized = pool([1, 2, 3])
        assert isinstance(sized, mt.SizedPoolResults)
        assert len(sized) == 3
        assert list(sized) == [2, 4, 6]
        unsized = pool(iter([1, 2, 3]))
        assert isinstance(unsized, mt.PoolResults)
        with pytest.raises(TypeError):
            len(unsized)
        assert list(unsized) == [2, 4, 6]


@pytest.mark.timeout(20)
def test_pool_runs_several_iterables_and_survives_an_early_close(use_threads: bool) -> None:
    with Pool(tasks.double, 2, use_threads=use_threads) as pool:
        with pool(itertools.count()) as results:
            assert next(results) == 0
        first = pool(range(100))
        assert next(first) == 0
        first.close()
        assert list(pool(range(5))) == [0, 2, 4, 6, 8]
        assert list(pool(iter(range(3)))) == [0, 2, 4]


@pytest.mark.timeout(20)
def test_bounded_is_the_default_and_pulls_lazily(use_threads: bool) -> None:
    source = inputs.SizedCounter(100)
    with Pool(tasks.double, 2, chunk_size=2, chunk_prefill_ratio=3, use_threads=use_threads) as p:
        results = p(source)
        assert source.pulled == 0
        for consumed, r in enumerate(results, 1):
            assert r == 2 * (consumed - 1)
            assert source.pulled <= consumed + 3 * 2 * 2, (consumed, source.pulled)


@pytest.mark.timeout(20)
def test_unsized_input_runs_bounded_even_when_unbounded(use_threads: bool) -> None:
    source = inputs.CountingIterator(itertools.count())
    with Pool(tasks.double, 2, bounded=False, chunk_size=1, use_threads=use_threads) as pool:
        results = pool(source)
        for consumed, _ in enumerate(results, 1):
            assert source.pulled <= consumed + 4 * 2
            if consumed == 25:
                break


@pytest.mark.timeout(20)
def test_unbounded_sized_input_is_submitted_up_front(use_threads: bool) -> None:
    source = inputs.SizedCounter(50)
    with Pool(tasks.double, 2, bounded=False, use_threads=use_threads) as pool:
        results = pool(source)
        assert next(results) == 0
        assert source.pulled == 50


@pytest.mark.timeout(20)
def test_unordered(use_threads: bool) -> None:
    # Item 0 cannot finish before the consumer has received some other item.
    go = threading.Event() if use_threads else FORK.Event()
    out = []
    with Pool(
        tasks.zero_waits_for_go,
        2,
        chunk_size=1,
        is_unordered=True,
        use_threads=use_threads,
        initializer=tasks.install,
        initargs=({"go": go, "go_after": None},),
    ) as pool:
        for r in pool(range(6)):
            out.append(r)
            if r != 0:
                go.set()
    assert sorted(out) == list(range(6))
    assert out[0] != 0, out


# --- argument passing --------------------------------------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("mode", "items", "expected"),
    [
        ("single_arg", [1, 2], [1, 2]),
        ("direct", [1, 2], [1, 2]),
        (ArgumentPassing.AS_ARGS, [(1, 2), (3,)], [3, 3]),
        ("args", [[4, 5]], [9]),
        (ArgumentPassing.AS_KWARGS, [{"a": 1, "b": 2}], [3]),
        ("kwargs", [{"a": 7}], [7]),
    ],
)
def test_argument_modes(use_threads: bool, mode: Any, items: list[Any], expected: Any) -> None:
    with Pool(tasks.add, 2, mode, use_threads=use_threads) as pool:
        assert pool.argument_type == ("single_arg" if mode == "direct" else mode)
        assert list(pool(items)) == expected


@pytest.mark.timeout(20)
def test_argument_mismatch_fails_that_item(use_threads: bool) -> None:
    with Pool(tasks.add, 2, "kwargs", "ignore", use_threads=use_threads) as pool:
        out = list(pool([{"a": 1}, (1, 2), {"a": 2, "b": 2}]))
    assert out[0] == 1
    assert out[2] == 4
    assert isinstance(out[1], TypeError)
    assert "kwargs" in str(out[1])


def test_unknown_modes_are_value_errors() -> None:
    with pytest.raises(ValueError, match="argument_type"):
        Pool(tasks.double, 1, "star", use_threads=True)
    with pytest.raises(ValueError, match="exception"):
        Pool(tasks.double, 1, "single_arg", "silent", use_threads=True)


@pytest.mark.parametrize("name", ["chunk_size", "chunk_prefill_ratio"])
@pytest.mark.parametrize("bad", [0, -2, True, 1.5])
def test_bad_chunk_settings_are_value_errors(name: str, bad: Any) -> None:
    with pytest.raises(ValueError, match=name):
        Pool(tasks.double, 1, use_threads=True, **{name: bad})


# --- exception behaviour -----------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_immediate_is_the_default_and_the_pool_stays_usable(use_threads: bool) -> None:
    with Pool(tasks.fail_odd, 2, use_threads=use_threads) as pool:
        got = []
        with pytest.raises(tasks.Boom, match=r"^odd 1$"):
            for r in pool(range(10)):
                got.append(r)
        assert got == [0]
        assert list(pool([0, 2, 4])) == [0, 4, 8]


@pytest.mark.timeout(20)
def test_immediate_stops_reading_input(use_threads: bool) -> None:
    source = inputs.CountingIterator(itertools.count())
    pool = Pool(tasks.fail_odd, 2, chunk_size=1, use_threads=use_threads)
    with pool, pytest.raises(tasks.Boom):
        list(pool(source))
    assert source.pulled <= 2 + 4 * 2


@pytest.mark.timeout(20)
def test_ignore(use_threads: bool) -> None:
    with Pool(tasks.fail_odd, 2, "single_arg", "ignore", use_threads=use_threads) as pool:
        out = list(pool(range(4)))
    assert out[0::2] == [0, 4]
    assert [type(e) for e in out[1::2]] == [tasks.Boom, tasks.Boom]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("unordered", [False, True], ids=["ordered", "unordered"])
@pytest.mark.parametrize("chunk_size", [1, 3, None], ids=["chunk1", "chunk3", "adaptive"])
def test_deferred_reports_every_failure_in_input_order(
    use_threads: bool, unordered: bool, chunk_size: Any
) -> None:
    n = 60
    with Pool(
        tasks.fail_odd,
        2,
        "single_arg",
        ExceptionBehaviour.DEFERRED,
        chunk_size=chunk_size,
        is_unordered=unordered,
        use_threads=use_threads,
    ) as pool:
        got = []
        with pytest.raises(mt.DeferredExceptions) as info:
            for r in pool(range(n)):
                got.append(r)
    assert sorted(r for r in got if not mt.is_exception(r)) == [2 * x for x in range(0, n, 2)]
    assert [str(e) for e in info.value.args] == [f"odd {x}" for x in range(1, n, 2)]


@pytest.mark.timeout(20)
def test_task_timeout_in_ignore_mode() -> None:
    release = threading.Event()

    def work(x: int) -> int:
        if x == 1:
            release.wait(BLOCK_LIMIT)  # hangs past the limit
        return x

    try:
        with Pool(work, 2, "single_arg", "ignore", use_threads=True, task_timeout=0.3) as pool:
            out = list(pool(range(4)))
    finally:
        release.set()
    assert isinstance(out[1], mt.TaskTimeoutError)
    assert [out[0], out[2], out[3]] == [0, 2, 3]


@pytest.mark.timeout(20)
def test_task_timeout_in_ignore_mode_processes() -> None:
    with Pool(
        functools.partial(tasks.hang_on, target=1), 2, "single_arg", "ignore", task_timeout=0.5
    ) as pool:
        out = list(pool(range(4)))
    assert isinstance(out[1], mt.TaskTimeoutError)
    assert [out[0], out[2], out[3]] == [0, 4, 6]


# --- cleanup -----------------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_thread_pool_threads_are_named_and_gone_after_with() -> None:
    before = leaks.snapshot()
    with Pool(tasks.where, 3, use_threads=True) as pool:
        names = {name for _, _, name in pool(range(30))}
        assert names and all(n.startswith("mtasklite-pool") for n in names), names
    leaks.check(before, 5.0)
    assert not [t for t in threading.enumerate() if t.name in names and t.is_alive()]


@pytest.mark.timeout(20)
def test_process_pool_workers_are_gone_after_with() -> None:
    before = leaks.snapshot()
    with Pool(tasks.where, 2) as pool:
        pids = {pid for _, pid, _ in pool(range(10))}
        assert os.getpid() not in pids
        assert {p.pid for p in multiprocessing.active_children()} >= pids
    leaks.check(before, 5.0)
    assert not pids & {p.pid for p in multiprocessing.active_children()}


@pytest.mark.timeout(20)
def test_break_inside_with_leaves_no_workers(use_threads: bool) -> None:
    before = leaks.snapshot()
    with Pool(tasks.double, 2, use_threads=use_threads) as pool:
        for r in pool(itertools.count()):
            if r > 10:
                break
    leaks.check(before, 5.0)


@pytest.mark.timeout(20)
def test_close_and_terminate_are_idempotent(use_threads: bool) -> None:
    pool = Pool(tasks.double, 2, use_threads=use_threads)
    assert list(pool(range(3))) == [0, 2, 4]
    pool.close()
    pool.close()
    pool.terminate()
    with pytest.raises(RuntimeError):
        list(pool(range(3)))


@pytest.mark.timeout(20)
def test_join_timeout_stops_a_hung_task_instead_of_waiting() -> None:
    started = FORK.Event()
    outcome: list[Any] = []
    with Pool(
        tasks.signal_then_hang,
        1,
        "single_arg",
        "ignore",
        join_timeout=0.2,
        initializer=tasks.install,
        initargs=({"started": started},),
    ) as pool:
        results = pool([0, 1])
        consumer = threading.Thread(target=lambda: outcome.append(next(results)))
        consumer.start()  # waits for the hung item until the pool stops it
        assert started.wait(BLOCK_LIMIT)
    consumer.join(BLOCK_LIMIT)
    assert not consumer.is_alive()
    assert len(outcome) == 1 and mt.is_exception(outcome[0]), outcome


@pytest.mark.timeout(20)
def test_keyboard_interrupt_in_with_terminates_hung_workers() -> None:
    started = FORK.Event()
    outcome: list[Any] = []
    pool = Pool(
        tasks.signal_then_hang,
        1,
        "single_arg",
        "ignore",
        initializer=tasks.install,
        initargs=({"started": started},),
    )
    with pytest.raises(KeyboardInterrupt), pool:  # no join_timeout: only terminate() helps
        results = pool([0, 1])
        consumer = threading.Thread(target=lambda: outcome.append(next(results)))
        consumer.start()
        assert started.wait(BLOCK_LIMIT)
        raise KeyboardInterrupt
    consumer.join(BLOCK_LIMIT)
    assert not consumer.is_alive()
    assert len(outcome) == 1 and mt.is_exception(outcome[0]), outcome


@pytest.mark.parametrize(
    "use_threads",
    [
        pytest.param(True, id="threads"),
        pytest.param(False, id="processes"),
    ],
)
def test_unused_pool_releases_its_file_descriptors(use_threads: bool) -> None:
    """A pool that never ran a task holds no file descriptor once closed: the process
    pool's wakeup pipe is opened only by ``Dispatcher.launch`` (the first task) and closed
    by the dispatcher thread when it exits."""
    Pool(tasks.double, 1, use_threads=use_threads).close()  # warm up lazily created resources
    gc.collect()
    before = open_fds()
    for _ in range(10):
        with Pool(tasks.double, 2, use_threads=use_threads):
            pass
    gc.collect()
    assert open_fds() - before <= 2, f"{open_fds() - before} file descriptors leaked"
