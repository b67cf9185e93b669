"""One small adapter per implementation, so every scenario is written once.

An adapter owns a pool with ``workers`` workers and exposes the same three operations:
:meth:`Adapter.imap` (an ordered, iterator-returning map, the library's idiomatic one),
:meth:`Adapter.stop` (the library's clean way to abandon a running map and release the pool)
and :meth:`Adapter.warm_up` (start the workers before a timed section).  Peer libraries are
imported inside the adapter, so a missing one only fails the runs that need it.

``init`` asks for stateful workers (scenario 6): ``(init_s, task_s)`` for
:class:`benchmarks.tasks.SlowModel`.  Ours passes ``worker=SlowModel(...)`` and maps
``ex.worker``; peers use their per-worker initializer and map :func:`benchmarks.tasks.use_model`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, ClassVar, Iterable, Iterator, Optional

from benchmarks import tasks

Init = Optional[tuple[float, float]]


class Adapter:
    """Base adapter: subclasses set ``pool`` in ``__init__`` and implement :meth:`_map`."""

    #: import name of the optional library this adapter needs (None: stdlib or ours)
    requires: Optional[str] = None
    #: "process", "thread" or "serial"
    kind = "process"
    pool: Any = None

    def __init__(self, workers: int, chunksize: Optional[int], init: Init) -> None:
        self.workers = workers
        self.chunksize = chunksize
        self.init = init
        self._results: Any = None

    @property
    def model_task(self) -> Callable[[int], int]:
        """What to map over in scenario 6 (the task that calls the per-worker model)."""
        return tasks.use_model

    def imap(self, fn: Callable[..., Any], items: Iterable[Any]) -> Iterator[Any]:
        """Ordered results of ``fn`` over ``items``, as the library yields them."""
        self._results = self._map(fn, items)
        return iter(self._results)

    def _map(self, fn: Callable[..., Any], items: Iterable[Any]) -> Iterable[Any]:
        raise NotImplementedError

    def warm_up(self) -> None:
        """Start every worker (and let lazy pools settle) before a timed section."""
        for _ in self.imap(tasks.identity, list(range(4 * self.workers))):
            pass
        self._results = None

    def stop(self) -> None:
        """Abandon the current map (if any) and release the pool, the library's clean way."""
        close = getattr(self._results, "close", None)
        if close is not None:
            close()
        self._results = None
        self._shutdown()

    def _shutdown(self) -> None:
        self.pool.shutdown(wait=True)


class OursProcess(Adapter):
    """``StatefulProcessPoolExecutor(workers).imap`` (auto chunking unless told otherwise)."""

    #: extra executor arguments (a variant's settings)
    options: ClassVar[dict[str, Any]] = {}

    def __init__(self, workers: int, chunksize: Optional[int], init: Init) -> None:
        import mtasklite as mt

        super().__init__(workers, chunksize, init)
        worker = None if init is None else tasks.SlowModel(*init)
        self.pool = mt.StatefulProcessPoolExecutor(workers, worker=worker, **self.options)

    @property
    def model_task(self) -> Callable[[int], int]:
        return self.pool.worker  # type: ignore[no-any-return]

    def _map(self, fn: Callable[..., Any], items: Iterable[Any]) -> Iterable[Any]:
        if self.chunksize is None:
            return self.pool.imap(fn, items)  # type: ignore[no-any-return]
        return self.pool.imap(fn, items, chunksize=self.chunksize)  # type: ignore[no-any-return]


class OursProcessNoShm(OursProcess):
    """Ours with the shared-memory transport off (``shm_threshold=None``): every argument
    and result goes through the pipe, as before issue 19."""

    options: ClassVar[dict[str, Any]] = {"shm_threshold": None}


