"""The one conftest of the mtasklite test suite: backend fixtures and the leak guard.

Layout, by what users rely on: ``unit/`` pure rules (no processes); ``contract/`` the stdlib
behaviour each executor keeps; ``behaviour/`` one file per promise (imap, timeouts, crash
isolation, shutdown, stateful workers, ...), run on every back end where it applies through
the ``kind`` / ``ctx`` / ``dask_client`` fixtures; ``api/`` the pqdm and ``Pool`` APIs, the
README, typing and help; ``faults/`` the fault matrix, fault properties, interrupts;
``soak/`` long runs (``-m slow``); ``conformance/`` CPython's own suite (a separate runner,
not collected here).  Shared code lives in the :mod:`support` package.

Conventions:

* Every test runs under the leak guard (:func:`no_leaks`): no pool thread and no child process
  it starts may outlive it (:mod:`support.leaks`).
* Thread pools get a ``thread_name_prefix`` starting with ``"mt-"`` (the :func:`prefix`
  fixture) so the guard can tell their threads from unrelated ones (tqdm's monitor, ...).
* Nothing sleeps to synchronise: tasks that must block wait on an ``Event`` the test sets.
  The :func:`release` fixture is such an event; it is set at teardown, so a deliberately stuck
  (abandoned) worker thread can always finish before the guard runs.
"""

from __future__ import annotations

import itertools
import multiprocessing
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

try:
    # Importing Dask registers tblib's pickling for every exception class that exists by then,
    # which makes the support modules' deliberately unsendable exceptions sendable.  Import it
    # before any of them is defined, so that never depends on which test file is collected
    # first (or whether a Dask test runs at all).
    import distributed  # noqa: F401
except ImportError:  # the dask extra is optional
    pass

from support import leaks, specs, tasks
from support.executors import KINDS, PROCESS_KINDS, Guard
from support.inputs import CountingIterator

#: tests/conformance holds the stdlib-suite runner, not pytest tests
collect_ignore = ["conformance"]

_prefix_counter = itertools.count()


# --- the leak guard ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves behind a pool thread (workers, watchdogs, dispatchers, ...) or
    a child process (workers, zombies not yet reaped) it started.

    What existed before the test is ignored; what is new gets until a deadline to go.  It is
    the first fixture set up, so its check runs after every other fixture's teardown.
    """
    tasks.SHARED.clear()  # what thread-pool initializers installed in this process
    specs.BUILD_EVENTS.clear()
    before = leaks.snapshot()
    yield
    leaks.check(before)


# --- back ends -------------------------------------------------------------------------------


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    """Each local back end: ``"fork"``, ``"spawn"``, ``"forkserver"`` (process pools) and
    ``"threads"``; build the executor with :func:`support.executors.new_executor` or
    ``guard.make(kind)``.  A test narrows the list with ``@pytest.mark.parametrize("kind",
    ...)``."""
    return str(request.param)


@pytest.fixture(params=PROCESS_KINDS)
def ctx(request: pytest.FixtureRequest) -> Any:
    """The multiprocessing context of each start method."""
    return multiprocessing.get_context(request.param)


@pytest.fixture
def guard(tmp_path: Path) -> Iterator[Guard]:
    """Executors made through ``guard.make(kind)`` are stopped (terminated) at teardown, and
    blocked tasks released, whatever state the test left them in."""
    g = Guard(tmp_path)
    try:
        yield g
    finally:
        g.teardown()


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    """A real ``LocalCluster`` (two worker processes with one thread each) and its client,
    shared by a module's tests.  Its worker processes outlive each test by design (the
    nannies restart a killed one), so the leak guard is told to keep them."""
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    withdraw = leaks.keep(
        lambda: {pid for nanny in list(cluster.workers.values()) if (pid := nanny.pid)}
    )
    try:
        with cluster, distributed.Client(cluster) as client:
            yield client
    finally:
        withdraw()


# --- small helpers ---------------------------------------------------------------------------


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A unique ``thread_name_prefix`` for this test's pool (covered by the leak guard)."""
    return f"mt-{next(_prefix_counter)}-{request.node.name[:40]}"


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """An event that blocked tasks wait on; always set at teardown."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def counting() -> Callable[[Any], CountingIterator]:
    """Factory: ``counting(iterable)`` -> an unsized iterator with a ``pulled`` counter."""
    return CountingIterator
