"""Template of the patch module the stdlib conformance runner installs into its throwaway venv.

``run_stdlib_suite.py`` copies this file to ``<venv site-packages>/mtasklite_conformance_patch.py``
and writes a ``.pth`` file next to it that imports it at interpreter start-up, but only when
``MTASKLITE_CONFORMANCE=1`` is set.  ``.pth`` files are honoured in isolated mode (``-I``) too,
so interpreters spawned by the stdlib tests (``assert_python_ok``, multiprocessing spawn and
forkserver children) are patched as well.

Never imported by the project itself, and never installed anywhere but that venv.
"""

from __future__ import annotations

import concurrent.futures as _futures
from typing import List, Tuple

import mtasklite as _mtasklite

#: (stdlib name, mtasklite name) pairs to substitute when mtasklite provides the class
_CANDIDATES: Tuple[Tuple[str, str], ...] = (
    ("ThreadPoolExecutor", "StatefulThreadPoolExecutor"),
    ("ProcessPoolExecutor", "StatefulProcessPoolExecutor"),
)


def _apply() -> List[Tuple[str, str]]:
    done: List[Tuple[str, str]] = []
    exported = list(getattr(_futures, "__all__", ()))
    for std_name, ours in _CANDIDATES:
        cls = getattr(_mtasklite, ours, None)
        if cls is None:
            continue
        # concurrent.futures resolves both executors through a lazy module __getattr__;
        # a real module attribute takes precedence over it.
        setattr(_futures, std_name, cls)
        # The stdlib tests build snippets such as
        # ``from concurrent.futures import {executor_type.__name__}``.
        setattr(_futures, ours, cls)
        if ours not in exported:
            exported.append(ours)
        done.append((std_name, f"{cls.__module__}.{cls.__qualname__}"))
    _futures.__all__ = tuple(exported)
    return done


#: what was substituted, read back by the runner to print and check it
_futures._mtasklite_substitutions = _apply()  # type: ignore[attr-defined]
