"""No stdlib executor method reaches our users unreviewed.

Our executors subclass the stdlib's, so a method a new Python adds to the base class is
inherited silently, and it may bypass what we add (3.14's ``terminate_workers`` would have
taken its own stop for crashes and respawned workers).  For each executor, every public name
of the running Python's base class (and the 3.14/3.15 additions, listed by name, so this holds
on the Pythons installed here too) is either overridden by us or listed in
:data:`INHERITED_SAFE`, with the reason inheriting it is right.

The thread pool also runs on a stdlib base shaped like Python 3.14's (which this machine may
lack): 3.14's ``ThreadPoolExecutor.__init__`` no longer sets ``_initializer`` / ``_initargs``;
a script patches the running Python's base class to behave as 3.14's and drives our pool over
it, in a subprocess so the patch cannot leak into other tests.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import subprocess
import sys
from typing import Any

import pytest

import mtasklite as mt
import support

#: names that newer Pythons add to each base class (3.14: ``prepare_context`` and ``BROKEN`` on
#: the thread pool, ``terminate_workers`` / ``kill_workers`` on the process pool)
LATER_ADDITIONS: dict[type, set[str]] = {
    concurrent.futures.ThreadPoolExecutor: {"prepare_context", "BROKEN"},
    concurrent.futures.ProcessPoolExecutor: {"terminate_workers", "kill_workers"},
    concurrent.futures.Executor: set(),
}

#: The one reviewed table: (our executor, inherited name) -> why inheriting it is right.
INHERITED_SAFE: dict[tuple[str, str], str] = {
    ("StatefulThreadPoolExecutor", "__enter__"): "Executor's: returns self, touches no state",
    ("StatefulProcessPoolExecutor", "__enter__"): "Executor's: returns self, touches no state",
    ("StatefulDaskExecutor", "__enter__"): "Executor's: returns self, touches no state",
    ("StatefulThreadPoolExecutor", "prepare_context"): (
        "3.14's __init__ (reached through our super().__init__) calls it to check the "
        "initializer and build the stdlib worker's context; our threads run our own worker "
        "with our own copies of initializer/initargs and never use what it returns"
    ),
}


def _executors() -> list[tuple[type, type]]:
    pairs: list[tuple[type, type]] = [
        (mt.StatefulThreadPoolExecutor, concurrent.futures.ThreadPoolExecutor),
        (mt.StatefulProcessPoolExecutor, concurrent.futures.ProcessPoolExecutor),
    ]
    try:
        from mtasklite.dask import StatefulDaskExecutor
    except ImportError:  # pragma: no cover - the dask extra is not installed
        return pairs
    return [*pairs, (StatefulDaskExecutor, concurrent.futures.Executor)]


def public_surface(base: type) -> set[str]:
    """What the stdlib's classes in ``base``'s MRO define for users: names without a leading
    underscore, and the dunder methods (``__init__``, ``__enter__``, ...)."""
    names = set(LATER_ADDITIONS.get(base, set()))
    for cls in base.__mro__:
        if not cls.__module__.startswith("concurrent.futures"):
            continue
        for name, value in vars(cls).items():
            dunder = name.startswith("__") and name.endswith("__")
            if not name.startswith("_") or (dunder and inspect.isroutine(value)):
                names.add(name)
    return names


def owner(cls: type, name: str) -> Any:
    """The class in ``cls``'s MRO whose definition of ``name`` users get (None: nowhere)."""
    return next((c for c in cls.__mro__ if name in vars(c)), None)


def overridden(cls: type, name: str) -> bool:
    found = owner(cls, name)
    return found is not None and found.__module__.startswith("mtasklite")


@pytest.mark.parametrize(("ours", "base"), _executors(), ids=lambda c: c.__name__)
def test_every_stdlib_name_is_overridden_or_reviewed(ours: type, base: type) -> None:
    unreviewed = sorted(
        name
        for name in public_surface(base)
        if not overridden(ours, name) and (ours.__name__, name) not in INHERITED_SAFE
    )
    assert not unreviewed, (
        f"{ours.__name__} inherits {unreviewed} from the stdlib unreviewed: override them, or "
        "add each to INHERITED_SAFE with the reason inheriting it is right"
    )


@pytest.mark.parametrize(("ours", "base"), _executors(), ids=lambda c: c.__name__)
def test_the_reviewed_table_has_no_stale_entry(ours: type, base: type) -> None:
    surface = public_surface(base)
    for (executor, name), reason in INHERITED_SAFE.items():
        if executor != ours.__name__:
            continue
        assert reason
        assert name in surface, f"{name} is not on {base.__name__}: drop it from the table"
        assert not overridden(ours, name), f"{executor}.{name} is overridden now: drop the entry"


def test_the_314_additions_we_promise_are_ours() -> None:
    # Listed by name: on every Python, these are our implementations, not the stdlib's.
    for name in ("terminate_workers", "kill_workers"):
        assert overridden(mt.StatefulProcessPoolExecutor, name)
    assert mt.StatefulThreadPoolExecutor.BROKEN is mt.WorkerInitError


# --- a base class shaped like 3.14's --------------------------------------------------------------


SCRIPT = support.SCRIPTS / "thread_pool_on_314_base.py"


@pytest.mark.timeout(60)
def test_thread_pool_runs_on_a_base_class_that_sets_only_what_314_sets() -> None:
    env = support.child_env(tests=False)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)],
        check=False,
        capture_output=True,
        text=True,
        timeout=50,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "OK"
