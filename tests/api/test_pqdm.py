"""The pqdm compatibility layer: ``mtasklite.threads.pqdm`` and ``mtasklite.processes.pqdm``.

Every behaviour runs on both back ends (the ``backend`` fixture); process pools use the
default ``fork`` context except for one ``spawn`` case.  Whatever a worker process runs lives
in :mod:`support.tasks` and :mod:`support.specs`.  Nothing sleeps to synchronise: tasks that
must wait use events or barriers, and the tests that need a task to hang mark the sleep inside
it.
"""

from __future__ import annotations

import functools
import gc
import inspect
import io
import itertools
import multiprocessing
import os
import threading
from typing import Any, Callable, ClassVar, Iterator, Optional

import pytest
import tqdm
import tqdm.auto

import mtasklite as mt
from mtasklite import processes, threads
from mtasklite.constants import ArgumentPassing, ExceptionBehaviour
from mtasklite.windowing import AdaptiveChunkSize
from support import files, inputs, leaks, specs, tasks
from support.processes import open_fds

BLOCK_LIMIT = 10.0
FORK = multiprocessing.get_context("fork")
SPAWN = multiprocessing.get_context("spawn")


class Backend:
    """One pqdm flavour plus the matching synchronisation primitives."""

    def __init__(self, name: str):
        self.name = name
        self.threads = name == "threads"
        self.pqdm: Callable[..., mt.PoolResults] = threads.pqdm if self.threads else processes.pqdm

    def event(self) -> Any:
        return threading.Event() if self.threads else FORK.Event()

    def barrier(self, n: int) -> Any:
        return threading.Barrier(n) if self.threads else FORK.Barrier(n)

    def window_bound(self, jobs: int) -> int:
        """Most input items the default window (4 tasks per worker) holds: adaptive chunks of
        at most ``MAX_ITEMS``, or ``MAX_ITEMS_UNKNOWN_BYTES`` on threads (they measure no
        pickled sizes)."""
        cap = (
            AdaptiveChunkSize.MAX_ITEMS_UNKNOWN_BYTES
            if self.threads
            else AdaptiveChunkSize.MAX_ITEMS
        )
        return 4 * jobs * cap

    def __repr__(self) -> str:
        return self.name


@pytest.fixture(params=["threads", "processes"])
def backend(request: pytest.FixtureRequest) -> Backend:
    return Backend(request.param)


def share(**objects: Any) -> dict[str, Any]:
    """Pool kwargs that install ``objects`` in :data:`support.tasks.SHARED` of every worker."""
    return {"initializer": tasks.install, "initargs": (objects,)}


def last_line(output: str) -> str:
    """The final state of a tqdm bar written to a stream (``\\r`` separates redraws)."""
    return output.rstrip("\n").split("\r")[-1]


