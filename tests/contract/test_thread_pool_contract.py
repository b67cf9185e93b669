"""StatefulThreadPoolExecutor keeps the stdlib ``ThreadPoolExecutor`` contract: it is one (alias
and subclass), takes the stdlib's positional arguments (ours are keyword-only and checked,
naming the problem), names its threads as the stdlib does, and without ``worker=`` behaves as
the stdlib's (initializers, ``shutdown(cancel_futures=True)``).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import threading
from typing import Any

import pytest

import mtasklite as mt
from support import executors, processes, specs

BLOCK_LIMIT = 10.0
#: per-task limit for timeout tests: short, yet far above what a trivial task needs
LIMIT = 0.3
STPE = mt.StatefulThreadPoolExecutor


# --- construction and argument checking -----------------------------------------------------------


def test_alias_and_stdlib_subclass() -> None:
    assert mt.StatefulThreadExecutor is mt.StatefulThreadPoolExecutor
    assert issubclass(STPE, concurrent.futures.ThreadPoolExecutor)


def test_stdlib_positional_signature(prefix: str) -> None:
    seen: list[Any] = []
    with STPE(1, prefix, seen.append, ("hello",)) as ex:
        assert ex.submit(threading.current_thread).result(BLOCK_LIMIT).name == f"{prefix}_0"
    assert seen == ["hello"]


def test_worker_and_task_timeout_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        STPE(1, "mt-x", None, (), specs.LoggedModel("m"))  # type: ignore[misc]


def test_worker_list_sets_max_workers(prefix: str) -> None:
    with STPE(
        thread_name_prefix=prefix,
        worker=[specs.LoggedModel("a"), specs.LoggedModel("b"), specs.LoggedModel("c")],
    ) as ex:
        ex.wait_ready(BLOCK_LIMIT)
        assert len(processes.threads_named(prefix)) == 3
        assert sorted(i[3] for i in specs.BUILD_EVENTS.of("build")) == ["a", "b", "c"]


def test_worker_tuple_is_accepted(prefix: str) -> None:
    with STPE(2, prefix, worker=(specs.LoggedModel("a"), specs.LoggedModel("b"))) as ex:
        seen = executors.run_on_every_worker(ex, 2, specs.logged_whoami)
    assert sorted(s[:2] for s in seen) == [(0, "a"), (1, "b")]


def test_worker_list_with_mismatched_max_workers_names_both_numbers() -> None:
    with pytest.raises(ValueError, match=r"max_workers=2\b.*\b3 workers"):
        STPE(2, worker=[specs.LoggedModel("a"), specs.LoggedModel("b"), specs.LoggedModel("c")])


def test_worker_list_with_non_callable_item_names_its_index() -> None:
    with pytest.raises(TypeError, match=r"worker\[1\]"):
        STPE(worker=[specs.LoggedModel("a"), "not callable", specs.LoggedModel("c")])


@pytest.mark.parametrize("empty", [[], ()])
def test_empty_worker_list_is_value_error(empty: Any) -> None:
    with pytest.raises(ValueError):
        STPE(worker=empty)


def test_non_callable_single_worker_is_type_error() -> None:
    with pytest.raises(TypeError):
        STPE(worker=42)  # type: ignore[arg-type]


def test_non_positive_max_workers_is_value_error() -> None:
    with pytest.raises(ValueError):
        STPE(0)
    with pytest.raises(ValueError):
        STPE(0, worker=specs.LoggedModel("m"))


@pytest.mark.parametrize("bad", [0, -1, "1", True])
def test_bad_task_timeout_is_value_error(bad: Any) -> None:
    with pytest.raises(ValueError):
        STPE(1, task_timeout=bad)


# --- stdlib behaviour without worker= -------------------------------------------------------------


def test_plain_pool_behaves_like_stdlib(prefix: str) -> None:
    with STPE(2, prefix) as ex:
        assert ex.submit(pow, 2, 10).result(BLOCK_LIMIT) == 1024
        assert list(ex.map(pow, range(6), itertools.repeat(2))) == [0, 1, 4, 9, 16, 25]
        names = {f.result(BLOCK_LIMIT).name for f in [ex.submit(threading.current_thread)]}
        assert names <= {f"{prefix}_0", f"{prefix}_1"}
        fut = ex.submit(int, "x")
        with pytest.raises(ValueError):
            fut.result(BLOCK_LIMIT)
    with pytest.raises(RuntimeError):
        ex.submit(abs, 1)


def test_default_thread_names_follow_stdlib() -> None:
    with STPE(1) as ex:
        name = ex.submit(threading.current_thread).result(BLOCK_LIMIT).name
    assert name.startswith("ThreadPoolExecutor-")
    assert name.endswith("_0")


def test_initializer_runs_once_per_thread_with_initargs(prefix: str) -> None:
    calls: list[tuple[str, Any]] = []

    def init(tag: Any) -> None:
        calls.append((threading.current_thread().name, tag))

    with STPE(2, prefix, init, ("t",)) as ex:
        executors.run_on_every_worker(ex, 2, lambda: None)
        executors.run_on_every_worker(ex, 2, lambda: None)
    assert sorted(calls) == [(f"{prefix}_0", "t"), (f"{prefix}_1", "t")]


def test_shutdown_cancel_futures_cancels_queued_work(prefix: str, release: threading.Event) -> None:
    started = threading.Event()

    def block() -> None:
        started.set()
        release.wait(BLOCK_LIMIT)

    ex = STPE(1, prefix)
    running = ex.submit(block)
    assert started.wait(BLOCK_LIMIT)
    queued = [ex.submit(abs, i) for i in range(5)]
    ex.shutdown(wait=False, cancel_futures=True)
    release.set()
    ex.shutdown(wait=True)
    assert running.result(BLOCK_LIMIT) is None
    assert all(f.cancelled() for f in queued)
