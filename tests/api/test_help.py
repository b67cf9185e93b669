"""Help that helps: ``help(pqdm)`` shows its signature, ``help()`` on ``imap`` and ``submit``
shows readable defaults and what they raise, the class docstrings give the defaults, and a
thread pool with one stateful spec does not build a copy per extra thread.
"""

from __future__ import annotations

import os
import pydoc
from concurrent.futures import ThreadPoolExecutor

import pytest

import mtasklite as mt
from mtasklite import processes, threads
from support.specs import Model


@pytest.mark.parametrize("module", [threads, processes], ids=["threads", "processes"])
def test_help_on_pqdm_shows_its_signature(module: object) -> None:
    text = pydoc.render_doc(module.pqdm, renderer=pydoc.plaintext)  # type: ignore[attr-defined]
    assert "pqdm(" in text and "input_iterable" in text
    assert "n_jobs" in text and "exception_behaviour" in text and "tqdm_class" in text


def test_class_docstrings_give_the_defaults() -> None:
    thread_doc = mt.StatefulThreadPoolExecutor.__doc__ or ""
    process_doc = mt.StatefulProcessPoolExecutor.__doc__ or ""
    assert "min(32, CPUs + 4)" in thread_doc and "one thread per CPU" in thread_doc
    assert "``max_workers`` defaults to the number of" in process_doc
    assert "``mp_context``" in process_doc and "get_context()" in process_doc


def cpus() -> int:
    return getattr(os, "process_cpu_count", os.cpu_count)() or 1


def test_one_stateful_spec_gets_one_thread_per_cpu() -> None:
    with mt.StatefulThreadPoolExecutor(worker=Model("m"), thread_name_prefix="mt-fh") as ex:
        assert ex._max_workers == cpus()


def test_other_thread_pools_keep_the_stdlib_default() -> None:
    stdlib_default = ThreadPoolExecutor()._max_workers
    with mt.StatefulThreadPoolExecutor(thread_name_prefix="mt-fh") as plain:
        assert plain._max_workers == stdlib_default
    with mt.StatefulThreadPoolExecutor(worker=abs, thread_name_prefix="mt-fh") as stateless:
        assert stateless._max_workers == stdlib_default
    with mt.StatefulThreadPoolExecutor(3, "mt-fh", worker=Model("m")) as explicit:
        assert explicit._max_workers == 3
    workers = [Model("a"), Model("b")]
    with mt.StatefulThreadPoolExecutor(worker=workers, thread_name_prefix="mt-fh") as listed:
        assert listed._max_workers == 2


# --- imap and submit ------------------------------------------------------------------------------


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