class RecordingBar(tqdm.tqdm):  # type: ignore[type-arg]
    """A tqdm subclass recording every instance and every ``update`` step."""

    instances: ClassVar[list[RecordingBar]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.steps: list[float] = []
        super().__init__(*args, **kwargs)
        RecordingBar.instances.append(self)

    def update(self, n: float = 1) -> Optional[bool]:
        self.steps.append(n)
        return super().update(n)


# --- the function and what it returns ----------------------------------------------------------


@pytest.mark.parametrize("module", [processes, threads], ids=["processes", "threads"])
def test_signature_keeps_pqdm_argument_order_and_defaults(module: Any) -> None:
    params = inspect.signature(module.pqdm).parameters
    assert list(params) == [
        "input_iterable",
        "worker_or_worker_arr",
        "n_jobs",
        "argument_type",
        "bounded",
        "exception_behaviour",
        "tqdm_class",
        "kwargs",
    ]
    assert params["n_jobs"].default is None
    assert params["argument_type"].default == "single_arg"
    assert params["bounded"].default is False
    assert params["exception_behaviour"].default == "ignore"
    assert params["tqdm_class"].default is tqdm.auto.tqdm
    assert params["kwargs"].kind is inspect.Parameter.VAR_KEYWORD


@pytest.mark.timeout(20)
def test_returns_lazy_iterable_that_list_consumes_without_with(backend: Backend) -> None:
    source = inputs.SizedCounter(10)
    results = backend.pqdm(source, tasks.double, 2, disable=True)
    assert not isinstance(results, list)
    assert source.pulled == 0, "nothing may be read before the results are iterated"
    assert iter(results) is results
    assert list(results) == [2 * i for i in range(10)]


@pytest.mark.timeout(20)
def test_result_is_a_context_manager_yielding_the_results(backend: Backend) -> None:
    with backend.pqdm(range(6), tasks.double, n_jobs=2, disable=True) as results:
        assert hasattr(results, "__exit__")
        assert list(results) == [0, 2, 4, 6, 8, 10]


@pytest.mark.timeout(20)
def test_positional_arguments_follow_pqdm_order(backend: Backend) -> None:
    # input, worker, n_jobs, argument_type, bounded, exception_behaviour, tqdm_class
    items = [(1, 2), (3, 4), (5, 6)]
    with backend.pqdm(items, tasks.add, 2, "args", True, "deferred", tqdm.tqdm, disable=True) as r:
        assert list(r) == [3, 7, 11]


@pytest.mark.timeout(20)
def test_len_for_sized_input_only(backend: Backend) -> None:
    with backend.pqdm(list(range(7)), tasks.double, 2, disable=True) as sized:
        assert len(sized) == 7
        assert len(list(sized)) == 7
    with backend.pqdm(iter(range(7)), tasks.double, 2, disable=True) as unsized:
        with pytest.raises(TypeError):
            len(unsized)
        assert list(unsized) == [2 * i for i in range(7)]


@pytest.mark.timeout(20)
def test_accepts_any_iterable(backend: Backend) -> None:
    def generate() -> Iterator[int]:
        yield from range(5)

    for source in (range(5), list(range(5)), tuple(range(5)), generate(), iter({0, 1, 2, 3, 4})):
        assert sorted(backend.pqdm(source, tasks.double, 2, disable=True)) == [0, 2, 4, 6, 8]


# --- workers -----------------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_single_job_still_runs_in_a_worker(backend: Backend) -> None:
    out = list(backend.pqdm(range(3), tasks.where, n_jobs=1, disable=True))
    assert [x for x, _, _ in out] == [0, 1, 2]
    if backend.threads:
        me = threading.current_thread().name
        assert all(name != me for _, _, name in out)
        assert all(name.startswith("mtasklite-pool") for _, _, name in out)
        assert all(pid == os.getpid() for _, pid, _ in out)
    else:
        assert all(pid != os.getpid() for _, pid, _ in out)
        assert len({pid for _, pid, _ in out}) == 1


@pytest.mark.timeout(30)
def test_list_of_stateful_workers_each_sees_its_own_arguments(backend: Backend) -> None:
    n = 3
    barrier = backend.barrier(n)  # each worker's first call waits for the others: work spreads
    workers = [specs.Tagged(f"w{i}", scale=i + 1, barrier=barrier) for i in range(n)]
    out = list(backend.pqdm(range(30), workers, disable=True))  # n_jobs from the list
    assert len(out) == 30
    assert not any(mt.is_exception(r) for r in out), out
    for x, (tag, value, index, _pid, _calls) in zip(range(30), out):
        assert tag == f"w{index}", "a worker object was built from another worker's arguments"
        assert value == (index + 1) * x
    assert {tag for tag, *_ in out} == {"w0", "w1", "w2"}, "the work was not spread"
    # each worker object is one stateful instance: its call counter runs 1, 2, 3, ...
    for tag in ("w0", "w1", "w2"):
        calls = [c for t, _, _, _, c in out if t == tag]
        assert sorted(calls) == list(range(1, len(calls) + 1))
    pids = {tag: {pid for t, _, _, pid, _ in out if t == tag} for tag in ("w0", "w1", "w2")}
    assert all(len(p) == 1 for p in pids.values())
    if not backend.threads:
        assert len(set.union(*pids.values())) == n
        assert os.getpid() not in set.union(*pids.values())


@pytest.mark.timeout(20)
def test_worker_list_may_mix_specs_and_functions(backend: Backend) -> None:
    workers = [specs.Tagged("spec"), functools.partial(tasks.add, b=100)]
    out = list(backend.pqdm(range(20), workers, 2, disable=True))
    for x, r in zip(range(20), out):
        if isinstance(r, tuple):
            assert r[:3] == ("spec", x, 0)  # the spec is worker 0's
        else:
            assert r == x + 100


def test_worker_list_with_mismatched_n_jobs_is_value_error(backend: Backend) -> None:
    with pytest.raises(ValueError):
        backend.pqdm(range(3), [tasks.double, tasks.double], n_jobs=3, disable=True)
    with pytest.raises(ValueError):
        backend.pqdm(range(3), [tasks.double, tasks.double, tasks.double], 1, disable=True)


@pytest.mark.timeout(20)
def test_worker_list_with_matching_n_jobs(backend: Backend) -> None:
    out = list(
        backend.pqdm(range(4), [specs.Tagged("a"), specs.Tagged("b")], n_jobs=2, disable=True)
    )
    assert [value for _, value, *_ in out] == [0, 1, 2, 3]
    assert all(tag == "ab"[index] for tag, _, index, *_ in out)


@pytest.mark.timeout(20)
def test_functools_partial_worker(backend: Backend) -> None:
    worker = functools.partial(tasks.scaled_sum, b=10, scale=3)
    assert list(backend.pqdm(range(6), worker, 2, disable=True)) == [(x + 10) * 3 for x in range(6)]


@pytest.mark.timeout(20)
def test_partial_worker_with_args_mode(backend: Backend) -> None:
    worker = functools.partial(tasks.scaled_sum, scale=2)
    items = [(1, 2), (3, 4)]
    assert list(backend.pqdm(items, worker, 2, "args", disable=True)) == [6, 14]


@pytest.mark.timeout(30)
def test_spawn_context_with_stateful_worker_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks, "MARKER", "set in the parent")
    workers = [specs.Tagged("s0", scale=10), specs.Tagged("s1", scale=20)]
    with processes.pqdm(range(8), workers, mp_context=SPAWN, chunk_size=2, disable=True) as r:
        out = list(r)
    assert [value // (10 * (index + 1)) for _, value, index, *_ in out] == list(range(8))
    assert all(tag == f"s{index}" for tag, _, index, *_ in out)
    assert all(pid != os.getpid() for *_, pid, _ in out)
    # the workers really were spawned: they imported support.tasks afresh
    assert list(processes.pqdm([1], tasks.marker, 1, mp_context=SPAWN, disable=True)) == [
        (1, "module default")
    ]


@pytest.mark.timeout(20)
def test_processes_use_the_default_fork_context(monkeypatch: pytest.MonkeyPatch) -> None:
    assert multiprocessing.get_start_method() == "fork"
    monkeypatch.setattr(tasks, "MARKER", "set in the parent")
    assert list(processes.pqdm([1, 2], tasks.marker, 1, disable=True)) == [
        (1, "set in the parent"),
        (2, "set in the parent"),
    ]


# --- typical upstream code runs unchanged -------------------------------------------------------


@pytest.mark.timeout(30)
def test_upstream_readme_usage_processes() -> None:
    from mtasklite import delayed_init  # noqa: F401  (what upstream code imports)
    from mtasklite.processes import pqdm

    input_arr = list(range(40))
    seen = []
    with pqdm(
        input_arr,
        [specs.Worker(i) for i in range(4)],
        n_jobs=4,
        bounded=True,
        exception_behaviour="immediate",
    ) as pbar:
        for r in pbar:
            seen.append(r)
    assert seen == [x * x for x in input_arr]


@pytest.mark.timeout(20)
def test_upstream_readme_usage_threads() -> None:
    from mtasklite.threads import pqdm

    seen = []
    with pqdm(
        range(20),
        [specs.Worker(i) for i in range(2)],
        2,
        bounded=True,
        exception_behaviour="ignore",
    ) as pbar:
        for r in pbar:
            seen.append(r)
    assert seen == [x * x for x in range(20)]


@pytest.mark.timeout(20)
def test_upstream_immediate_raises_workers_exception() -> None:
    from mtasklite.processes import pqdm

    pbar = pqdm(
        [1, 2, -3, 4],
        [specs.Worker(i) for i in range(2)],
        n_jobs=2,
        bounded=True,
        exception_behaviour="immediate",
    )
    with pytest.raises(ValueError, match="negative input -3"), pbar:
        for _ in pbar:
            pass


# --- argument passing --------------------------------------------------------------------------


ARGUMENT_CASES = [
    ("single_arg", tasks.double, [1, 2, 3], [2, 4, 6]),
    ("direct", tasks.double, [1, 2, 3], [2, 4, 6]),
    (ArgumentPassing.AS_SINGLE_ARG, tasks.double, [1, 2, 3], [2, 4, 6]),
    ("args", tasks.add, [(1, 2), (3, 4), [5]], [3, 7, 5]),
    (ArgumentPassing.AS_ARGS, tasks.add, [(1, 2), (3, 4)], [3, 7]),
    ("kwargs", tasks.add, [{"a": 1, "b": 2}, {"a": 3}], [3, 3]),
    (ArgumentPassing.AS_KWARGS, tasks.add, [{"b": 5, "a": 1}], [6]),
]


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("mode", "fn", "items", "expected"), ARGUMENT_CASES)
def test_argument_modes(
    backend: Backend, mode: Any, fn: Callable[..., Any], items: list[Any], expected: list[Any]
) -> None:
    assert list(backend.pqdm(items, fn, 2, mode, disable=True)) == expected


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("mode", "items", "bad"),
    [("kwargs", [{"a": 1}, 5, {"a": 2, "b": 3}], 5), ("args", [(1, 2), 7, (3,)], 7)],
)
def test_argument_mode_mismatch_fails_only_that_item(
    backend: Backend, mode: str, items: list[Any], bad: Any
) -> None:
    out = list(backend.pqdm(items, tasks.add, 2, mode, disable=True))
    assert mt.is_exception(out[1])
    assert isinstance(out[1], TypeError)
    assert mode in str(out[1]), f"the error should name the mode: {out[1]}"
    assert str(bad) in str(out[1])
    assert not mt.is_exception(out[0])
    assert not mt.is_exception(out[2])


