"""The engine behind :func:`mtasklite.processes.pqdm` and :func:`mtasklite.threads.pqdm`."""

from __future__ import annotations

import difflib
import inspect
from typing import (
    Any,
    Callable,
    Collection,
    Iterable,
    Literal,
    Optional,
    Protocol,
    Sequence,
    TypeVar,
    Union,
    cast,
    overload,
)

from tqdm.auto import tqdm as tqdm_auto

from .constants import ArgumentPassing, ExceptionBehaviour
from .constants import exception_behaviour as parse_exception_behaviour
from .pool import Pool, PoolResults, SizedPoolResults, run_closing_pool
from .stateful import WorkerLike

__all__ = ["Pqdm", "make_pqdm", "run_pqdm"]

T = TypeVar("T")

#: parameters pqdm names explicitly: passing them again through ``**kwargs`` is an error
_EXPLICIT = frozenset(
    {
        "input_iterable",
        "worker_or_worker_arr",
        "n_jobs",
        "argument_type",
        "bounded",
        "exception_behaviour",
        "tqdm_class",
        "use_threads",
    }
)
#: the remaining keyword arguments that go to the pool; everything else goes to tqdm
_POOL_OPTIONS = frozenset(inspect.signature(Pool).parameters) - _EXPLICIT


def run_pqdm(
    input_iterable: Iterable[Any],
    worker_or_worker_arr: Union[WorkerLike, Sequence[WorkerLike]],
    n_jobs: Optional[int],
    argument_type: Union[ArgumentPassing, str],
    bounded: bool,
    exception_behaviour: Union[ExceptionBehaviour, str],
    tqdm_class: Any,
    use_threads: bool,
    kwargs: dict[str, Any],
) -> PoolResults[Any]:
    """Split ``kwargs`` between the pool and tqdm, start the pool, wrap its results in a bar."""
    repeated = sorted(_EXPLICIT.intersection(kwargs))
    if repeated:
        raise TypeError(f"pqdm() got {', '.join(map(repr, repeated))} twice (as a named argument)")
    pool_kwargs = {name: kwargs[name] for name in _POOL_OPTIONS.intersection(kwargs)}
    tqdm_kwargs = {name: value for name, value in kwargs.items() if name not in pool_kwargs}
    _check_tqdm_kwargs(tqdm_class, tqdm_kwargs)
    alias = pool_kwargs.pop("exception_behavior", None)  # Pool's spelling, also accepted
    pool = Pool(
        worker_or_worker_arr,
        n_jobs,
        argument_type,
        exception_behaviour if alias is None else _merge_spellings(exception_behaviour, alias),
        bounded,
        use_threads=use_threads,
        **pool_kwargs,
    )
    try:
        results = run_closing_pool(pool, input_iterable)
        length = len(results) if isinstance(results, SizedPoolResults) else None
        tqdm_kwargs.setdefault("total", length)
        bar = tqdm_class(results, **tqdm_kwargs)
    except BaseException:
        pool.terminate()
        raise

    def close() -> None:
        results.close()
        bar.close()

    source = iter(bar)
    if length is None:
        return PoolResults(source, close, pool.terminate)
    return SizedPoolResults(source, close, length, pool.terminate)


def _merge_spellings(
    behaviour: Union[ExceptionBehaviour, str], behavior: Union[ExceptionBehaviour, str]
) -> ExceptionBehaviour:
    """pqdm's ``exception_behaviour`` (default ``"ignore"``) with Pool's ``exception_behavior``."""
    ours, theirs = parse_exception_behaviour(behaviour), parse_exception_behaviour(behavior)
    if ours is not ExceptionBehaviour.IGNORE and ours is not theirs:
        raise TypeError(
            f"exception_behaviour={ours.value!r} and exception_behavior={theirs.value!r} "
            "disagree; pass one of the two spellings"
        )
    return theirs


def _check_tqdm_kwargs(tqdm_class: Any, tqdm_kwargs: dict[str, Any]) -> None:
    """Refuse a keyword that neither pqdm, the pool nor ``tqdm_class`` takes, under our name
    (tqdm would raise its own ``TqdmKeyError``, or ignore it when disabled)."""
    accepted = _named_parameters(tqdm_class)
    unknown = sorted(name for name in tqdm_kwargs if accepted is not None and name not in accepted)
    if not unknown:
        return
    known = sorted(_EXPLICIT | _POOL_OPTIONS | (accepted or frozenset()))
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise TypeError(
        f"pqdm() got unexpected keyword argument(s) {', '.join(hints)}: not an option of pqdm, "
        f"of mtasklite.Pool or of {getattr(tqdm_class, '__name__', tqdm_class)}"
    )


def _named_parameters(target: Any) -> Optional[frozenset[str]]:
    """Keyword names ``target`` (a class or a function) accepts; ``None`` if it takes any."""
    names: set[str] = set()
    chain = [klass.__init__ for klass in getattr(target, "__mro__", ())
             if "__init__" in klass.__dict__ and klass is not object]  # fmt: skip
    for function in chain or [target]:
        try:
            parameters = inspect.signature(function).parameters.values()
        except (TypeError, ValueError):
            return None
        names.update(p.name for p in parameters if p.kind in _NAMED_KINDS and p.name != "self")
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            return frozenset(names)
    # Every __init__ passes **kwargs on: what is left reaches object.__init__, which takes none
    return frozenset(names) if chain else None


