"""StatefulDaskExecutor against a real LocalCluster (two worker processes, no mocks).

The cluster is started once for the module.  Helpers below run on the Dask workers, which
import this module by name (spawned workers inherit the test process's ``sys.path``); their
module-level counters therefore live in each worker process.  Nothing sleeps: tasks that must
block wait on a ``distributed.Event`` the test sets.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import itertools
import os
import signal
import threading
import time
import uuid
from typing import Any, Callable

import pytest

distributed = pytest.importorskip("distributed")

import mtasklite as mt  # noqa: E402
from mtasklite.dask import StatefulDaskExecutor, _instances  # noqa: E402

pytestmark = pytest.mark.timeout(60)

#: Upper bound for any single wait on a result (never reached when things work).
LIMIT = 30.0

# --- helpers that run on the workers --------------------------------------------------------

#: tag -> how many objects with that tag this (worker) process has built
_builds: collections.Counter[str] = collections.Counter()


@mt.delayed_init
class Tagger:
    """A stateful worker: remembers its tag and how many calls it served."""

    def __init__(self, tag: str, fail: bool = False):
        if fail:
            raise OSError(f"cannot load model {tag}")
        _builds[tag] += 1
        self.tag = tag
        self.calls = 0

    def __call__(self, x: Any) -> tuple[str, int, int, Any, int, Any]:
        assert mt.current_worker() is self
        self.calls += 1
        return (self.tag, os.getpid(), _builds[self.tag], mt.worker_index(), self.calls, x)


def square(x: int) -> int:
    return x * x


def where(x: Any) -> tuple[Any, int, Any]:
    return (mt.worker_index(), os.getpid(), x)


def fail_on(bad: int, x: int) -> int:
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def gated(gate: str, x: Any) -> tuple[str, int, int, Any, int, Any]:
    """Wait for the cluster-wide event ``gate``, then run the worker's own object."""
    assert distributed.Event(gate).wait(LIMIT), "gate never opened"
    result: tuple[str, int, int, Any, int, Any] = mt.current_worker()(x)
    return result


def spin(seconds: float) -> str:
    """Burn CPU in pure Python (an asynchronous exception can stop it)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return "finished"


def timed_threads_left() -> int:
    """Wait for abandoned helper threads on this worker to stop; how many are still alive."""
    others = [
        t
        for t in threading.enumerate()
        if t.name == "mtasklite-dask-timed" and t is not threading.current_thread()
    ]
    for thread in others:
        thread.join(LIMIT)
    return sum(t.is_alive() for t in others)


def instances_of(token: str) -> int:
    return sum(key[0] == token for key in _instances)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(dask_client: Any) -> Any:
    """The shared cluster's client (the ``dask_client`` fixture: two worker processes)."""
    return dask_client


def worker_pids(client: Any) -> dict[Any, int]:
    """Dask worker name -> pid."""
    pids = client.run(os.getpid)
    names = {a: w["name"] for a, w in client.scheduler_info()["workers"].items()}
    return {names[a]: pid for a, pid in pids.items()}


# --- stateful workers -----------------------------------------------------------------------


def test_pinned_specs_build_once_per_worker_with_their_own_arguments(client: Any) -> None:
    a, b = unique("a"), unique("b")
    with StatefulDaskExecutor(client, worker=[Tagger(a), Tagger(b)]) as ex:
        assert ex._max_workers == 2
        out = list(ex.imap(ex.worker, range(60), chunksize=1))
        out += list(ex.imap(ex.worker, range(60, 200)))  # adaptive chunks, same objects
    assert [r[-1] for r in out] == list(range(200))
    by_tag = {tag: [r for r in out if r[0] == tag] for tag in (a, b)}
    assert by_tag[a] and by_tag[b]
    assert {r[3] for r in by_tag[a]} == {0} and {r[3] for r in by_tag[b]} == {1}
    pids = worker_pids(client)
    assert {r[1] for r in by_tag[a]} == {pids[0]} and {r[1] for r in by_tag[b]} == {pids[1]}
    assert {r[2] for r in out} == {1}, "each spec is built once"
    for rows in by_tag.values():  # one object served every call routed to it, in turn
        assert sorted(r[4] for r in rows) == list(range(1, len(rows) + 1))