def test_argument_mode_mismatch_raises_in_immediate_mode(backend: Backend) -> None:
    with pytest.raises(TypeError, match="kwargs"):
        list(backend.pqdm([{"a": 1}, 3], tasks.add, 1, "kwargs", False, "immediate", disable=True))


@pytest.mark.parametrize(
    "kwargs", [{"argument_type": "positional"}, {"exception_behaviour": "raise"}]
)
def test_unknown_mode_string_is_value_error_at_call_time(
    backend: Backend, kwargs: dict[str, Any]
) -> None:
    source = inputs.SizedCounter(3)
    with pytest.raises(ValueError):
        backend.pqdm(source, tasks.double, 1, disable=True, **kwargs)  # no iteration needed
    assert source.pulled == 0


def test_mode_constants() -> None:
    from mtasklite import constants

    assert constants.ArgumentPassing is mt.ArgumentPassing is ArgumentPassing
    assert constants.ExceptionBehaviour is mt.ExceptionBehaviour is ExceptionBehaviour
    assert ArgumentPassing.AS_SINGLE_ARG == "single_arg"
    assert ArgumentPassing.AS_ARGS == "args"
    assert ArgumentPassing.AS_KWARGS == "kwargs"
    assert ExceptionBehaviour.IGNORE == "ignore"
    assert ExceptionBehaviour.IMMEDIATE == "immediate"
    assert ExceptionBehaviour.DEFERRED == "deferred"
    assert mt.delayed_init is mt.delayed_init
    assert mt.is_exception(ValueError("x"))
    assert mt.is_exception(mt.TaskTimeoutError("x"))
    assert not mt.is_exception(ValueError)
    assert not mt.is_exception(None)
    assert not mt.is_exception("error")


