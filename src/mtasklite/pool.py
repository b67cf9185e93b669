"""``mtasklite.Pool``: the original mtasklite API, rebuilt on the stateful executors.

``with Pool(worker, n_jobs) as pool: for r in pool(items)`` runs ``worker`` over ``items`` on
a thread or process pool with one of three argument-passing modes and one of three
exception modes (see :mod:`mtasklite.constants`).  The pqdm functions in
:mod:`mtasklite.processes` and :mod:`mtasklite.threads` are thin wrappers around it.
"""

from __future__ import annotations

import collections.abc
import threading
from concurrent.futures import Executor
from typing import Any, Callable, Iterable, Iterator, Literal, Optional, Sequence, TypeVar, Union

from ._outcomes import is_ctrl_c, task_outcome
from .constants import (
    ArgumentPassing,
    ExceptionBehaviour,
    argument_passing,
    exception_behaviour,
)
from .errors import DeferredExceptions
from .executor_api import StatefulExecutorMixin
from .process_pool import StatefulProcessPoolExecutor
from .stateful import WorkerLike
from .thread_pool import StatefulThreadPoolExecutor

__all__ = ["Pool", "PoolResults", "SizedPoolResults", "is_exception"]

T = TypeVar("T")


def is_exception(obj: object) -> bool:
    """Whether ``obj`` is an exception (how a failed item shows up in ``"ignore"`` mode)."""
    return isinstance(obj, BaseException)


class _StarArgs:
    """Calls ``fn(*item)``; a non-iterable item fails with a message naming the mode."""

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn

    def __call__(self, item: Any) -> Any:
        if not isinstance(item, collections.abc.Iterable):
            raise TypeError(
                f"argument_type='args' needs an iterable of arguments per input item, got "
                f"{type(item).__name__}: {item!r:.80}"
            )
        return self.fn(*item)


class _KeywordArgs:
    """Calls ``fn(**item)``; a non-mapping item fails with a message naming the mode."""

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn

    def __call__(self, item: Any) -> Any:
        if not isinstance(item, collections.abc.Mapping):
            raise TypeError(
                f"argument_type='kwargs' needs a mapping of keyword arguments per input item, "
                f"got {type(item).__name__}: {item!r:.80}"
            )
        return self.fn(**item)


class PoolResults(Iterator[Any]):
    """The lazy results of one :class:`Pool` run (or one pqdm call).

    Iterate it, or use it as a context manager: leaving ``with`` (or :meth:`close`) stops
    reading input, cancels what has not started and, for pqdm, shuts its pool down.
    """

    def __init__(
        self,
        source: Iterator[Any],
        on_close: Callable[[], None],
        on_interrupt: Optional[Callable[[], None]] = None,
    ):
        self._source = source
        self._on_close = on_close
        self._on_interrupt = on_interrupt

    def __iter__(self) -> PoolResults:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._source)
        except KeyboardInterrupt as exc:
            # Ctrl-C may land in the progress bar's frame rather than in the wait for a
            # result: stop the workers here too, so no further item starts.
            if self._on_interrupt is not None and is_ctrl_c(exc):
                self._on_interrupt()
            raise

    def close(self) -> None:
        """Stop the run now (idempotent)."""
        close = getattr(self._source, "close", None)
        if close is not None:
            close()
        self._on_close()

    def __enter__(self) -> PoolResults:
        return self

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> Literal[False]:
        if is_ctrl_c(exc_val) and self._on_interrupt is not None:
            self._on_interrupt()  # Ctrl-C in the loop body: do not wait for running work
        self.close()
        return False


class SizedPoolResults(PoolResults):
    """:class:`PoolResults` of a sized input: ``len()`` is the number of results."""

    def __init__(
        self,
        source: Iterator[Any],
        on_close: Callable[[], None],
        length: int,
        on_interrupt: Optional[Callable[[], None]] = None,
    ):
        super().__init__(source, on_close, on_interrupt)
        self._length = length

    def __len__(self) -> int:
        return self._length


def _length(iterable: Iterable[Any]) -> Optional[int]:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except (TypeError, OverflowError):
        return None


class Pool:
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
    ``initargs`` and ``max_tasks_per_child`` go to the process executor; ``client`` (a Dask
    ``distributed.Client``) runs the pool on a Dask cluster instead.
    """

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
    ):
        self.argument_type = argument_passing(argument_type)
        self.exception_behavior = exception_behaviour(exception_behavior)
        self.bounded = bool(bounded)
        self.chunk_size = _positive_or_none("chunk_size", chunk_size)
        self.chunk_prefill_ratio = _positive_or_none("chunk_prefill_ratio", chunk_prefill_ratio)
        self.is_unordered = bool(is_unordered)
        self.use_threads = bool(use_threads)
        self.task_timeout = task_timeout
        self.join_timeout = join_timeout
        self._executor: Union[StatefulExecutorMixin, Executor]
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
                worker=worker_or_worker_arr, task_timeout=task_timeout,
            )  # fmt: skip
        self.num_workers: int = self._executor._max_workers
        self._closed = False
        self._close_lock = threading.Lock()

    def __call__(self, input_iterable: Iterable[Any]) -> PoolResults:
        """Run the worker over ``input_iterable``; returns the lazy results."""
        return self._run(input_iterable, close_pool=False)

    def _run(self, input_iterable: Iterable[Any], close_pool: bool) -> PoolResults:
        executor: Any = self._executor
        fn: Callable[..., Any] = executor.worker
        if self.argument_type is ArgumentPassing.AS_ARGS:
            fn = _StarArgs(fn)
        elif self.argument_type is ArgumentPassing.AS_KWARGS:
            fn = _KeywordArgs(fn)
        length = _length(input_iterable)
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
            self.chunk_size if self.chunk_size is not None else executor._default_chunksize,
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
        if length is None:
            return PoolResults(source, close, self.terminate)
        return SizedPoolResults(source, close, length, self.terminate)

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
        executor: Any = self._executor
        if self.join_timeout is None:
            executor.shutdown(wait=True, cancel_futures=True)
            return
        executor.shutdown(wait=False, cancel_futures=True)
        if isinstance(executor, StatefulProcessPoolExecutor):
            thread = executor._executor_manager_thread
            if thread is not None:
                thread.join(self.join_timeout)
                if thread.is_alive():
                    executor.terminate()
        elif isinstance(executor, StatefulThreadPoolExecutor):
            for thread in list(executor._threads):
                thread.join(self.join_timeout)

    def terminate(self) -> None:
        """Stop at once: cancel queued work, stop worker processes mid-task."""
        with self._close_lock:
            self._closed = True
        executor: Any = self._executor
        if isinstance(executor, StatefulProcessPoolExecutor):
            executor.terminate()
        else:
            executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> Literal[False]:
        if is_ctrl_c(exc_val):
            self.terminate()
        else:
            self.close()
        return False


def _positive_or_none(name: str, value: Optional[int]) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
    return value


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
