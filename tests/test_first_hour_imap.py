"""imap points of issue 20: a result consumed after shutdown says why it fails, and
``return_exceptions`` is public on ``imap`` / ``imap_unordered``."""

from __future__ import annotations

import multiprocessing
import pydoc
from typing import Any, Callable

import pytest

import mtasklite as mt

BLOCK_LIMIT = 10.0


def fail_on_two(x: int) -> int:
    if x == 2:
        raise ValueError("two")
    return x


def thread_pool() -> Any:
    return mt.StatefulThreadPoolExecutor(2, "mt-fh-imap")


def process_pool() -> Any:
    return mt.StatefulProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork"))


POOLS = pytest.mark.parametrize("make", [thread_pool, process_pool], ids=["threads", "processes"])


@POOLS
@pytest.mark.timeout(30)
def test_imap_returned_out_of_its_with_block_says_to_consume_it_inside(
    make: Callable[[], Any],
) -> None:
    def lazy_squares() -> Any:
        with make() as ex:
            return ex.imap(abs, range(-5, 0))

    results = lazy_squares()
    with pytest.raises(RuntimeError, match="after shutdown") as info:
        list(results)
    assert "must be consumed before its executor shuts down" in str(info.value)


@POOLS
@pytest.mark.timeout(30)
def test_return_exceptions_yields_ordered_outcomes(make: Callable[[], Any]) -> None:
    with make() as ex:
        outcomes = list(ex.imap(fail_on_two, range(5), return_exceptions=True))
        unordered = list(ex.imap_unordered(fail_on_two, range(5), return_exceptions=True))
        with pytest.raises(ValueError, match="two"):
            list(ex.imap(fail_on_two, range(5)))  # the default still raises
    assert outcomes[:2] == [0, 1] and outcomes[3:] == [3, 4]
    assert isinstance(outcomes[2], ValueError) and str(outcomes[2]) == "two"
    assert sorted(x for x in unordered if isinstance(x, int)) == [0, 1, 3, 4]
    assert [str(x) for x in unordered if isinstance(x, ValueError)] == ["two"]


@pytest.mark.timeout(30)
def test_return_exceptions_with_chunks_and_timeouts_on_processes() -> None:
    with process_pool() as ex:
        chunked = list(ex.imap(fail_on_two, range(6), chunksize=3, return_exceptions=True))
        timed = list(ex.imap(fail_on_two, range(4), task_timeout=30, return_exceptions=True))
    assert [type(x).__name__ for x in chunked] == ["int"] * 2 + ["ValueError"] + ["int"] * 3
    assert [type(x).__name__ for x in timed] == ["int", "int", "ValueError", "int"]


# --- help that helps -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_help_on_imap_shows_readable_defaults_and_what_it_raises(method: str) -> None:
    function = getattr(mt.StatefulProcessPoolExecutor, method)
    text = pydoc.render_doc(function, renderer=pydoc.plaintext)
    assert "<object object" not in text
    assert "chunksize" in text and "= <executor default>" in text
    assert "return_exceptions" in text
    for error in ("TaskTimeoutError", "WorkerCrashedError", "TaskPicklingError", "WorkerInitError"):
        assert error in text


def test_help_on_submit_lists_the_pool_failures() -> None:
    text = pydoc.render_doc(mt.StatefulThreadPoolExecutor.submit, renderer=pydoc.plaintext)
    assert "WorkerCrashedError" in text and "TaskTimeoutError" in text