# --- bounded / unbounded -----------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_unbounded_sized_input_is_submitted_up_front(backend: Backend) -> None:
    source = inputs.SizedCounter(60)
    with backend.pqdm(source, tasks.double, n_jobs=2, disable=True) as results:
        assert next(results) == 0
        assert source.pulled == 60


@pytest.mark.timeout(20)
def test_unbounded_sized_input_runs_everything_while_the_first_item_blocks(
    release: threading.Event,
) -> None:
    n = 40
    lock = threading.Lock()
    done = {"count": 0}
    all_others_ran = threading.Event()

    def work(x: int) -> int:
        if x == 0:
            release.wait(BLOCK_LIMIT)
        else:
            with lock:
                done["count"] += 1
                if done["count"] == n - 1:
                    all_others_ran.set()
        return x

    consumer_results: list[Any] = []
    with threads.pqdm(list(range(n)), work, n_jobs=2, disable=True) as results:
        consumer = threading.Thread(target=lambda: consumer_results.extend(results))
        consumer.start()
        try:
            # the consumer waits for item 0; the free worker must still run all the others
            ran_all = all_others_ran.wait(3.0)
        finally:
            release.set()
            consumer.join(BLOCK_LIMIT)
        assert consumer_results == list(range(n))
        assert ran_all, f"only {done['count']} of {n - 1} items ran while item 0 was blocked"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("sized", [True, False], ids=["sized", "unsized"])
def test_bounded_pulls_input_lazily(backend: Backend, sized: bool) -> None:
    n, jobs, ratio, chunk = 200, 2, 2, 3
    bound = ratio * jobs * chunk
    source: Any = inputs.SizedCounter(n) if sized else inputs.CountingIterator(range(n))
    out = []
    with backend.pqdm(
        source,
        tasks.double,
        jobs,
        bounded=True,
        chunk_size=chunk,
        chunk_prefill_ratio=ratio,
        disable=True,
    ) as results:
        for consumed, r in enumerate(results, 1):
            out.append(r)
            assert source.pulled <= consumed + bound, (consumed, source.pulled)
    assert out == [2 * i for i in range(n)]
    if sized:
        assert len(results) == n


@pytest.mark.timeout(20)
def test_unsized_infinite_input_runs_bounded_without_bounded_flag(backend: Backend) -> None:
    source = inputs.CountingIterator(itertools.count())
    got = []
    with backend.pqdm(source, tasks.double, 2, disable=True) as results:  # bounded=False
        for r in results:
            got.append(r)
            if len(got) == 30:
                break
        assert source.pulled <= 30 + backend.window_bound(2), source.pulled  # not "everything"
    assert got == [2 * i for i in range(30)]


@pytest.mark.timeout(20)
def test_bounded_run_stops_pulling_while_the_worker_is_blocked(release: threading.Event) -> None:
    jobs, ratio = 2, 3
    blocked = threading.Event()

    def work(x: int) -> int:
        if x >= 1:
            blocked.set()
            release.wait(BLOCK_LIMIT)
        return x

    source = inputs.CountingIterator(itertools.count())
    # One item per task, so the window is exactly ``ratio * jobs`` items.
    with threads.pqdm(
        source, work, jobs, bounded=True, chunk_prefill_ratio=ratio, chunk_size=1, disable=True
    ) as results:
        assert next(results) == 0
        waiter = threading.Thread(target=next, args=(results,))  # blocks on item 1
        waiter.start()
        try:
            assert blocked.wait(BLOCK_LIMIT)
            assert source.pulled <= ratio * jobs + 1, source.pulled
        finally:
            release.set()
            waiter.join(BLOCK_LIMIT)
        assert next(results) == 2
        assert source.pulled <= 3 + ratio * jobs