def test_replicated_spec_builds_once_per_dask_worker(client: Any) -> None:
    tag = unique("r")
    with StatefulDaskExecutor(client, worker=Tagger(tag)) as ex:
        futures = [ex.submit(ex.worker, i) for i in range(40)]
        out = [f.result(LIMIT) for f in futures]
    pids = worker_pids(client)
    assert {r[2] for r in out} == {1}
    for _, pid, _, index, _, _ in out:  # worker_index() is the Dask worker's name
        assert pids[index] == pid
    calls = collections.defaultdict(list)
    for r in out:
        calls[r[1]].append(r[4])
    for counts in calls.values():
        assert sorted(counts) == list(range(1, len(counts) + 1))


def test_worker_context_without_worker_spec(client: Any) -> None:
    with StatefulDaskExecutor(client) as ex:
        assert ex._max_workers == 2  # worker threads in the cluster
        with pytest.raises(AttributeError, match="without worker="):
            _ = ex.worker
        index, pid, _ = ex.submit(where, 1).result(LIMIT)
        assert worker_pids(client)[index] == pid
    assert mt.worker_index() is None and mt.current_worker() is None


def test_more_specs_than_workers_is_refused(client: Any) -> None:
    with pytest.raises(ValueError, match="3 specs but the cluster has 2 workers"):
        StatefulDaskExecutor(client, worker=[Tagger("x"), Tagger("y"), Tagger("z")])
    with pytest.raises(TypeError):
        StatefulDaskExecutor(object())


def test_failing_constructor_breaks_the_executor(client: Any) -> None:
    with StatefulDaskExecutor(client, worker=Tagger("m", fail=True)) as ex:
        with pytest.raises(mt.WorkerInitError, match="cannot load model m"):
            ex.submit(ex.worker, 1).result(LIMIT)
        with pytest.raises(mt.WorkerInitError):
            ex.submit(ex.worker, 2)


# --- lazy, bounded input --------------------------------------------------------------------


def test_imap_pulls_an_unsized_input_lazily(client: Any, counting: Callable[..., Any]) -> None:
    with StatefulDaskExecutor(client) as ex:
        source = counting(x for x in range(1000))
        results = ex.imap(square, source, buffersize=3, chunksize=1)
        assert source.pulled == 0  # nothing is read before the first next()
        assert next(results) == 0
        assert source.pulled == 3
        assert [next(results) for _ in range(5)] == [1, 4, 9, 16, 25]
        assert source.pulled <= 3 + 6
        results.close()
        assert source.pulled <= 3 + 6
        # An infinite input, which Client.map cannot take at all.
        with ex.imap_unordered(square, itertools.count(), buffersize=4) as endless:
            got = list(itertools.islice(endless, 30))
        assert len(set(got)) == 30 and all(int(g**0.5) ** 2 == g for g in got)


def test_generic_imap_over_dask_client_executor(client: Any, counting: Callable[..., Any]) -> None:
    executor = client.get_executor()
    source = counting(iter(range(50)))
    results = mt.imap(executor, square, source, buffersize=4)
    assert next(results) == 0 and source.pulled <= 4
    assert list(results) == [x * x for x in range(1, 50)]
    chunked = mt.imap_unordered(executor, square, range(50), chunksize=7)
    assert sorted(chunked) == [x * x for x in range(50)]


# --- results ------------------------------------------------------------------------------


def test_ordered_and_unordered_results(client: Any) -> None:
    expected = [x * x for x in range(120)]
    with StatefulDaskExecutor(client) as ex:
        for chunksize, n in ((1, 40), (5, 120), (None, 120)):
            ordered = ex.imap(square, range(n), chunksize=chunksize)
            assert isinstance(ordered, mt.SizedResultIterator) and len(ordered) == n
            assert list(ordered) == expected[:n]
            unordered = ex.imap_unordered(square, range(n), chunksize=chunksize)
            assert sorted(unordered) == expected[:n]
        assert list(ex.map(pow, range(6), itertools.repeat(3), buffersize=2)) == [
            x**3 for x in range(6)
        ]
        assert list(ex.map(square, range(30), timeout=LIMIT)) == expected[:30]
        futures = [ex.submit(square, x) for x in range(20)]
        done = {f.result() for f in concurrent.futures.as_completed(futures, timeout=LIMIT)}
        assert done == set(expected[:20])


def pair(a: Any, b: Any = None) -> tuple[Any, Any]:
    return (a, b)


