"""``mtasklite.Pool``: the original mtasklite API, rebuilt on the stateful executors.

``with Pool(worker, n_jobs) as pool: for r in pool(items)`` runs ``worker`` over ``items`` on
a thread or process pool with one of three argument-passing modes and one of three
exception modes (see :mod:`mtasklite.constants`).  The pqdm functions in
:mod:`mtasklite.processes` and :mod:`mtasklite.threads` are thin wrappers around it.
"""

from __future__ import annotations

import threading
import warnings
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Collection,
    Generic,
    Iterable,
    Iterator,
    Literal,
    Optional,
    Sequence,
    TypeVar,
    Union,
    overload,
)

if TYPE_CHECKING:  # annotations only: typing_extensions costs ~10 ms of import time
    from typing_extensions import Self, TypeIs

from ._imap_api import DEFAULT
from ._outcomes import is_ctrl_c, task_outcome
from ._pool_args import KeywordArgs, StarArgs, check_n_jobs, either_spelling
from ._validate import input_length, positive_int_or_none
from ._worker_checks import NamedWorkerHandle, workers_name
from .constants import (
    ArgumentPassing,
    ExceptionBehaviour,
    argument_passing,
)
from .errors import DeferredExceptions
from .executor_api import PoolBackend
from .process_pool import StatefulProcessPoolExecutor
from .stateful import WorkerLike
from .thread_pool import StatefulThreadPoolExecutor

__all__ = ["Pool", "PoolResults", "SizedPoolResults", "is_exception", "run_closing_pool"]

T = TypeVar("T")
R = TypeVar("R")


def is_exception(obj: object) -> TypeIs[BaseException]:
    """Whether ``obj`` is an exception (how a failed item shows up in ``"ignore"`` mode)."""
    return isinstance(obj, BaseException)


class PoolResults(Iterator[T]):
    """The lazy results of one :class:`Pool` run (or one pqdm call).

    Nothing runs until it is iterated, and it can be iterated once: ``list(results)`` keeps
    the values (a result dropped before its first item warns, as an un-awaited coroutine
    does; its ``repr`` says how far it got).  Iterate it, or use it as a context manager:
    leaving ``with`` (or :meth:`close`) stops reading input, cancels what has not started
    and, for pqdm, shuts its pool down.
    """

    def __init__(
        self,
        source: Iterator[T],
        on_close: Callable[[], None],
        on_interrupt: Optional[Callable[[], None]] = None,
    ):
        self._source = source
        self._on_close = on_close
        self._on_interrupt = on_interrupt
        self._read = 0
        #: "not started" until the first ``next()``; ``None`` when nobody should be warned
        #: about a drop (an inner result that another PoolResults iterates)
        self._state: Optional[str] = "not started"

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> T:
        try:
            value = next(self._source)
        except StopIteration:
            if self._state != "closed":
                self._state = "finished"
            raise
        except KeyboardInterrupt as exc:
            # Ctrl-C may land in the progress bar's frame rather than in the wait for a
            # result: stop the workers here too, so no further item starts.
            self._state = "interrupted"
            if self._on_interrupt is not None and is_ctrl_c(exc):
                self._on_interrupt()
            raise
        except BaseException:
            self._state = "stopped by an exception"
            raise
        self._read += 1
        self._state = "running"
        return value

    def close(self) -> None:
        """Stop the run now (idempotent)."""
        if self._state != "finished":
            self._state = "closed"
        close = getattr(self._source, "close", None)
        if close is not None:
            close()
        self._on_close()

    def __repr__(self) -> str:
        length = getattr(self, "_length", None)
        read = f"{self._read} of {length}" if length is not None else str(self._read)
        return (
            f"<{type(self).__name__}: lazy, {read} results read, {self._state}; "
            "iterate it once (list(results), for ...) to run the items>"
        )

    def __del__(self) -> None:
        # Like an un-awaited coroutine: a run dropped before it started did nothing.
        if getattr(self, "_state", None) == "not started":
            warnings.warn(
                f"{type(self).__name__} dropped before it was iterated: its items never ran "
                "and no exception was raised (pqdm and Pool results are lazy: iterate them, "
                "e.g. list(pqdm(...)), or use them in a for loop or a with block)",
                RuntimeWarning,
                stacklevel=2,
                source=self,
            )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> Literal[False]:
        if is_ctrl_c(exc_val) and self._on_interrupt is not None:
            self._on_interrupt()  # Ctrl-C in the loop body: do not wait for running work
        self.close()
        return False