# --- exception behaviour -----------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_ignore_is_the_default_and_yields_exceptions_in_place(backend: Backend) -> None:
    out = list(backend.pqdm(range(6), tasks.fail_odd, 2, disable=True))
    assert [mt.is_exception(r) for r in out] == [False, True] * 3
    assert out[0::2] == [0, 4, 8]
    assert all(type(e) is tasks.Boom for e in out[1::2])
    assert [str(e) for e in out[1::2]] == ["odd 1", "odd 3", "odd 5"]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("mode", ["ignore", ExceptionBehaviour.IGNORE])
def test_ignore_mode_spelled_either_way(backend: Backend, mode: Any) -> None:
    out = list(backend.pqdm(range(4), tasks.fail_odd, 2, exception_behaviour=mode, disable=True))
    assert [mt.is_exception(r) for r in out] == [False, True, False, True]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("unordered", [False, True], ids=["ordered", "unordered"])
def test_immediate_raises_the_workers_own_exception(backend: Backend, unordered: bool) -> None:
    got = []
    results = backend.pqdm(
        range(10),
        tasks.fail_odd,
        2,
        exception_behaviour=ExceptionBehaviour.IMMEDIATE,
        is_unordered=unordered,
        disable=True,
    )
    with pytest.raises(tasks.Boom, match=r"^odd \d+$") as info, results:
        got.extend(results)
    assert type(info.value) is tasks.Boom
    if not unordered:
        assert str(info.value) == "odd 1"
        assert got == [0]
    assert all(not mt.is_exception(r) for r in got)


@pytest.mark.timeout(20)
def test_immediate_stops_reading_input(backend: Backend) -> None:
    source = inputs.CountingIterator(itertools.count())  # infinite: reading on would never end
    with pytest.raises(tasks.Boom, match="odd 1"):
        list(backend.pqdm(source, tasks.fail_odd, 2, exception_behaviour="immediate", disable=True))
    pulled = source.pulled
    assert pulled <= 1 + backend.window_bound(2)
    assert next(source) == pulled  # the input was left where the run stopped


@pytest.mark.timeout(20)
def test_immediate_cancels_queued_items_threads(release: threading.Event) -> None:
    started: list[int] = []

    def work(x: int) -> int:
        if x == 0:
            raise tasks.Boom("first item failed")
        started.append(x)
        release.wait(BLOCK_LIMIT)
        return x

    # join_timeout: closing does not wait for the one blocked item, so the error arrives now
    with pytest.raises(tasks.Boom, match="first item failed"):
        list(
            threads.pqdm(
                range(30), work, 1, "single_arg", False, "immediate", join_timeout=0.2, disable=True
            )
        )
    release.set()
    leaks.check(leaks.NOTHING, BLOCK_LIMIT)  # item 1 (if run) ended
    assert started in ([], [1]), f"items that were queued still ran: {started}"


@pytest.mark.timeout(20)
def test_immediate_cancels_queued_items_processes(tmp_path: Any) -> None:
    log = str(tmp_path / "started")
    worker = functools.partial(tasks.fail_first_then_hang, log=log)
    with pytest.raises(tasks.Boom, match="first item failed"):
        list(
            processes.pqdm(
                range(30),
                worker,
                1,
                "single_arg",
                False,
                "immediate",
                chunk_size=1,
                join_timeout=0.2,
                disable=True,
            )
        )
    leaks.check(leaks.NOTHING, BLOCK_LIMIT)  # the hung one was stopped
    assert files.read_lines(log) in ([], ["1"]), files.read_lines(log)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("mode", ["deferred", ExceptionBehaviour.DEFERRED])
def test_deferred_processes_everything_then_raises_all_in_input_order(
    backend: Backend, mode: Any
) -> None:
    assert issubclass(mt.DeferredExceptions, Exception)
    got = []
    with pytest.raises(mt.DeferredExceptions) as info:
        for r in backend.pqdm(range(9), tasks.fail_odd, 2, exception_behaviour=mode, disable=True):
            got.append(r)
    assert [r for r in got if not mt.is_exception(r)] == [0, 4, 8, 12, 16]
    assert all(type(e) is tasks.Boom for e in info.value.args)
    assert [str(e) for e in info.value.args] == ["odd 1", "odd 3", "odd 5", "odd 7"]


@pytest.mark.timeout(20)
def test_deferred_without_failures_raises_nothing(backend: Backend) -> None:
    assert list(
        backend.pqdm(range(5), tasks.double, 2, exception_behaviour="deferred", disable=True)
    )


@pytest.mark.timeout(20)
def test_deferred_unordered_still_reports_in_input_order(backend: Backend) -> None:
    # Item 0 fails only after the consumer has received a later item's failure, so the
    # failures complete out of input order.
    go = backend.event()
    got = []
    with pytest.raises(mt.DeferredExceptions) as info:
        for r in backend.pqdm(
            range(6),
            tasks.zero_waits_for_go_then_fail,
            2,
            exception_behaviour="deferred",
            is_unordered=True,
            chunk_size=1,
            disable=True,
            **share(go=go, go_after=None),
        ):
            got.append(r)
            if mt.is_exception(r) and str(r) != "bad 0":
                go.set()
    assert str(got[0]) != "bad 0", got
    assert sorted(r for r in got if not mt.is_exception(r)) == [4, 5]
    assert [str(e) for e in info.value.args] == ["bad 0", "bad 1", "bad 2", "bad 3"]


