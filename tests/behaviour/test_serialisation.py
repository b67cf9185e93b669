"""What cannot be pickled fails only its own item: an argument, a function, a result or an
exception that cannot cross the pipe (either way) gives that future a clear error
(``TaskPickleError``, ``DeserializationError``, ``RemoteError``) while the pool and every other
item carry on and nothing runs twice; lambdas and closures travel by cloudpickle.
"""

from __future__ import annotations

import functools
import multiprocessing
import pickle
import threading
from concurrent.futures.process import BrokenProcessPool, _RemoteTraceback
from typing import Any

import pytest

import mtasklite as mt
from mtasklite.processes import pqdm as process_pqdm
from support import files, specs, tasks
from support.executors import PROCESS_KINDS, Guard, outcomes

BLOCK_LIMIT = 10.0

PPE = mt.StatefulProcessPoolExecutor

FORK = multiprocessing.get_context("fork")

SPAWN = multiprocessing.get_context("spawn")


def test_unpicklable_worker_spec_under_spawn_fails_at_construction_naming_the_worker() -> None:
    with pytest.raises(TypeError, match=r"worker 1 .*cannot be pickled .*'spawn'"):
        PPE(mp_context=SPAWN, worker=[specs.Counter("ok"), specs.Counter(threading.Lock())])  # type: ignore[arg-type]


def test_unpicklable_initargs_under_spawn_keep_failing_submit_and_run_nothing() -> None:
    ex = PPE(2, SPAWN, tasks.install, ({"lock": threading.Lock()},))
    try:
        for _ in range(4):
            with pytest.raises((TypeError, pickle.PicklingError), match="pickle"):
                ex.submit(tasks.square, 2)
        assert not ex._dispatcher.backlog
    finally:
        ex.shutdown()


# --- what cannot be pickled ------------------------------------------------------------------


def test_unpicklable_argument_fails_only_that_future() -> None:
    with PPE(1, FORK) as ex:
        bad = ex.submit(tasks.identity, threading.Lock())
        good = ex.submit(tasks.square, 4)
        with pytest.raises(mt.TaskPicklingError) as info:
            bad.result(BLOCK_LIMIT)
        assert isinstance(info.value, pickle.PicklingError)
        assert "arguments" in str(info.value)
        assert info.value.__cause__ is not None
        assert good.result(BLOCK_LIMIT) == 16
        got = outcomes(ex, tasks.identity, [1, threading.Lock(), 3, 4], chunksize=4)
        assert got[0] == 1 and got[2:] == [3, 4]
        assert isinstance(got[1], mt.TaskPicklingError)


def test_unpicklable_function_fails_with_task_pickling_error() -> None:
    lock = threading.Lock()

    def holds_a_lock(x: int) -> Any:
        return lock, x

    with PPE(1, FORK) as ex:
        fut = ex.submit(holds_a_lock, 1)
        with pytest.raises(mt.TaskPicklingError) as info:
            fut.result(BLOCK_LIMIT)
        assert "holds_a_lock" in str(info.value)
        assert "mtasklite[cloudpickle]" not in str(info.value), "cloudpickle is installed"
        assert ex.submit(tasks.square, 3).result(BLOCK_LIMIT) == 9


def test_unpicklable_result_fails_only_that_future() -> None:
    with PPE(1, FORK) as ex:
        pid = ex.submit(tasks.pid_of).result(BLOCK_LIMIT)
        bad = ex.submit(tasks.unpicklable_result)
        with pytest.raises(TypeError, match="pickle"):
            bad.result(BLOCK_LIMIT)
        assert ex.submit(tasks.pid_of).result(BLOCK_LIMIT) == pid, "the worker survives"
        got = outcomes(ex, tasks.unpicklable_result_on, range(6), [3] * 6, chunksize=6)
        assert [g for i, g in enumerate(got) if i != 3] == [0, 10, 20, 40, 50]
        assert isinstance(got[3], TypeError)