def test_dask_futures_in_arguments_are_resolved(client: Any) -> None:
    data = client.scatter([1, 2, 3], broadcast=True)
    with StatefulDaskExecutor(client) as ex:
        assert ex.submit(pair, data, b={"d": data}).result(LIMIT) == ([1, 2, 3], {"d": [1, 2, 3]})
        assert list(ex.imap(len, [data, data], chunksize=2)) == [3, 3]


def test_task_exceptions(client: Any) -> None:
    with StatefulDaskExecutor(client) as ex:
        error = ex.submit(fail_on, 3, 3).exception(LIMIT)
        assert isinstance(error, ValueError) and str(error) == "bad item 3"
        assert error.__traceback__ is not None  # the remote traceback travels with it
        for chunksize in (1, 4):
            results = ex.imap(functools.partial(fail_on, 7), range(20), chunksize=chunksize)
            assert [next(results) for _ in range(7)] == list(range(7))
            with pytest.raises(ValueError, match="bad item 7"):
                next(results)
        mixed = list(
            ex._imap(functools.partial(fail_on, 2), (range(5),), True, None, 2, None, None, True)
        )
        assert [m if not isinstance(m, ValueError) else "err" for m in mixed] == [
            0,
            1,
            "err",
            3,
            4,
        ]
        assert ex.submit(square, 9).result(LIMIT) == 81  # the executor goes on


def test_task_timeout_abandons_the_call_and_rebuilds_the_object(client: Any) -> None:
    tag = unique("t")
    with StatefulDaskExecutor(client, worker=[Tagger(tag)], task_timeout=0.5) as ex:
        first = ex.submit(ex.worker, "warm").result(LIMIT)
        assert first[2] == 1
        started = time.monotonic()
        with pytest.raises(
            mt.TaskTimeoutError,
            match=r"^task spin\(30\.0\) exceeded its 0\.5 s limit in worker 0 \(Dask worker ",
        ):
            ex.submit(spin, LIMIT).result(LIMIT)
        assert time.monotonic() - started < LIMIT / 2
        after = ex.submit(ex.worker, "again").result(LIMIT)
        assert after[1] == first[1] and after[2] == 2, "same process, a freshly built object"
        assert ex.submit_with_timeout(None, spin, 0.01).result(LIMIT) == "finished"
        assert ex.submit(timed_threads_left).result(LIMIT) == 0  # the spinner was stopped
        with pytest.raises(mt.TaskTimeoutError):
            list(ex.imap(spin, [0.0, LIMIT], task_timeout=0.3))


# --- cancellation and shutdown ------------------------------------------------------------


def test_cancel_and_shutdown(client: Any) -> None:
    gate = distributed.Event(unique("gate"))
    tag = unique("c")
    ex = StatefulDaskExecutor(client, worker=[Tagger(tag)])
    try:
        running = ex.submit(gated, gate.name, "first")
        queued = [ex.submit(gated, gate.name, i) for i in range(3)]
        assert queued[0].cancel() and queued[0].cancelled()
        done, _ = concurrent.futures.wait(queued[:1], timeout=LIMIT)
        assert done == {queued[0]}
        gate.set()
        assert running.result(LIMIT)[-1] == "first"
        assert [f.result(LIMIT)[-1] for f in queued[1:]] == [1, 2]
        assert sum(client.run(instances_of, ex._token).values()) == 1  # one pinned object
    finally:
        gate.set()
        ex.shutdown(wait=True, cancel_futures=True)
    with pytest.raises(RuntimeError, match="after shutdown") as refused:
        ex.submit(square, 1)
    # The same words as the thread and process pools, naming lazy imap results as the cause.
    with mt.StatefulThreadPoolExecutor(1, "mt-dask-words") as threads:
        pass
    with pytest.raises(RuntimeError) as thread_refused:
        threads.submit(square, 1)
    assert str(refused.value) == str(thread_refused.value)
    assert set(client.run(instances_of, ex._token).values()) == {0}, "workers forgot the state"


def test_shutdown_cancel_futures_cancels_pending_work(client: Any) -> None:
    gate = distributed.Event(unique("gate"))
    ex = StatefulDaskExecutor(client, worker=[Tagger(unique("s"))])
    try:
        futures = [ex.submit(gated, gate.name, i) for i in range(4)]
        ex.shutdown(wait=False, cancel_futures=True)
        assert all(f.cancelled() for f in futures)
    finally:
        gate.set()
        ex.shutdown(wait=True)