@pytest.mark.timeout(20)
def test_unordered_yields_in_completion_order(backend: Backend) -> None:
    # Item 0 cannot finish before the consumer has received some other item.
    go = backend.event()
    out = []
    for r in backend.pqdm(
        range(6),
        tasks.zero_waits_for_go,
        2,
        is_unordered=True,
        chunk_size=1,
        disable=True,
        **share(go=go, go_after=None),
    ):
        out.append(r)
        if r != 0:
            go.set()
    assert sorted(out) == list(range(6))
    assert out[0] != 0, out


@pytest.mark.timeout(20)
def test_ordered_is_the_default(backend: Backend) -> None:
    # Item 0 waits until item 7 has started, so later items finish first; order is kept.
    out = list(
        backend.pqdm(
            range(10),
            tasks.zero_waits_for_go,
            2,
            chunk_size=1,
            disable=True,
            **share(go=backend.event(), go_after=7),
        )
    )
    assert out == list(range(10))


# --- task_timeout ------------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_task_timeout_yields_timeout_error_threads(release: threading.Event) -> None:
    def work(x: int) -> int:
        if x == 2:
            release.wait(BLOCK_LIMIT)  # hangs past the limit; released at teardown
        return x * 2

    out = list(threads.pqdm(range(6), work, 2, task_timeout=0.3, disable=True))
    assert isinstance(out[2], mt.TaskTimeoutError)
    assert isinstance(out[2], TimeoutError)
    assert out[:2] + out[3:] == [0, 2, 6, 8, 10]


@pytest.mark.timeout(20)
def test_task_timeout_yields_timeout_error_processes() -> None:
    worker = functools.partial(tasks.hang_on, target=2)
    out = list(processes.pqdm(range(6), worker, 2, task_timeout=0.5, disable=True))
    assert isinstance(out[2], mt.TaskTimeoutError)
    assert out[:2] + out[3:] == [0, 2, 6, 8, 10]


# --- progress bar ------------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_bar_shows_total_for_sized_input(backend: Backend) -> None:
    buf = io.StringIO()
    assert len(list(backend.pqdm(range(25), tasks.double, 2, file=buf, desc="crunch"))) == 25
    output = buf.getvalue()
    final = last_line(output)
    assert "25/25" in final, output
    assert "100%" in final
    assert final.startswith("crunch")
    assert output.count("\n") == 1, f"more than one bar: {output!r}"


@pytest.mark.timeout(20)
def test_bar_shows_running_count_for_unsized_input(backend: Backend) -> None:
    buf = io.StringIO()
    assert len(list(backend.pqdm(iter(range(25)), tasks.double, 2, file=buf))) == 25
    final = last_line(buf.getvalue())
    assert "25it" in final, final
    assert "/" not in final.split("[")[0], final


@pytest.mark.timeout(20)
def test_disable_turns_the_bar_off(backend: Backend) -> None:
    buf = io.StringIO()
    assert list(backend.pqdm(range(5), tasks.double, 2, file=buf, disable=True)) == [0, 2, 4, 6, 8]
    assert buf.getvalue() == ""


@pytest.mark.timeout(30)
@pytest.mark.parametrize("chunk_size", [None, 7], ids=["default-chunks", "chunk7"])
def test_custom_bar_class_advances_per_item(backend: Backend, chunk_size: Optional[int]) -> None:
    RecordingBar.instances = []
    n = 300
    kwargs: dict[str, Any] = {"file": io.StringIO(), "mininterval": 0, "miniters": 1}
    if chunk_size is not None:
        kwargs["chunk_size"] = chunk_size
    out = list(backend.pqdm(range(n), tasks.double, 2, tqdm_class=RecordingBar, **kwargs))
    assert out == [2 * i for i in range(n)]
    assert len(RecordingBar.instances) == 1, "one bar only"
    bar = RecordingBar.instances[0]
    assert bar.total == n
    assert bar.n == n
    assert set(bar.steps) == {1}, f"the bar jumped: {sorted(set(bar.steps))}"
    assert sum(bar.steps) == n
    assert f"{n}/{n}" in last_line(kwargs["file"].getvalue())


@pytest.mark.timeout(20)
def test_custom_bar_class_sees_no_total_for_unsized_input(backend: Backend) -> None:
    RecordingBar.instances = []
    out = list(
        backend.pqdm(
            (i for i in range(9)),
            tasks.double,
            2,
            tqdm_class=RecordingBar,
            file=io.StringIO(),
            mininterval=0,
            miniters=1,
        )
    )
    assert len(out) == 9
    [bar] = RecordingBar.instances
    assert bar.total is None
    assert bar.n == 9