class SizedPoolResults(PoolResults[T]):
    """:class:`PoolResults` of a sized input: ``len()`` is the number of results."""

    def __init__(
        self,
        source: Iterator[T],
        on_close: Callable[[], None],
        length: int,
        on_interrupt: Optional[Callable[[], None]] = None,
    ):
        super().__init__(source, on_close, on_interrupt)
        self._length = length

    def __len__(self) -> int:
        return self._length


_Raising = Literal[
    "immediate", "deferred", ExceptionBehaviour.IMMEDIATE, ExceptionBehaviour.DEFERRED
]
_Workers = Union[Callable[..., T], Sequence[Callable[..., T]]]
_Mode = Union[ExceptionBehaviour, str]
_SINGLE = ArgumentPassing.AS_SINGLE_ARG


def _process_options(
    stop_grace: Optional[float], max_memory: Optional[int], client: Any, use_threads: bool
) -> dict[str, Any]:
    """The worker-process options given (refused for threads and Dask, where they do not
    apply), as keywords for ``StatefulProcessPoolExecutor``."""
    given = {
        name: value
        for name, value in (("stop_grace", stop_grace), ("max_memory_per_child", max_memory))
        if value is not None
    }
    if given and (client is not None or use_threads):
        where = "a Dask client" if client is not None else "use_threads=True"
        raise ValueError(f"{', '.join(given)} applies to worker processes, not with {where}")
    return given