# --- a dying worker -------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_killed_worker_is_replaced_and_its_spec_rebuilt(client: Any) -> None:
    a, b = unique("ka"), unique("kb")
    gate = distributed.Event(unique("gate"))
    with StatefulDaskExecutor(client, worker=[Tagger(a), Tagger(b)]) as ex:
        before = list(ex.map(ex.worker, range(4)))
        victim = next(r[1] for r in before if r[3] == 0)
        # Two calls per spec, all held at the gate while worker 0 dies under them.
        futures = [ex.submit(gated, gate.name, i) for i in range(4)]
        os.kill(victim, signal.SIGKILL)
        gate.set()
        after = [f.result(LIMIT) for f in futures]
        assert [r[-1] for r in after] == [0, 1, 2, 3]
        for tag, _, builds, index, _, _ in after:
            assert tag == (a if index == 0 else b)
            assert builds == 1  # built once in each process that served it
        new = {r[1] for r in after if r[3] == 0}
        assert victim not in new and len(new) == 1, "spec 0 moved to the restarted worker"
        assert ex.submit(ex.worker, "later").result(LIMIT)[0] in (a, b)
    client.wait_for_workers(2, timeout=LIMIT)


@pytest.mark.timeout(90)
def test_killed_worker_replicated_spec_rebuilds_on_replacement(client: Any) -> None:
    tag = unique("kr")
    gate = distributed.Event(unique("gate"))
    with StatefulDaskExecutor(client, worker=Tagger(tag)) as ex:
        client.wait_for_workers(2, timeout=LIMIT)
        victim = worker_pids(client)[1]
        futures = [ex.submit(gated, gate.name, i) for i in range(4)]
        os.kill(victim, signal.SIGKILL)
        gate.set()
        out = [f.result(LIMIT) for f in futures]  # Dask reruns the lost ones elsewhere
        client.wait_for_workers(2, timeout=LIMIT)
        replacement = worker_pids(client)[1]
        out += list(ex.imap(ex.worker, range(4, 60), chunksize=1))
    assert [r[-1] for r in out] == list(range(60))
    assert {r[2] for r in out} == {1}, "every process built its own object exactly once"
    assert victim not in {r[1] for r in out[4:]}
    assert replacement in {r[1] for r in out}, "the replacement worker served calls too"


def test_pqdm_moves_to_the_cluster_with_one_argument(client: Any) -> None:
    from mtasklite.processes import pqdm

    a, b = unique("pa"), unique("pb")
    with pqdm(iter(range(20)), [Tagger(a), Tagger(b)], client=client, disable=True) as results:
        out = list(results)
    assert [r[-1] for r in out] == list(range(20))
    assert {(r[0], r[3]) for r in out} == {(a, 0), (b, 1)}
    assert {r[2] for r in out} == {1}


@pytest.mark.timeout(120)
def test_a_spec_used_as_the_function_is_built_once_per_dask_worker_thread(client: Any) -> None:
    # As on the thread and process pools (issue 20): one object per worker, kept, calls never
    # overlapping; before, a Dask task built the spec anew every time.
    from support.specs import Model

    spec = Model("dask")
    with StatefulDaskExecutor(client) as ex:
        results = list(ex.imap(spec, range(12), chunksize=1))
        results += [ex.submit(spec, 100).result(60)]
        results += list(ex.map(spec, range(3)))
    assert [r[3] for r in results] == [*range(12), 100, 0, 1, 2]
    assert {r[4] for r in results} == {1}, "a Dask worker built the spec more than once"
    objects = {(r[0], r[1]) for r in results}
    assert len(objects) <= 2, "one object per Dask worker thread (2 workers, 1 thread each)"


def test_shutdown_closes_each_built_object_once(client: Any, tmp_path: Any) -> None:
    from support import files, specs

    log = str(tmp_path / "closes")
    with StatefulDaskExecutor(client, worker=[specs.Closable(log), specs.Closable(log)]) as ex:
        pids = set(ex.map(ex.worker, range(20)))
        assert files.read_lines(log) == [], "nothing is closed while the executor runs"
    assert sorted(files.read_lines(log)) == sorted(f"closed {pid}" for pid in pids)
    assert len(pids) == 2
