"""mtasklite: stateful, lazy, fault-tolerant drop-ins for ``concurrent.futures`` executors.

The two executors subclass the stdlib ones, so code written for ``ThreadPoolExecutor`` /
``ProcessPoolExecutor`` keeps working when the class name is swapped.  They add stateful
workers (:func:`delayed_init`), lazy bounded ``imap`` over any iterable, and per-task timeouts.
"""

from ._aimap import AsyncResultIterator
from .constants import ArgumentPassing, ExceptionBehaviour
from .errors import (
    DeferredExceptions,
    DeserializationError,
    RemoteError,
    TaskPicklingError,
    TaskTimeoutError,
    WorkerCrashedError,
    WorkerInitError,
)
from .pool import Pool, PoolResults, SizedPoolResults, is_exception
from .process_pool import StatefulProcessExecutor, StatefulProcessPoolExecutor
from .stateful import (
    DelayedInit,
    DelayedInitClass,
    WorkerHandle,
    current_worker,
    delayed_init,
    worker_index,
)
from .thread_pool import StatefulThreadExecutor, StatefulThreadPoolExecutor
from .windowing import ResultIterator, SizedResultIterator, imap, imap_unordered

__version__ = "0.1.0"

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
    "__version__",
    "current_worker",
    "delayed_init",
    "imap",
    "imap_unordered",
    "is_exception",
    "worker_index",
]