@pytest.mark.timeout(20)
def test_bar_total_can_be_overridden_through_kwargs(backend: Backend) -> None:
    RecordingBar.instances = []
    list(
        backend.pqdm(
            iter(range(4)), tasks.double, 2, tqdm_class=RecordingBar, total=4, file=io.StringIO()
        )
    )
    assert RecordingBar.instances[0].total == 4


@pytest.mark.timeout(20)
def test_tqdm_over_executor_imap_shows_a_total() -> None:
    buf = io.StringIO()
    with mt.StatefulThreadPoolExecutor(2, "mt-pqdm-imap") as ex:
        results = ex.imap(tasks.double, range(12))
        assert len(results) == 12
        bar = tqdm.tqdm(results, file=buf)
        assert bar.total == 12
        assert list(bar) == [2 * i for i in range(12)]
    assert "12/12" in last_line(buf.getvalue())


# --- keyword splitting -------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_pool_kwargs_reach_the_pool_and_the_rest_reach_tqdm(backend: Backend) -> None:
    buf = io.StringIO()
    got = list(
        backend.pqdm(
            range(6),
            tasks.double,
            2,
            chunk_size=2,
            chunk_prefill_ratio=1,
            is_unordered=False,
            task_timeout=30,
            join_timeout=5,
            file=buf,
            desc="split",
            ncols=60,
            leave=True,
            position=0,
            unit="item",
        )
    )
    assert got == [0, 2, 4, 6, 8, 10]
    final = last_line(buf.getvalue())
    assert final.startswith("split") and "6/6" in final and "item" in final, final


@pytest.mark.timeout(20)
def test_initializer_kwargs_reach_the_pool(backend: Backend) -> None:
    event = backend.event()
    event.set()
    out = list(
        backend.pqdm(
            range(4), tasks.zero_waits_for_go, 2, disable=True, **share(go=event, go_after=None)
        )
    )
    assert out == [0, 1, 2, 3]


def test_max_tasks_per_child_reaches_the_process_pool() -> None:
    # The process pool refuses max_tasks_per_child under fork: proof the option got there.
    with pytest.raises(ValueError, match="max_tasks_per_child"):
        processes.pqdm([1], tasks.double, 1, max_tasks_per_child=1, mp_context=FORK, disable=True)


def test_mp_context_reaches_the_process_pool() -> None:
    with pytest.raises((TypeError, AttributeError, ValueError)):
        processes.pqdm([1], tasks.double, 1, mp_context="not a context", disable=True)


@pytest.mark.parametrize(
    "extra",
    [
        {"use_threads": True},
    ],
)
def test_naming_an_explicit_parameter_again_in_kwargs_is_type_error(
    backend: Backend, extra: dict[str, Any]
) -> None:
    with pytest.raises(TypeError):
        backend.pqdm([1, 2], tasks.double, 2, disable=True, **extra)


def test_repeating_a_named_parameter_is_type_error(backend: Backend) -> None:
    pqdm: Any = backend.pqdm
    with pytest.raises(TypeError):
        pqdm([1], tasks.double, 2, n_jobs=2)
    with pytest.raises(TypeError):
        pqdm([1], tasks.double, 2, "single_arg", False, bounded=True)
    with pytest.raises(TypeError):
        pqdm([1], tasks.double, 2, "single_arg", False, "ignore", exception_behaviour="ignore")
    with pytest.raises(TypeError):
        pqdm([1], tasks.double, 2, "single_arg", argument_type="args")


def test_unknown_keyword_is_refused_without_leaking_workers(backend: Backend) -> None:
    # Not a pool option, so it goes to tqdm, which refuses it; the pool must not linger.
    with pytest.raises((TypeError, KeyError)):
        backend.pqdm(range(3), tasks.double, 2, chunksize=4, file=io.StringIO())


# --- cleanup -----------------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_list_without_with_leaves_no_workers(backend: Backend) -> None:
    before = leaks.snapshot()
    assert list(backend.pqdm(range(20), tasks.double, 3, disable=True)) == [
        2 * i for i in range(20)
    ]
    leaks.check(before, 5.0)


@pytest.mark.timeout(20)
def test_leaving_with_early_leaves_no_workers(backend: Backend) -> None:
    before = leaks.snapshot()
    with backend.pqdm(itertools.count(), tasks.double, 2, disable=True) as results:
        for r in results:
            if r == 6:
                break
        assert leaks.started_since(before)
    leaks.check(before, 5.0)


@pytest.mark.timeout(20)
def test_leaving_with_early_on_sized_input_leaves_no_workers(backend: Backend) -> None:
    before = leaks.snapshot()
    with backend.pqdm(range(1000), tasks.double, 2, disable=True) as results:
        assert next(results) == 0
    leaks.check(before, 5.0)


@pytest.mark.timeout(20)
def test_with_never_iterated_leaves_no_workers(backend: Backend) -> None:
    before = leaks.snapshot()
    with backend.pqdm(range(10), tasks.double, 2, disable=True):
        pass
    leaks.check(before, 5.0)


