"""mtasklite: stateful, lazy, fault-tolerant drop-ins for ``concurrent.futures`` executors.

The two executors subclass the stdlib ones, so code written for ``ThreadPoolExecutor`` /
``ProcessPoolExecutor`` keeps working when the class name is swapped.  They add stateful
workers (:func:`delayed_init`), lazy bounded ``imap`` over any iterable, and per-task timeouts.

``import mtasklite`` is cheap: each public name is imported from its submodule on first use
(so a thread-only script never loads the process pool, and nothing loads tqdm or Dask until
it is used).  ``from mtasklite import X``, ``mtasklite.X`` and ``from mtasklite import *``
work as usual, and type checkers see every name through the imports below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Upstream's ``mtasklite.delayed_init`` is also a submodule.  Loaded here, so that the
# decorator is bound after it: a submodule first imported later would replace the
# attribute ``mtasklite.delayed_init`` with the module itself.  (It loads nothing heavy.)
from .delayed_init import delayed_init

#: public name -> the submodule that defines it, imported when the name is first used
_SUBMODULE_OF = {
    "AsyncResultIterator": "_aimap",
    "ArgumentPassing": "constants",
    "ExceptionBehaviour": "constants",
    "DeferredExceptions": "errors",
    "DeserializationError": "errors",
    "RemoteError": "errors",
    "TaskPicklingError": "errors",
    "TaskTimeoutError": "errors",
    "WorkerCrashedError": "errors",
    "WorkerInitError": "errors",
    "WorkerStopping": "errors",
    "WorkerStats": "_worker_stats",
    "Pool": "pool",
    "PoolResults": "pool",
    "SizedPoolResults": "pool",
    "is_exception": "pool",
    "StatefulProcessExecutor": "process_pool",
    "StatefulProcessPoolExecutor": "process_pool",
    "DelayedInit": "stateful",
    "DelayedInitClass": "stateful",
    "WorkerHandle": "stateful",
    "current_worker": "stateful",
    "delayed_init": "delayed_init",  # bound eagerly above; listed for completeness
    "worker_index": "stateful",
    "StatefulThreadExecutor": "thread_pool",
    "StatefulThreadPoolExecutor": "thread_pool",
    "ResultIterator": "windowing",
    "SizedResultIterator": "windowing",
    "imap": "windowing",
    "imap_unordered": "windowing",
}

__all__ = [
    "ArgumentPassing",
    "AsyncResultIterator",
    "DeferredExceptions",
    "DelayedInit",
    "DelayedInitClass",
    "DeserializationError",
    "ExceptionBehaviour",
    "Pool",
    "PoolResults",
    "RemoteError",
    "ResultIterator",
    "SizedPoolResults",
    "SizedResultIterator",
    "StatefulProcessExecutor",
    "StatefulProcessPoolExecutor",
    "StatefulThreadExecutor",
    "StatefulThreadPoolExecutor",
    "TaskPicklingError",
    "TaskTimeoutError",
    "WorkerCrashedError",
    "WorkerHandle",
    "WorkerInitError",
    "WorkerStats",
    "WorkerStopping",
    "__version__",
    "current_worker",
    "delayed_init",
    "imap",
    "imap_unordered",
    "is_exception",
    "worker_index",
]

if TYPE_CHECKING:
    from ._aimap import AsyncResultIterator
    from ._worker_stats import WorkerStats
    from .constants import ArgumentPassing, ExceptionBehaviour
    from .errors import (
        DeferredExceptions,
        DeserializationError,
        RemoteError,
        TaskPicklingError,
        TaskTimeoutError,
        WorkerCrashedError,
        WorkerInitError,
        WorkerStopping,
    )
    from .pool import Pool, PoolResults, SizedPoolResults, is_exception
    from .process_pool import StatefulProcessExecutor, StatefulProcessPoolExecutor
    from .stateful import (
        DelayedInit,
        DelayedInitClass,
        WorkerHandle,
        current_worker,
        worker_index,
    )
    from .thread_pool import StatefulThreadExecutor, StatefulThreadPoolExecutor
    from .windowing import ResultIterator, SizedResultIterator, imap, imap_unordered
else:
    # Only at run time: a module-level __getattr__ would make a type checker accept any name.

    def __getattr__(name: str) -> Any:
        submodule = _SUBMODULE_OF.get(name)
        if submodule is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{__name__}.{submodule}"), name)
        globals()[name] = value  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
