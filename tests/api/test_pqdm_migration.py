"""A gentle pqdm migration (issue 20): lazy results make their state visible, both spellings
of ``exception_behaviour`` work in pqdm and Pool, errors use the caller's names."""

from __future__ import annotations

import gc
import io
import multiprocessing
import threading
import warnings
from typing import Any

import pytest

import mtasklite as mt
from mtasklite import Pool
from mtasklite.processes import pqdm as process_pqdm
from mtasklite.threads import pqdm as thread_pqdm
from support import tasks

BLOCK_LIMIT = 10.0


def double(x: int) -> int:
    return 2 * x


def fail_on_two(x: int) -> int:
    if x == 2:
        raise ValueError("two")
    return x


# --- lazy results say what they are --------------------------------------------------------


def test_dropping_unread_results_warns_like_an_unawaited_coroutine() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        thread_pqdm(range(3), double, n_jobs=2, disable=True)
        gc.collect()
    assert len(caught) == 1, "one warning per dropped result"
    with pytest.warns(RuntimeWarning, match="dropped before it was iterated: its items never ran"):
        thread_pqdm(range(3), double, n_jobs=2, disable=True)
        gc.collect()
    with pytest.warns(RuntimeWarning, match="never ran"), Pool(double, 2, use_threads=True) as p:
        p(range(3))
        gc.collect()


@pytest.mark.parametrize(
    "consume",
    [
        list,
        next,
        lambda r: r.close(),
        lambda r: r.__exit__(None, None, None),
    ],
    ids=["list", "next", "close", "with"],
)
def test_results_that_were_read_or_closed_drop_silently(consume: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        results = thread_pqdm(range(3), double, n_jobs=2, disable=True)
        consume(results)
        results.close()
        del results
        gc.collect()


def test_results_whose_first_item_raised_drop_silently() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        results = thread_pqdm(
            [2, 1], fail_on_two, n_jobs=1, exception_behaviour="immediate", disable=True
        )
        with pytest.raises(ValueError, match="two"):
            next(results)
        del results
        gc.collect()


def test_repr_says_lazy_and_how_far_it_got() -> None:
    results = thread_pqdm(range(3), double, n_jobs=2, disable=True)
    assert repr(results).startswith("<SizedPoolResults: lazy, 0 of 3 results read, not started;")
    assert "list(results)" in repr(results)
    assert next(results) == 0
    assert "1 of 3 results read, running" in repr(results)
    assert list(results) == [2, 4]
    assert "3 of 3 results read, finished" in repr(results)
    with Pool(double, 1, use_threads=True) as pool:
        unsized = pool(iter(range(5)))
        next(unsized)
        unsized.close()
        assert "1 results read, closed" in repr(unsized)


# --- both spellings, the caller's names ----------------------------------------------------


@pytest.mark.parametrize("pqdm", [thread_pqdm, process_pqdm], ids=["threads", "processes"])
def test_pqdm_accepts_pools_spelling_of_exception_behaviour(pqdm: Any) -> None:
    with pytest.raises(ValueError, match="two"):
        list(pqdm(range(4), fail_on_two, n_jobs=2, exception_behavior="immediate", disable=True))


def test_pool_accepts_pqdms_spelling_of_exception_behaviour() -> None:
    with Pool(fail_on_two, 2, use_threads=True, exception_behaviour="ignore") as pool:
        out = list(pool(range(4)))
    assert out[:2] == [0, 1] and isinstance(out[2], ValueError) and out[3] == 3


def test_conflicting_spellings_are_a_type_error() -> None:
    with pytest.raises(TypeError, match="disagree"):
        Pool(double, 1, exception_behavior="deferred", exception_behaviour="ignore")
    with pytest.raises(TypeError, match="disagree"):
        thread_pqdm([1], double, 1, exception_behaviour="deferred", exception_behavior="ignore")


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_n_jobs_is_named_n_jobs(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"^n_jobs must be a positive integer"):
        thread_pqdm(range(3), double, n_jobs=bad, disable=True)
    with pytest.raises(ValueError, match=r"^n_jobs must be a positive integer"):
        Pool(double, bad)


def test_worker_list_mismatch_is_named_n_jobs() -> None:
    with pytest.raises(ValueError, match=r"n_jobs=3 does not match the 2 workers"):
        process_pqdm(range(3), [double, double], n_jobs=3, disable=True)


@pytest.mark.parametrize("disable", [True, False])
def test_unknown_keyword_is_ours_to_report_not_tqdms(disable: bool) -> None:
    with pytest.raises(TypeError, match=r"'chunksize' \(did you mean 'chunk_size'\?\)") as info:
        thread_pqdm(range(3), double, 2, chunksize=4, disable=disable, file=io.StringIO())
    assert type(info.value) is TypeError
    assert "not an option of pqdm, of mtasklite.Pool or of tqdm" in str(info.value)


def test_tqdm_class_taking_any_keyword_gets_them() -> None:
    seen: dict[str, Any] = {}

    def bar(iterable: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return iterable

    assert list(thread_pqdm(range(3), double, 2, tqdm_class=bar, custom=1)) == [0, 2, 4]
    assert seen["custom"] == 1


# --- pqdm timeout messages name the user's function ----------------------------------------


def test_thread_pqdm_timeout_message_names_the_function() -> None:
    release = threading.Event()

    def slow(x: int) -> int:
        while x == 3 and not release.wait(0.01):  # Python bytecode: the stop lands here
            pass
        return x

    try:
        out = list(thread_pqdm(range(5), slow, 2, task_timeout=0.3, disable=True))
    finally:
        release.set()
    assert isinstance(out[3], mt.TaskTimeoutError)
    assert ".slow(3) exceeded its 0.3 s limit" in str(out[3])
    assert out[:3] + out[4:] == [0, 1, 2, 4]


@pytest.mark.timeout(30)
def test_process_pqdm_timeout_message_names_the_function_in_every_mode() -> None:
    ctx = multiprocessing.get_context("fork")
    for mode, items in (("single_arg", range(5)), ("args", [(x,) for x in range(5)])):
        out = list(
            process_pqdm(
                items, tasks.nap_on_three, 2, mode, task_timeout=0.5, mp_context=ctx, disable=True
            )
        )
        assert isinstance(out[3], mt.TaskTimeoutError), out
        assert "task nap_on_three(" in str(out[3]), str(out[3])
