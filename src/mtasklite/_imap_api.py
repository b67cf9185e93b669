"""``imap`` / ``imap_unordered`` as users call them: typed signatures, defaults and docs.

The overloads tell type checkers what the runtime guarantees: a result over sized inputs
(lists, ranges, dicts, ...) has ``len()``, and ``return_exceptions=True`` yields exceptions in
place of failed items.  The work itself is the executor's ``_imap``.
"""

from __future__ import annotations

from typing import Any, Callable, Collection, Iterable, Literal, Optional, TypeVar, Union, overload

from .windowing import ResultIterator, SizedResultIterator

__all__ = ["DEFAULT", "ImapMethods"]

T = TypeVar("T")
A = TypeVar("A")


class _ExecutorDefault:
    """A keyword default meaning "this executor's own setting" (readable in ``help()``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<executor default>"


#: ``task_timeout`` not given: the executor's own limit (see the docstrings)
DEFAULT: Any = _ExecutorDefault()

_IMAP_DOC = """Lazy, bounded, {order} ``map`` that also works on unsized and infinite inputs.

        At most ``buffersize`` tasks (chunks, when chunking) are submitted and not yet yielded;
        the default is four chunks, or 16 single items (64 on threads), per worker.
        ``chunksize`` is the number of items sent to a worker at once; ``None`` (the default)
        sizes chunks from measured task durations (on threads an item over half a
        millisecond still gets a task of its own; ``chunksize=1`` sends single items).
        ``timeout`` is an overall deadline in seconds as in :meth:`map`; ``task_timeout``
        limits each item (default: the executor's ``task_timeout``).  The result has
        ``len()`` exactly when every input has one, and can be iterated once; it must be
        consumed before the executor shuts down (inside its ``with`` block).

        Iterating raises what a task raised, or, with ``return_exceptions=True``, yields that
        exception in its place and goes on.  Failures that come from the pool rather than
        the task: :class:`~mtasklite.TaskTimeoutError` (an item overran ``task_timeout``),
        :class:`~mtasklite.WorkerCrashedError` (its worker process died),
        :class:`~mtasklite.TaskPicklingError` (an item or ``fn`` could not be sent),
        :class:`~mtasklite.WorkerInitError` (a worker's object could not be built).
        ``TimeoutError`` when ``timeout`` passes; ``ValueError`` for a bad argument;
        ``RuntimeError`` once the executor has shut down.
        """


class ImapMethods:
    """``imap`` and ``imap_unordered`` of both stateful executors."""

    def _imap(
        self,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        ordered: bool,
        timeout: Optional[float],
        chunksize: Optional[int],
        buffersize: Optional[int],
        task_timeout: Optional[float],
        return_exceptions: bool = False,
        indexed: bool = False,
    ) -> ResultIterator[Any]:
        raise NotImplementedError

    @overload
    def imap(
        self,
        fn: Callable[[A], T],
        iterable: Collection[A],
        /,
        *,
        timeout: Optional[float] = None,
        chunksize: Optional[int] = ...,
        buffersize: Optional[int] = None,
        task_timeout: Optional[float] = ...,
        return_exceptions: Literal[False] = False,
    ) -> SizedResultIterator[T]: ...

    @overload
    def imap(
        self,
        fn: Callable[[A], T],
        iterable: Collection[A],
        /,
        *,
        timeout: Optional[float] = None,
        chunksize: Optional[int] = ...,
        buffersize: Optional[int] = None,
        task_timeout: Optional[float] = ...,
        return_exceptions: Literal[True],
    ) -> SizedResultIterator[Union[T, BaseException]]: ...

    @overload
    def imap(
        self,
        fn: Callable[..., T],
        /,
        *iterables: Collection[Any],
        timeout: Optional[float] = None,
        chunksize: Optional[int] = ...,
        buffersize: Optional[int] = None,
        task_timeout: Optional[float] = ...,
        return_exceptions: Literal[False] = False,
    ) -> SizedResultIterator[T]: ...

    @overload
    def imap(
        self,
        fn: Callable[..., T],
        /,
        *iterables: Iterable[Any],
        timeout: Optional[float] = None,
        chunksize: Optional[int] = ...,
        buffersize: Optional[int] = None,
        task_timeout: Optional[float] = ...,
        return_exceptions: Literal[False] = False,
    ) -> ResultIterator[T]: ...

    @overload
    def imap(
        self,
        fn: Callable[..., T],
        /,
        *iterables: Iterable[Any],
        timeout: Optional[float] = None,
        chunksize: Optional[int] = ...,
        buffersize: Optional[int] = None,
        task_timeout: Optional[float] = ...,
        return_exceptions: bool,
    ) -> ResultIterator[Union[T, BaseException]]: ...

    def imap(
        self,
        fn: Callable[..., Any],
        /,
        *iterables: Iterable[Any],
        timeout: Optional[float] = None,
        chunksize: Optional[int] = None,
        buffersize: Optional[int] = None,
        task_timeout: Optional[float] = DEFAULT,
        return_exceptions: bool = False,
    ) -> ResultIterator[Any]:
        return self._imap(
            fn, iterables, True, timeout, chunksize, buffersize, task_timeout, return_exceptions
        )

    imap.__doc__ = _IMAP_DOC.format(order="ordered")

    @overload
    def imap_unordered(
        self,
        fn: Callable[[A], T],
        iterable: Collection[A],
        /,
        *,
        timeout: Optional[float] = None,
        chunksize: Optional[int] = ...,
        buffersize: Optional[int] = None,
        task_timeout: Optional[float] = ...,
        return_exceptions: Literal[False] = False,
    ) -> SizedResultIterator[T]: ...

    @overload
    def imap_unordered(
        self,
        fn: Callable[[A], T],
        iterable: Collection[A],
        /,
        *,
        timeout: Optional[float] = None,
        chunksize: Optional[int] = ...,
        buffersize: Optional[int] = None,
        task_timeout: Optional[float] = ...,
        return_exceptions: Literal[True],
    ) -> SizedResultIterator[Union[T, BaseException]]: ...

    @overload
    def imap_unordered(
        self,
        fn: Callable[..., T],
        /,
        *iterables: Collection[Any],
        timeout: Optional[float] = None,
        chunksize: Optional[int] = ...,
        buffersize: Optional[int] = None,
        task_timeout: Optional[float] = ...,
        return_exceptions: Literal[False] = False,
    ) -> SizedResultIterator[T]: ...

    @overload
    def imap_unordered(
        self,
        fn: Callable[..., T],
        /,
        *iterables: Iterable[Any],
        timeout: Optional[float] = None,
        chunksize: Optional[int] = ...,
        buffersize: Optional[int] = None,
        task_timeout: Optional[float] = ...,
        return_exceptions: Literal[False] = False,
    ) -> ResultIterator[T]: ...

    @overload
    def imap_unordered(
        self,
        fn: Callable[..., T],
        /,
        *iterables: Iterable[Any],
        timeout: Optional[float] = None,
        chunksize: Optional[int] = ...,
        buffersize: Optional[int] = None,
        task_timeout: Optional[float] = ...,
        return_exceptions: bool,
    ) -> ResultIterator[Union[T, BaseException]]: ...

    def imap_unordered(
        self,
        fn: Callable[..., Any],
        /,
        *iterables: Iterable[Any],
        timeout: Optional[float] = None,
        chunksize: Optional[int] = None,
        buffersize: Optional[int] = None,
        task_timeout: Optional[float] = DEFAULT,
        return_exceptions: bool = False,
    ) -> ResultIterator[Any]:
        return self._imap(
            fn, iterables, False, timeout, chunksize, buffersize, task_timeout, return_exceptions
        )

    imap_unordered.__doc__ = _IMAP_DOC.format(order="unordered (as tasks complete)")