class Pool(Generic[R]):
    """A pool of stateful worker processes (or threads) mapping one worker over iterables.

    ``worker_or_worker_arr``: a function, a ``@delayed_init`` spec, or a list of them, one per
    worker (``n_jobs`` then defaults to its length and must match it if given).

    ``argument_type``: ``"single_arg"`` (``worker(item)``), ``"args"`` (``worker(*item)``) or
    ``"kwargs"`` (``worker(**item)``).  ``exception_behavior``: ``"immediate"`` raises the
    first failure, ``"deferred"`` raises :class:`~mtasklite.DeferredExceptions` with every
    failure at the end, ``"ignore"`` yields exceptions in place of results.

    ``bounded=False`` submits a sized input all at once (adaptive chunks are sized first,
    from the first chunks' measured times); otherwise at most
    ``chunk_prefill_ratio`` tasks per worker (default 4) of ``chunk_size`` items each are in
    flight (``chunk_size=None``: adaptive).  Unsized inputs
    always run bounded.  ``task_timeout`` limits each item; ``join_timeout`` bounds how long
    closing waits for the workers before stopping them.  ``mp_context``, ``initializer``,
    ``initargs``, ``max_tasks_per_child``, ``stop_grace`` and ``max_memory_per_child`` go to
    the process executor; ``client`` (a Dask
    ``distributed.Client``) runs the pool on a Dask cluster instead.
    ``exception_behaviour`` (pqdm's spelling) is accepted for ``exception_behavior``.

    The results are lazy: nothing runs until they are iterated (a :class:`PoolResults`
    dropped unread warns), and they can be iterated once.
    """

    # Types: "immediate"/"deferred" (the default) yield the worker's results; in "ignore"
    # mode an item may be the exception it raised.
    @overload
    def __init__(
        self: Pool[T], worker_or_worker_arr: _Workers[T], n_jobs: Optional[int] = None,
        argument_type: Union[ArgumentPassing, str] = _SINGLE, exception_behavior: _Raising = ...,
        bounded: bool = True, chunk_size: Optional[int] = None,
        chunk_prefill_ratio: Optional[int] = None, is_unordered: bool = False,
        use_threads: bool = False, task_timeout: Optional[float] = None,
        join_timeout: Optional[float] = None, *, mp_context: Any = None,
        initializer: Optional[Callable[..., object]] = None, initargs: tuple[Any, ...] = (),
        max_tasks_per_child: Optional[int] = None, client: Any = None,
        exception_behaviour: Optional[_Raising] = None, stop_grace: Optional[float] = None,
        max_memory_per_child: Optional[int] = None,
    ) -> None: ...  # fmt: skip

    @overload
    def __init__(
        self: Pool[Union[T, BaseException]], worker_or_worker_arr: _Workers[T],
        n_jobs: Optional[int] = None, argument_type: Union[ArgumentPassing, str] = _SINGLE,
        exception_behavior: _Mode = ..., bounded: bool = True,
        chunk_size: Optional[int] = None, chunk_prefill_ratio: Optional[int] = None,
        is_unordered: bool = False, use_threads: bool = False,
        task_timeout: Optional[float] = None, join_timeout: Optional[float] = None, *,
        mp_context: Any = None, initializer: Optional[Callable[..., object]] = None,
        initargs: tuple[Any, ...] = (), max_tasks_per_child: Optional[int] = None,
        client: Any = None, exception_behaviour: Optional[_Mode] = None,
        stop_grace: Optional[float] = None, max_memory_per_child: Optional[int] = None,
    ) -> None: ...  # fmt: skip

    def __init__(
        self,
        worker_or_worker_arr: Union[WorkerLike, Sequence[WorkerLike]],
        n_jobs: Optional[int] = None,
        argument_type: Union[ArgumentPassing, str] = ArgumentPassing.AS_SINGLE_ARG,
        exception_behavior: Union[ExceptionBehaviour, str] = ExceptionBehaviour.IMMEDIATE,
        bounded: bool = True,
        chunk_size: Optional[int] = None,
        chunk_prefill_ratio: Optional[int] = None,
        is_unordered: bool = False,
        use_threads: bool = False,
        task_timeout: Optional[float] = None,
        join_timeout: Optional[float] = None,
        *,
        mp_context: Any = None,
        initializer: Optional[Callable[..., object]] = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_child: Optional[int] = None,
        client: Any = None,
        exception_behaviour: Union[ExceptionBehaviour, str, None] = None,
        stop_grace: Optional[float] = None,
        max_memory_per_child: Optional[int] = None,
    ):
        check_n_jobs(n_jobs, worker_or_worker_arr)
        self.argument_type = argument_passing(argument_type)
        self.exception_behavior = either_spelling(exception_behavior, exception_behaviour)
        self.bounded = bool(bounded)
        self.chunk_size = positive_int_or_none("chunk_size", chunk_size)
        self.chunk_prefill_ratio = positive_int_or_none("chunk_prefill_ratio", chunk_prefill_ratio)
        self.is_unordered = bool(is_unordered)
        self.use_threads = bool(use_threads)
        self.task_timeout = task_timeout
        self.join_timeout = join_timeout
        self._executor: PoolBackend
        processes = _process_options(stop_grace, max_memory_per_child, client, use_threads)
        if client is not None:
            from .dask import StatefulDaskExecutor

            self._executor = StatefulDaskExecutor(
                client, worker=worker_or_worker_arr, task_timeout=task_timeout
            )
        elif self.use_threads:
            self._executor = StatefulThreadPoolExecutor(
                n_jobs, "mtasklite-pool", initializer, initargs,
                worker=worker_or_worker_arr, task_timeout=task_timeout,
            )  # fmt: skip
        else:
            self._executor = StatefulProcessPoolExecutor(
                n_jobs, mp_context, initializer, initargs,
                max_tasks_per_child=max_tasks_per_child,
                worker=worker_or_worker_arr, task_timeout=task_timeout, **processes,
            )  # fmt: skip
        self.num_workers: int = self._executor._max_workers
        self._worker_name = workers_name(worker_or_worker_arr)
        self._closed = False
        self._close_lock = threading.Lock()

    @overload
    def __call__(self, input_iterable: Collection[Any]) -> SizedPoolResults[R]: ...

    @overload
    def __call__(self, input_iterable: Iterable[Any]) -> PoolResults[R]: ...

    def __call__(self, input_iterable: Iterable[Any]) -> PoolResults[R]:
        """Run the worker over ``input_iterable``; returns the lazy results (sized when the
        input is), which run as they are iterated."""
        return self._run(input_iterable, close_pool=False)

    def _run(
        self, input_iterable: Iterable[Any], close_pool: bool, inner: bool = False
    ) -> PoolResults[Any]:
        executor = self._executor
        executor.worker  # noqa: B018  # raises if the executor has no worker objects
        fn: Callable[..., Any] = NamedWorkerHandle(self._worker_name)
        if self.argument_type is ArgumentPassing.AS_ARGS:
            fn = StarArgs(fn)
        elif self.argument_type is ArgumentPassing.AS_KWARGS:
            fn = KeywordArgs(fn)
        length = input_length(input_iterable)
        # Unbounded is only possible when the input is sized: everything is submitted now.
        buffersize = max(1, length) if not self.bounded and length is not None else None
        if buffersize is None:
            buffersize = self._buffersize()
        behaviour = self.exception_behavior
        ordered = not self.is_unordered
        results = executor._imap(
            fn,
            (input_iterable,),
            ordered,
            None,
            self.chunk_size if self.chunk_size is not None else DEFAULT,
            buffersize,
            self.task_timeout,
            return_exceptions=True,
            indexed=behaviour is ExceptionBehaviour.DEFERRED and not ordered,
        )

        def close() -> None:
            results.close()
            if close_pool:
                self.close()

        source = _apply_exception_mode(results, behaviour, ordered, close)
        wrapped = (
            PoolResults(source, close, self.terminate)
            if length is None
            else SizedPoolResults(source, close, length, self.terminate)
        )
        if inner:
            wrapped._state = None  # its owner warns, if anyone
        return wrapped

    def _buffersize(self) -> int:
        ratio = self.chunk_prefill_ratio if self.chunk_prefill_ratio is not None else 4
        return ratio * self.num_workers

    def close(self) -> None:
        """Cancel queued work and stop the workers, waiting at most ``join_timeout`` for the
        running tasks before stopping them (processes) or abandoning them (threads)."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        if self.join_timeout is None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        else:
            self._executor._close_within(self.join_timeout)

    def terminate(self) -> None:
        """Stop at once: cancel queued work, stop worker processes mid-task."""
        with self._close_lock:
            self._closed = True
        self._executor._stop_now()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> Literal[False]:
        if is_ctrl_c(exc_val):
            self.terminate()
        else:
            self.close()
        return False


def run_closing_pool(pool: Pool[Any], input_iterable: Iterable[Any]) -> PoolResults[Any]:
    """``pool(input_iterable)`` for a caller that owns ``pool`` (pqdm): ending the results
    closes the pool, and a drop before iterating is left to the caller to warn about."""
    return pool._run(input_iterable, close_pool=True, inner=True)


def _apply_exception_mode(
    results: Iterator[Any],
    behaviour: ExceptionBehaviour,
    ordered: bool,
    close: Callable[[], None],
) -> Iterator[Any]:
    """Yield results, treating failed items (exception objects) as ``behaviour`` says.

    ``close`` runs when the iteration ends for any reason (exhausted, raised, closed, lost).
    """
    try:
        if behaviour is ExceptionBehaviour.IGNORE:
            yield from results
        elif behaviour is ExceptionBehaviour.IMMEDIATE:
            for value in results:
                if isinstance(value, BaseException):
                    close()  # stop reading input, cancel what has not started
                    raise task_outcome(value)
                yield value
        else:
            failures: list[tuple[int, BaseException]] = []
            if ordered:
                for position, value in enumerate(results):
                    if isinstance(value, BaseException):
                        failures.append((position, value))
                    yield value
            else:
                for position, value in results:
                    if isinstance(value, BaseException):
                        failures.append((position, value))
                    yield value
            if failures:
                failures.sort(key=lambda pair: pair[0])
                raise DeferredExceptions(*(error for _, error in failures))
    finally:
        close()