_NAMED_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


#: the exception modes in which a failed item raises (the others yield the exception)
_Raising = Literal[
    "immediate", "deferred", ExceptionBehaviour.IMMEDIATE, ExceptionBehaviour.DEFERRED
]
_Keeping = Literal["ignore", ExceptionBehaviour.IGNORE]
_Workers = Union[Callable[..., T], Sequence[Callable[..., T]]]
_SINGLE = ArgumentPassing.AS_SINGLE_ARG


class Pqdm(Protocol):
    """The type of ``mtasklite.threads.pqdm`` and ``mtasklite.processes.pqdm``: a sized input
    gives a sized result; in ``"ignore"`` mode (the default) items may be exceptions."""

    @overload
    def __call__(
        self, input_iterable: Collection[Any], worker_or_worker_arr: _Workers[T],
        n_jobs: Optional[int] = None, argument_type: Union[ArgumentPassing, str] = _SINGLE,
        bounded: bool = False, exception_behaviour: _Keeping = ..., tqdm_class: Any = ...,
        **kwargs: Any,
    ) -> SizedPoolResults[Union[T, BaseException]]: ...  # fmt: skip

    @overload
    def __call__(
        self, input_iterable: Collection[Any], worker_or_worker_arr: _Workers[T],
        n_jobs: Optional[int] = None, argument_type: Union[ArgumentPassing, str] = _SINGLE,
        bounded: bool = False, *, exception_behaviour: _Raising, tqdm_class: Any = ...,
        **kwargs: Any,
    ) -> SizedPoolResults[T]: ...  # fmt: skip

    @overload
    def __call__(
        self, input_iterable: Iterable[Any], worker_or_worker_arr: _Workers[T],
        n_jobs: Optional[int] = None, argument_type: Union[ArgumentPassing, str] = _SINGLE,
        bounded: bool = False, *, exception_behaviour: _Raising, tqdm_class: Any = ...,
        **kwargs: Any,
    ) -> PoolResults[T]: ...  # fmt: skip

    @overload
    def __call__(
        self, input_iterable: Iterable[Any], worker_or_worker_arr: _Workers[T],
        n_jobs: Optional[int] = None, argument_type: Union[ArgumentPassing, str] = _SINGLE,
        bounded: bool = False, exception_behaviour: Union[ExceptionBehaviour, str] = ...,
        tqdm_class: Any = ..., **kwargs: Any,
    ) -> PoolResults[Union[T, BaseException]]: ...  # fmt: skip


def make_pqdm(use_threads: bool) -> Pqdm:
    """``pqdm`` on worker threads or processes (``mtasklite.threads`` / ``.processes``)."""

    def pqdm(
        input_iterable: Iterable[Any],
        worker_or_worker_arr: Union[WorkerLike, Sequence[WorkerLike]],
        n_jobs: Optional[int] = None,
        argument_type: Union[ArgumentPassing, str] = ArgumentPassing.AS_SINGLE_ARG,
        bounded: bool = False,
        exception_behaviour: Union[ExceptionBehaviour, str] = ExceptionBehaviour.IGNORE,
        tqdm_class: Any = tqdm_auto,
        **kwargs: Any,
    ) -> PoolResults[Any]:
        return run_pqdm(
            input_iterable,
            worker_or_worker_arr,
            n_jobs,
            argument_type,
            bounded,
            exception_behaviour,
            tqdm_class,
            use_threads,
            kwargs,
        )

    pqdm.__doc__ = _PQDM_DOC.format(on="worker threads" if use_threads else "worker processes")
    pqdm.__module__ = "mtasklite.threads" if use_threads else "mtasklite.processes"
    pqdm.__qualname__ = "pqdm"
    return cast(Pqdm, pqdm)


_PQDM_DOC = """Map a worker over ``input_iterable`` on {on}, with a tqdm progress bar.

    Same argument order as pqdm's ``pqdm``; differences: the result is a lazy iterable
    (and a context manager that shuts the pool down), the worker may be a ``@delayed_init``
    spec or a list of workers (one per worker; ``n_jobs`` then optional), any iterable
    works, ``bounded=False`` submits a sized input up front (unsized inputs always run
    bounded), and failed items yield their exception by default (``exception_behaviour``:
    ``"ignore"``, ``"immediate"`` or ``"deferred"``).  Keyword arguments the pool accepts
    (``chunk_size``, ``chunk_prefill_ratio``, ``is_unordered``, ``task_timeout``,
    ``join_timeout``, ``mp_context``, ...) go to :class:`~mtasklite.Pool`; the rest to tqdm;
    an unknown keyword is a ``TypeError``.  ``exception_behavior`` (Pool's spelling) is
    accepted too.  Nothing runs until the result is iterated, once (a result dropped unread
    warns).  Raises ``ValueError`` for a bad ``n_jobs`` or mode; with ``"immediate"`` the
    iteration raises the worker's exception, with ``"deferred"``
    :class:`~mtasklite.DeferredExceptions`; the pool's own failures
    (:class:`~mtasklite.TaskTimeoutError`, :class:`~mtasklite.WorkerCrashedError`, ...) are
    handled the same way.
    """
