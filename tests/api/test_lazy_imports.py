"""``import mtasklite`` loads only what is used.

A script pays for its imports on every start, so the package imports its public names from
their submodules on first use: ``import mtasklite`` loads no pool, no tqdm and no Dask, and a
thread-only script never loads the process pool.  Each check runs in a fresh interpreter
(this test process has long imported everything).  Timing is the benchmarks' job
(``python -m benchmarks --scenario 10``); here the module sets are asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import mtasklite as mt

#: never loaded by ``import mtasklite`` alone
HEAVY = {
    "concurrent.futures.process",
    "dask",
    "distributed",
    "multiprocessing",
    "multiprocessing.pool",
    "mtasklite._pqdm",
    "mtasklite.dask",
    "mtasklite.pool",
    "mtasklite.process_pool",
    "mtasklite.thread_pool",
    "tqdm",
}

#: the process machinery, never loaded by a script that uses only threads
PROCESS_MACHINERY = {
    "multiprocessing.pool",
    "mtasklite._procpool",
    "mtasklite._procpool.child",
    "mtasklite._procpool.dispatcher",
    "mtasklite._procpool.wire",
    "mtasklite._shm",
    "mtasklite.dask",
    "mtasklite.pool",
    "mtasklite.process_pool",
    "tqdm",
    "distributed",
}


def modules_after(code: str) -> set[str]:
    """The modules loaded after running ``code`` in a fresh interpreter."""
    script = textwrap.dedent(code) + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(out.stdout.splitlines()[-1]))


@pytest.mark.timeout(60)
def test_import_loads_no_pool_no_tqdm_no_dask() -> None:
    loaded = modules_after("import mtasklite")
    assert not loaded & HEAVY, f"import mtasklite loaded {sorted(loaded & HEAVY)}"


@pytest.mark.timeout(60)
def test_a_thread_only_script_never_loads_the_process_machinery() -> None:
    loaded = modules_after(
        """
        import mtasklite as mt

        @mt.delayed_init
        class Doubler:
            def __call__(self, x):
                return 2 * x

        with mt.StatefulThreadPoolExecutor(2, worker=Doubler()) as ex:
            assert list(ex.imap(ex.worker, range(100))) == [2 * x for x in range(100)]
            assert ex.submit(abs, -1).result() == 1
        """
    )
    assert "mtasklite.thread_pool" in loaded
    assert not loaded & PROCESS_MACHINERY, f"loaded {sorted(loaded & PROCESS_MACHINERY)}"


@pytest.mark.timeout(60)
def test_names_load_on_first_use() -> None:
    loaded = modules_after("from mtasklite import StatefulProcessPoolExecutor, Pool")
    assert {"mtasklite.process_pool", "mtasklite.pool"} <= loaded
    assert "tqdm" not in loaded and "distributed" not in loaded


def test_every_public_name_is_the_object_its_submodule_defines() -> None:
    import importlib

    for name in mt.__all__:
        if name == "__version__":
            continue
        submodule = importlib.import_module(f"mtasklite.{mt._SUBMODULE_OF[name]}")
        assert getattr(mt, name) is getattr(submodule, name), name
    assert sorted(mt.__all__) == sorted([*mt._SUBMODULE_OF, "__version__"])
    assert set(mt.__all__) <= set(dir(mt))


def test_star_import_gives_every_public_name() -> None:
    namespace: dict[str, object] = {}
    exec("from mtasklite import *", namespace)
    assert set(mt.__all__) <= set(namespace)


def test_an_unknown_name_is_an_attribute_error_naming_it() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'StatefulPool'"):
        mt.StatefulPool  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(ImportError, match="StatefulPool"):
        exec("from mtasklite import StatefulPool", {})