@pytest.mark.timeout(20)
def test_immediate_error_leaves_no_workers(backend: Backend) -> None:
    before = leaks.snapshot()
    with pytest.raises(tasks.Boom):
        list(
            backend.pqdm(
                range(10), tasks.fail_odd, 2, exception_behaviour="immediate", disable=True
            )
        )
    leaks.check(before, 5.0)


@pytest.mark.timeout(20)
def test_deferred_error_leaves_no_workers(backend: Backend) -> None:
    before = leaks.snapshot()
    with pytest.raises(mt.DeferredExceptions):
        list(
            backend.pqdm(range(10), tasks.fail_odd, 2, exception_behaviour="deferred", disable=True)
        )
    leaks.check(before, 5.0)


@pytest.mark.timeout(20)
def test_close_is_idempotent(backend: Backend) -> None:
    results = backend.pqdm(range(10), tasks.double, 2, disable=True)
    assert next(results) == 0
    results.close()
    results.close()
    with pytest.raises(StopIteration):
        next(results)


@pytest.mark.timeout(20)
def test_break_without_with_cleans_up_once_collected(backend: Backend) -> None:
    before = leaks.snapshot()
    for r in backend.pqdm(itertools.count(), tasks.double, 2, disable=True):
        if r > 10:
            break
    gc.collect()
    leaks.check(before, 5.0)


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param(Backend("threads"), id="threads"),
        pytest.param(
            Backend("processes"),
            id="processes",
        ),
    ],
)
def test_never_iterated_or_refused_runs_release_file_descriptors(backend: Backend) -> None:
    with backend.pqdm(range(3), tasks.double, 1, disable=True):  # warm up lazy resources
        pass
    gc.collect()
    before = open_fds()
    for _ in range(5):
        with backend.pqdm(range(3), tasks.double, 2, disable=True):
            pass
        with pytest.raises((TypeError, KeyError)):
            backend.pqdm(range(3), tasks.double, 2, not_a_tqdm_option=1, file=io.StringIO())
    gc.collect()
    assert open_fds() - before <= 2, f"{open_fds() - before} file descriptors leaked"


# --- more shapes of input and worker -----------------------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize("mode", ["ignore", "immediate", "deferred"])
def test_empty_input(backend: Backend, mode: str) -> None:
    RecordingBar.instances = []
    out = list(
        backend.pqdm(
            [],
            tasks.double,
            2,
            exception_behaviour=mode,
            tqdm_class=RecordingBar,
            file=io.StringIO(),
        )
    )
    assert out == []
    assert [bar.total for bar in RecordingBar.instances] == [0]  # tqdm draws total=0 as "0it"
    assert (
        list(backend.pqdm(iter([]), tasks.double, 2, exception_behaviour=mode, disable=True)) == []
    )


@pytest.mark.timeout(20)
def test_default_n_jobs(backend: Backend) -> None:
    assert list(backend.pqdm(range(5), tasks.double, disable=True)) == [0, 2, 4, 6, 8]


@pytest.mark.timeout(20)
def test_single_spec_is_built_once_per_worker(backend: Backend) -> None:
    spec = specs.Tagged("same", scale=2, barrier=backend.barrier(2))
    out = list(backend.pqdm(range(20), spec, n_jobs=2, disable=True))
    assert [value for _, value, *_ in out] == [2 * x for x in range(20)]
    assert {index for _, _, index, _, _ in out} == {0, 1}
    for worker in (0, 1):  # each worker has its own instance, counting its own calls
        calls = [c for _, _, index, _, c in out if index == worker]
        assert sorted(calls) == list(range(1, len(calls) + 1))


@pytest.mark.timeout(20)
def test_deferred_bar_still_ends_at_n(backend: Backend) -> None:
    buf = io.StringIO()
    with pytest.raises(mt.DeferredExceptions):
        list(backend.pqdm(range(9), tasks.fail_odd, 2, exception_behaviour="deferred", file=buf))
    assert "9/9" in last_line(buf.getvalue())


@pytest.mark.timeout(20)
def test_deferred_unordered_with_default_chunks(backend: Backend) -> None:
    n = 150
    with pytest.raises(mt.DeferredExceptions) as info:
        list(
            backend.pqdm(
                range(n),
                tasks.fail_odd,
                2,
                exception_behaviour="deferred",
                is_unordered=True,
                disable=True,
            )
        )
    assert [str(e) for e in info.value.args] == [f"odd {x}" for x in range(1, n, 2)]


@pytest.mark.timeout(20)
def test_ignore_mode_keeps_every_failure_of_a_chunk_in_place(backend: Backend) -> None:
    # Chunks of 8 that start with a failure and hold four: each failure lands at its own
    # position and the items between them still run.
    out = list(
        backend.pqdm(
            range(1, 17),
            tasks.fail_odd,
            2,
            exception_behaviour="ignore",
            chunk_size=8,
            disable=True,
        )
    )
    assert [mt.is_exception(r) for r in out] == [True, False] * 8
    assert out[1::2] == [x * 2 for x in range(2, 17, 2)]
    assert [str(e) for e in out[0::2]] == [f"odd {x}" for x in range(1, 17, 2)]
