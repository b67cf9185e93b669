"""Upstream mtasklite 0.3.5's import paths: ``mtasklite.utils``, ``mtasklite.delayed_init`` and
``mtasklite.version`` (upstream's own tests import from them).  Each is the package's own
implementation under the old name, never a copy."""

from __future__ import annotations

import subprocess
import sys

import pytest

import mtasklite
import support


def test_utils_is_exception_is_the_package_function() -> None:
    from mtasklite.utils import is_exception

    assert is_exception is mtasklite.is_exception
    assert is_exception(ValueError("x")) and is_exception(mtasklite.TaskTimeoutError("late"))
    assert not is_exception(None) and not is_exception("error") and not is_exception(ValueError)


def test_utils_current_function_name_names_the_caller() -> None:
    from mtasklite.utils import current_function_name

    def load_shard() -> str:
        return current_function_name()

    assert load_shard() == "load_shard"
    assert current_function_name() == "test_utils_current_function_name_names_the_caller"


@pytest.mark.timeout(30)
def test_delayed_init_path_gives_the_decorator_that_pools_understand() -> None:
    from mtasklite.delayed_init import delayed_init

    assert delayed_init is mtasklite.delayed_init

    @delayed_init
    class Offset:
        def __init__(self, by: int) -> None:
            self.by = by

        def __call__(self, x: int) -> int:
            return x + self.by

    spec = Offset(10)
    assert isinstance(spec, mtasklite.DelayedInit)
    with mtasklite.Pool([Offset(10), Offset(10)], use_threads=True, bounded=True) as pool:
        assert list(pool(range(5))) == [10, 11, 12, 13, 14]


def test_version_path_is_the_package_version() -> None:
    from mtasklite.version import __version__

    assert __version__ == mtasklite.__version__
    pyproject = (support.ROOT / "pyproject.toml").read_text()
    assert f'version = "{__version__}"' in pyproject


@pytest.mark.timeout(60)
def test_importing_the_submodule_first_keeps_the_decorator_on_the_package() -> None:
    # In a fresh interpreter, as upstream code does it: import the submodule, then use
    # ``mtasklite.delayed_init`` as a decorator (a submodule loaded late would shadow it).
    code = (
        "import mtasklite.delayed_init, mtasklite.utils, mtasklite.version\n"
        "from mtasklite.delayed_init import delayed_init\n"
        "assert mtasklite.delayed_init is delayed_init, mtasklite.delayed_init\n"
        "@mtasklite.delayed_init\n"
        "class C:\n"
        "    def __call__(self, x):\n"
        "        return -x\n"
        "assert C()(3) == -3\n"
        "print('OK')\n"
    )
    env = support.child_env(tests=False)
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "OK", proc.stdout + proc.stderr