class OursThread(OursProcess):
    """``StatefulThreadPoolExecutor(workers).imap`` (auto chunking unless told otherwise)."""

    kind = "thread"

    def __init__(self, workers: int, chunksize: Optional[int], init: Init) -> None:
        import mtasklite as mt

        Adapter.__init__(self, workers, chunksize, init)
        worker = None if init is None else tasks.SlowModel(*init)
        self.pool = mt.StatefulThreadPoolExecutor(workers, worker=worker)


class StdlibProcess(Adapter):
    """``concurrent.futures.ProcessPoolExecutor.map(chunksize=...)``."""

    def __init__(self, workers: int, chunksize: Optional[int], init: Init) -> None:
        from concurrent.futures import ProcessPoolExecutor

        super().__init__(workers, chunksize, init)
        self.pool = ProcessPoolExecutor(workers, **_initializer(init))

    def _map(self, fn: Callable[..., Any], items: Iterable[Any]) -> Iterable[Any]:
        return self.pool.map(fn, items, chunksize=self.chunksize or 1)  # type: ignore[no-any-return]

    def _shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class StdlibThread(StdlibProcess):
    """``concurrent.futures.ThreadPoolExecutor.map`` (it ignores chunksize)."""

    kind = "thread"

    def __init__(self, workers: int, chunksize: Optional[int], init: Init) -> None:
        from concurrent.futures import ThreadPoolExecutor

        Adapter.__init__(self, workers, chunksize, init)
        self.pool = ThreadPoolExecutor(workers, **_initializer(init))


class MpPool(Adapter):
    """``multiprocessing.Pool.imap(chunksize=...)``; stopping it means ``terminate()``."""

    def __init__(self, workers: int, chunksize: Optional[int], init: Init) -> None:
        import multiprocessing

        super().__init__(workers, chunksize, init)
        self.pool = multiprocessing.Pool(workers, **_initializer(init))

    def _map(self, fn: Callable[..., Any], items: Iterable[Any]) -> Iterable[Any]:
        return self.pool.imap(fn, items, chunksize=self.chunksize or 1)  # type: ignore[no-any-return]

    def _shutdown(self) -> None:
        self.pool.terminate()
        self.pool.join()


class MpThreadPool(MpPool):
    """``multiprocessing.pool.ThreadPool.imap(chunksize=...)``."""

    kind = "thread"

    def __init__(self, workers: int, chunksize: Optional[int], init: Init) -> None:
        from multiprocessing.pool import ThreadPool

        Adapter.__init__(self, workers, chunksize, init)
        self.pool = ThreadPool(workers, **_initializer(init))


class MpireProcess(Adapter):
    """``mpire.WorkerPool(keep_alive=True).imap`` (``worker_init`` for stateful workers)."""

    requires = "mpire"

    start_method = "fork"

    def __init__(self, workers: int, chunksize: Optional[int], init: Init) -> None:
        from mpire import WorkerPool

        super().__init__(workers, chunksize, init)
        self.pool = WorkerPool(n_jobs=workers, keep_alive=True, start_method=self.start_method)

    def _map(self, fn: Callable[..., Any], items: Iterable[Any]) -> Iterable[Any]:
        worker_init = None if self.init is None else functools.partial(tasks.init_model, *self.init)
        return self.pool.imap(  # type: ignore[no-any-return]
            fn, items, chunk_size=self.chunksize, worker_init=worker_init
        )

    def _shutdown(self) -> None:
        self.pool.terminate()


class MpireThread(MpireProcess):
    """``mpire.WorkerPool(start_method="threading").imap``."""

    kind = "thread"

    start_method = "threading"


class PebbleProcess(Adapter):
    """``pebble.ProcessPool.map(chunksize=...)``, iterated through ``future.result()``."""

    requires = "pebble"

    def __init__(self, workers: int, chunksize: Optional[int], init: Init) -> None:
        from pebble import ProcessPool

        super().__init__(workers, chunksize, init)
        self.pool = ProcessPool(max_workers=workers, **_initializer(init))
        self._future: Any = None

    def _map(self, fn: Callable[..., Any], items: Iterable[Any]) -> Iterable[Any]:
        self._future = self.pool.map(fn, items, chunksize=self.chunksize or 1)
        return self._future.result()  # type: ignore[no-any-return]

    def _shutdown(self) -> None:
        if self._future is not None:
            self._future.cancel()
        self.pool.stop()
        self.pool.join()