def test_unpicklable_exception_becomes_remote_error() -> None:
    with PPE(1, FORK) as ex:
        with pytest.raises(mt.RemoteError) as info:
            ex.submit(tasks.raise_unpicklable, 1).result(BLOCK_LIMIT)
        err = info.value
        assert err.type_name == "support.tasks.UnpicklableError"
        assert "unsendable 1" in str(err)
        assert isinstance(err.__cause__, _RemoteTraceback)
        assert "raise_unpicklable" in str(err.__cause__)
        with pytest.raises(mt.RemoteError) as info2:
            ex.submit(tasks.raise_two_arg, 2).result(BLOCK_LIMIT)
        assert info2.value.type_name == "support.tasks.TwoArgError"
        assert "two-arg 2" in str(info2.value)
        assert ex.submit(tasks.square, 3).result(BLOCK_LIMIT) == 9


def test_argument_that_cannot_be_unpickled_in_the_worker() -> None:
    with PPE(1, FORK) as ex:
        pid = ex.submit(tasks.pid_of).result(BLOCK_LIMIT)
        with pytest.raises(mt.DeserializationError) as info:
            ex.submit(tasks.identity, tasks.RaiseOnUnpickleInWorker(5)).result(BLOCK_LIMIT)
        assert isinstance(info.value, BrokenProcessPool)
        assert isinstance(info.value.__cause__, ImportError)
        assert ex.submit(tasks.pid_of).result(BLOCK_LIMIT) == pid, "the worker survives"


def test_argument_unpickling_failure_in_a_chunk_fails_only_that_item() -> None:
    with PPE(1, FORK) as ex:
        got = outcomes(ex, tasks.identity, [0, tasks.RaiseOnUnpickleInWorker(1), 2, 3], chunksize=4)
    assert isinstance(got[1], mt.DeserializationError)
    assert [got[0], *got[2:]] == [0, 2, 3]


def test_result_that_cannot_be_unpickled_in_the_parent() -> None:
    with PPE(1, FORK) as ex:
        pid = ex.submit(tasks.pid_of).result(BLOCK_LIMIT)
        with pytest.raises(mt.DeserializationError) as info:
            ex.submit(tasks.unreadable_result_on, 1, 1).result(BLOCK_LIMIT)
        assert isinstance(info.value.__cause__, ImportError)
        assert ex.submit(tasks.unreadable_result_on, 2, 1).result(BLOCK_LIMIT) == 20
        assert ex.submit(tasks.pid_of).result(BLOCK_LIMIT) == pid, "the worker survives"


def test_result_unpickling_failure_in_a_chunk_fails_only_that_item() -> None:
    with PPE(1, FORK) as ex:
        got = outcomes(ex, tasks.unreadable_result_on, range(4), [1] * 4, chunksize=4)
    assert isinstance(got[1], mt.DeserializationError)
    assert [got[0], *got[2:]] == [0, 20, 30]


# --- the cloudpickle path --------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_lambdas_and_closures_work_under_spawn() -> None:
    offset = 5

    def shifted(x: int) -> int:
        return x + offset

    with PPE(2, SPAWN) as ex:
        assert ex.submit(lambda x: x + 1, 1).result(BLOCK_LIMIT) == 2
        assert list(ex.imap(shifted, range(4))) == [5, 6, 7, 8]
        assert list(ex.map(lambda a, b: a * b, range(4), range(4))) == [0, 1, 4, 9]
        assert sorted(ex.imap_unordered(lambda x: -x, range(3), chunksize=2)) == [-2, -1, 0]
        # a plain function after a cloudpickled one still goes the ordinary way
        assert ex.submit(tasks.square, 6).result(BLOCK_LIMIT) == 36


def test_without_cloudpickle_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from mtasklite._procpool import wire

    monkeypatch.setattr(wire, "cloud_dumps", lambda obj: None)
    monkeypatch.setattr(wire, "has_cloudpickle", lambda: False)
    with PPE(1, FORK) as ex:
        fut = ex.submit(lambda x: x + 1, 1)
        with pytest.raises(mt.TaskPicklingError) as info:
            fut.result(BLOCK_LIMIT)
        assert isinstance(info.value, pickle.PicklingError)
        assert "mtasklite[cloudpickle]" in str(info.value)
        assert info.value.__cause__ is not None
        assert ex.submit(tasks.square, 3).result(BLOCK_LIMIT) == 9, "the pool is not broken"
        with pytest.raises(mt.TaskPicklingError, match=r"mtasklite\[cloudpickle\]"):
            list(ex.imap(lambda x: x, range(3)))


# --- a result the parent cannot unpickle ----------------------------------------------------------


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
            mp_context=multiprocessing.get_context(kind),
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
