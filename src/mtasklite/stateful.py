"""Stateful workers: ``delayed_init`` specs, the worker context and the ``ex.worker`` handle.

A spec is a picklable recipe (class + constructor arguments).  Every pool worker builds its
own instance from its spec once, before its first task, and keeps it for its life; tasks reach
it through :func:`current_worker` or the executor's ``worker`` handle.
"""

from __future__ import annotations

import functools
import sys
import threading
from typing import Any, Callable, Generic, Optional, Sequence, TypeVar, Union, cast

if sys.version_info >= (3, 10):
    from typing import ParamSpec
else:  # pragma: no cover - 3.9 only (typing_extensions costs ~10 ms of import time)
    from typing_extensions import ParamSpec

__all__ = [
    "DelayedInit",
    "DelayedInitClass",
    "WorkerHandle",
    "current_worker",
    "delayed_init",
    "worker_index",
]

P = ParamSpec("P")
T = TypeVar("T")

#: What ``worker=`` accepts per worker: a spec, or any plain (stateless) callable.
WorkerLike = Callable[..., Any]


class DelayedInit(Generic[T]):
    """A recorded constructor call: ``Tokenizer("en")`` on a ``@delayed_init`` class.

    Pickling it sends only the class reference and the arguments, never an instance.  Calling
    it directly builds one instance (once, lazily) and calls it, so worker code also runs
    serially without a pool.
    """

    __slots__ = ("_factory", "_instance", "_lock", "args", "kwargs")

    def __init__(self, factory: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]):
        self._factory = factory
        self.args = args
        self.kwargs = kwargs
        self._instance: Optional[T] = None
        self._lock = threading.Lock()

    @property
    def cls(self) -> Callable[..., T]:
        """The wrapped class (or factory) this spec builds."""
        return getattr(self._factory, "__wrapped__", self._factory)

    def build(self) -> T:
        """Build and return a *new* instance (each pool worker calls this once)."""
        return self.cls(*self.args, **self.kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        instance = self._instance
        if instance is None:
            with self._lock:
                if self._instance is None:
                    self._instance = self.build()
                instance = self._instance
        return instance(*args, **kwargs)  # type: ignore[operator]

    def __reduce__(self) -> tuple[Any, ...]:
        return (DelayedInit, (self._factory, self.args, self.kwargs))

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args]
        parts += [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{getattr(self.cls, '__qualname__', self.cls)!s}({', '.join(parts)})"


class DelayedInitClass(Generic[P, T]):
    """What ``@delayed_init`` turns a class into: calling it records a :class:`DelayedInit`."""

    __wrapped__: Callable[P, T]
    __qualname__: str

    def __init__(self, cls: Callable[P, T]):
        # Copy only the identity attributes: updating __dict__ (update_wrapper's default) would
        # pull the class's own methods, e.g. a custom __reduce__, onto this decorator object.
        functools.update_wrapper(self, cls, updated=())
        self.__wrapped__ = cls

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> DelayedInit[T]:
        return DelayedInit(cast("Callable[..., T]", self), args, kwargs)

    def __instancecheck__(self, obj: object) -> bool:
        return isinstance(obj, self.__wrapped__)  # type: ignore[arg-type]

    def __reduce__(self) -> Union[str, tuple[Any, ...]]:
        # Pickle by reference to the decorated module-level name when it resolves to us (the
        # original class is shadowed by this object, so pickling *it* by name would fail).
        module = sys.modules.get(self.__module__)
        found: Any = module
        for part in self.__qualname__.split("."):
            found = getattr(found, part, None)
        if found is self:
            return str(self.__qualname__)
        return (DelayedInitClass, (self.__wrapped__,))

    def __repr__(self) -> str:
        return f"<delayed_init {self.__module__}.{self.__qualname__}>"


def delayed_init(cls: Callable[P, T]) -> DelayedInitClass[P, T]:
    """Class decorator: constructor calls return picklable specs instead of instances.

    >>> @delayed_init
    ... class Counter:
    ...     def __init__(self, start: int) -> None:
    ...         self.n = start
    ...     def __call__(self, x: int) -> int:
    ...         self.n += 1
    ...         return x + self.n
    >>> spec = Counter(10)       # nothing is built yet
    >>> spec(1), spec(1)         # called directly: built once, then reused
    (12, 13)
    """
    if not callable(cls):
        raise TypeError(f"delayed_init expects a class or factory, got {cls!r}")
    return DelayedInitClass(cls)


def build_worker(spec: WorkerLike) -> Any:
    """The per-worker object for ``spec``: a fresh instance of a spec, or a plain callable as is."""
    return spec.build() if isinstance(spec, DelayedInit) else spec


def close_worker(instance: object) -> None:
    """A worker retires gracefully: close the object built from its spec, if it has a
    ``close()``.  Called once, as the worker's last act; whatever ``close()`` raises is
    logged, never raised into the pool (no future waits for it).  A worker killed outright
    (SIGKILL, a crash) never gets here."""
    close = getattr(instance, "close", None)
    if instance is None or not callable(close):
        return
    try:
        close()
    except BaseException:
        import logging  # only here: importing this module stays lean

        logging.getLogger("concurrent.futures").error(
            "mtasklite: closing the worker object %r failed", instance, exc_info=True
        )


def describe_worker(spec: WorkerLike) -> str:
    """A short human name for error messages."""
    if isinstance(spec, DelayedInit):
        return repr(spec)
    return getattr(spec, "__qualname__", None) or repr(spec)


# --- the worker context ------------------------------------------------------------------
#
# Thread workers keep their context in a thread-local; a worker *process* sets the
# process-wide one.  The thread-local wins, so a thread pool used inside a worker process
# still sees its own workers.


class WorkerContext:
    """Who the calling worker is: its index and the object built from its spec."""

    __slots__ = ("index", "instance")

    def __init__(self, index: int, instance: Any):
        self.index = index
        self.instance = instance


_thread_context = threading.local()
_process_context: Optional[WorkerContext] = None


def get_context() -> Optional[WorkerContext]:
    """The calling worker's context, or ``None`` outside a pool worker."""
    ctx: Optional[WorkerContext] = getattr(_thread_context, "ctx", None)
    return ctx if ctx is not None else _process_context


def set_thread_context(ctx: Optional[WorkerContext]) -> None:
    _thread_context.ctx = ctx


def set_process_context(ctx: Optional[WorkerContext]) -> None:
    global _process_context
    _process_context = ctx
    # A forked child starts in the forking thread, whose thread-local it would otherwise keep.
    _thread_context.ctx = None


def current_worker() -> Any:
    """The calling pool worker's own object (built from its spec), or ``None`` outside a pool."""
    ctx = get_context()
    return None if ctx is None else ctx.instance


def worker_index() -> Optional[int]:
    """The calling pool worker's index ``0..n-1``, or ``None`` outside a pool."""
    ctx = get_context()
    return None if ctx is None else ctx.index


class WorkerHandle:
    """``ex.worker``: a picklable stand-in that calls the *running* worker's own object."""

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        ctx = get_context()
        if ctx is None or ctx.instance is None:
            raise RuntimeError(
                "ex.worker was called outside a pool worker of an executor created with worker="
            )
        return ctx.instance(*args, **kwargs)

    def __reduce__(self) -> str:
        return "WORKER_HANDLE"

    def __repr__(self) -> str:
        return "<mtasklite worker handle>"


WORKER_HANDLE = WorkerHandle()


def resolve_workers(
    worker: Union[WorkerLike, Sequence[WorkerLike], None], max_workers: Optional[int]
) -> tuple[Optional[list[WorkerLike]], Optional[int]]:
    """Validate ``worker=`` and return ``(specs or None, max_workers)``.

    A single spec or callable is replicated (``specs`` has one entry, used by every worker); a
    sequence gives one per worker and fixes ``max_workers`` to its length.
    """
    if worker is None:
        return None, max_workers
    if isinstance(worker, (list, tuple)):
        if not worker:
            raise ValueError("worker= is an empty sequence; give at least one worker")
        for i, w in enumerate(worker):
            if not callable(w):
                raise TypeError(
                    f"worker[{i}] is not callable: {w!r} (expected a @delayed_init spec "
                    "or a function)"
                )
        if max_workers is not None and max_workers != len(worker):
            raise ValueError(
                f"max_workers={max_workers} does not match the {len(worker)} workers given in "
                "worker= (omit max_workers to use one worker per entry)"
            )
        return list(worker), len(worker)
    if not callable(worker):
        raise TypeError(
            f"worker= is not callable: {worker!r} (expected a @delayed_init spec, a function, "
            "or a list of them)"
        )
    return [worker], max_workers


def spec_for(specs: Optional[list[WorkerLike]], index: int) -> Optional[WorkerLike]:
    """Worker ``index``'s spec: its own entry, or the replicated single one."""
    if specs is None:
        return None
    return specs[index] if len(specs) > 1 else specs[0]