class Loky(Adapter):
    """``loky.get_reusable_executor(...).map(chunksize=...)``."""

    requires = "loky"

    def __init__(self, workers: int, chunksize: Optional[int], init: Init) -> None:
        from loky import get_reusable_executor

        super().__init__(workers, chunksize, init)
        self.pool = get_reusable_executor(max_workers=workers, **_initializer(init))

    def _map(self, fn: Callable[..., Any], items: Iterable[Any]) -> Iterable[Any]:
        return self.pool.map(fn, items, chunksize=self.chunksize or 1)  # type: ignore[no-any-return]


class Joblib(Adapter):
    """``joblib.Parallel(return_as="generator")`` kept open as a context (auto batching)."""

    requires = "joblib"

    def __init__(self, workers: int, chunksize: Optional[int], init: Init) -> None:
        from joblib import Parallel

        super().__init__(workers, chunksize, init)
        self.pool = Parallel(n_jobs=workers, return_as="generator", **_initializer(init))
        self.pool.__enter__()

    def _map(self, fn: Callable[..., Any], items: Iterable[Any]) -> Iterable[Any]:
        from joblib import delayed

        task = delayed(fn)
        return self.pool(task(x) for x in items)  # type: ignore[no-any-return]

    def _shutdown(self) -> None:
        self.pool.__exit__(None, None, None)


class PqdmProcess(Adapter):
    """``pqdm.processes.pqdm`` (progress bar disabled); it builds its pool on every call."""

    requires = "pqdm"

    module = "pqdm.processes"

    def __init__(self, workers: int, chunksize: Optional[int], init: Init) -> None:
        import importlib

        super().__init__(workers, chunksize, init)
        self._pqdm = importlib.import_module(self.module).pqdm

    def _map(self, fn: Callable[..., Any], items: Iterable[Any]) -> Iterable[Any]:
        return self._pqdm(  # type: ignore[no-any-return]
            items,
            fn,
            n_jobs=self.workers,
            disable=True,
            exception_behaviour="immediate",
            **_initializer(self.init),
        )

    def warm_up(self) -> None:
        """Nothing to warm: pqdm has no pool outliving a call."""

    def _shutdown(self) -> None:
        pass


class PqdmThread(PqdmProcess):
    """``pqdm.threads.pqdm``."""

    kind = "thread"

    module = "pqdm.threads"


class Serial(Adapter):
    """The builtin ``map`` in the calling process (scenario 5's reference)."""

    kind = "serial"

    def _map(self, fn: Callable[..., Any], items: Iterable[Any]) -> Iterable[Any]:
        return map(fn, items)

    def _shutdown(self) -> None:
        pass


def _initializer(init: Init) -> dict[str, Any]:
    if init is None:
        return {}
    return {"initializer": tasks.init_model, "initargs": init}


ADAPTERS: dict[str, type[Adapter]] = {
    "ours-process": OursProcess,
    "ours-process-noshm": OursProcessNoShm,
    "ours-thread": OursThread,
    "stdlib-process": StdlibProcess,
    "stdlib-thread": StdlibThread,
    "mp-pool": MpPool,
    "mp-threadpool": MpThreadPool,
    "mpire-process": MpireProcess,
    "mpire-thread": MpireThread,
    "pebble-process": PebbleProcess,
    "loky": Loky,
    "joblib": Joblib,
    "pqdm-process": PqdmProcess,
    "pqdm-thread": PqdmThread,
    "serial": Serial,
}


def open_adapter(impl: str, workers: int, chunksize: Optional[int], init: Init = None) -> Adapter:
    """Create the adapter (and its pool) for implementation ``impl``."""
    return ADAPTERS[impl](workers, chunksize, init)
