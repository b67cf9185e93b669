"""Stateful workers: ``delayed_init`` specs, the worker context and the ``ex.worker`` handle.

A spec is a picklable recipe (class + constructor arguments).  Every pool worker builds its
own instance from its spec once, before its first task, and keeps it for its life; tasks reach
it through :func:`current_worker` or the executor's ``worker`` handle.
"""

from __future__ import annotations

import collections
import functools
import os
import sys
import threading
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Generic,
    Optional,
    Sequence,
    TypeVar,
    Union,
    cast,
    overload,
)

if TYPE_CHECKING:
    import inspect

if sys.version_info >= (3, 10):
    from typing import ParamSpec
else:  # pragma: no cover - 3.9 only (typing_extensions costs ~10 ms of import time)
    from typing_extensions import ParamSpec

from ._spec_class import constructing, is_constructing, meta_for, rebuild_class

__all__ = [
    "DelayedInit",
    "DelayedInitClass",
    "DelayedInitFactory",
    "WorkerHandle",
    "current_worker",
    "delayed_init",
    "worker_index",
]

P = ParamSpec("P")
T = TypeVar("T")

#: What ``worker=`` accepts per worker: a spec, or any plain (stateless) callable.
WorkerLike = Callable[..., Any]

#: how many specs' instances a worker keeps for specs called as functions (least recently
#: used dropped first): a loop making a new spec per task must not grow a worker forever
SPECS_KEPT_PER_WORKER = 16


class DelayedInit(Generic[T]):
    """A recorded constructor call: ``Tokenizer("en")`` on a ``@delayed_init`` class.

    Pickling it sends only the class reference and the arguments, never an instance.  Where a
    function is expected it behaves as the object it describes, with one object per worker:
    called inside a pool worker it calls that worker's own instance (built on first use and
    kept, so calls never overlap, exactly as ``ex.worker`` with ``worker=spec``); called
    anywhere else it builds one instance (once, lazily) and calls it, so worker code also
    runs serially without a pool.  A worker keeps the instances of its
    ``SPECS_KEPT_PER_WORKER`` most recently used specs.
    """

    __slots__ = ("_constructor", "_factory", "_instance", "_lock", "_token", "args", "kwargs")

    def __init__(
        self,
        factory: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        constructor: Optional[str] = None,
        token: Optional[int] = None,
    ):
        self._factory = factory
        self._constructor = constructor
        self.args = args
        self.kwargs = kwargs
        self._instance: Optional[T] = None
        self._lock = threading.Lock()
        # Identity across pickling: every copy of this spec shares one instance per worker.
        self._token = token if token is not None else int.from_bytes(os.urandom(16), "big")

    @property
    def cls(self) -> Callable[..., T]:
        """The class (or factory) this spec builds."""
        if isinstance(self._factory, type):
            return self._factory
        return getattr(self._factory, "__wrapped__", self._factory)

    def build(self) -> T:
        """Build and return a *new* instance (each pool worker calls this once)."""
        factory = self._factory
        if not isinstance(factory, DelayedInitClass):
            return self.cls(*self.args, **self.kwargs)
        with constructing(factory):
            if self._constructor is not None:
                return getattr(factory, self._constructor)(*self.args, **self.kwargs)  # type: ignore[no-any-return]
            return factory(*self.args, **self.kwargs)  # type: ignore[no-any-return]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        ctx = get_context()
        if ctx is not None:
            return ctx.instance_for(self)(*args, **kwargs)
        instance = self._instance
        if instance is None:
            with self._lock:
                if self._instance is None:
                    self._instance = self.build()
                instance = self._instance
        return instance(*args, **kwargs)  # type: ignore[operator]

    def __getattr__(self, name: str) -> Any:
        # Static checkers type a spec as an instance of its class: say why it is not one.
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(
            f"{self!r} is a @delayed_init spec, not an instance, so it has no attribute "
            f"{name!r}: each worker builds its own instance (reach it with "
            "mt.current_worker() inside a task); spec.build() builds one here"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            DelayedInit,
            (self._factory, self.args, self.kwargs, self._constructor, self._token),
        )

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args]
        parts += [f"{k}={v!r}" for k, v in self.kwargs.items()]
        name = str(getattr(self.cls, "__qualname__", self.cls))
        if self._constructor is not None:
            name = f"{name}.{self._constructor}"
        return f"{name}({', '.join(parts)})"


def _record_constructor_call(
    owner: type, constructor: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> DelayedInit[Any]:
    return DelayedInit(owner, args, kwargs, constructor)


class DelayedInitClass(type):
    """The metaclass ``@delayed_init`` gives a class: calling the class records a
    :class:`DelayedInit` spec instead of building an instance.

    Everything else is the plain class: class attributes, ``super()``, ``isinstance`` and
    ``issubclass``, pickling by reference.  Classmethods that return an instance
    (alternative constructors such as ``from_name``) record specs too; the worker runs them.
    """

    # Both are properties of the metaclass, so the class has them and its instances do not
    # (an instance's signature is its own __call__'s).

    @property
    def __wrapped__(cls) -> Callable[..., Any]:
        """``Model.__wrapped__(...)`` builds a real instance at once (e.g. in ``__reduce__``)."""

        def build_now(*args: Any, **kwargs: Any) -> Any:
            with constructing(cls):
                return cls(*args, **kwargs)

        build_now.__qualname__ = f"{cls.__qualname__}.__wrapped__"
        build_now.__doc__ = f"Build a real {cls.__name__} instance now (not a spec)."
        build_now.__signature__ = _constructor_signature(cls)  # type: ignore[attr-defined]
        return build_now

    @property
    def __signature__(cls) -> Optional[inspect.Signature]:
        """The constructor's parameters, for ``inspect.signature(Model)`` and ``help()``."""
        return _constructor_signature(cls)

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if is_constructing(cls):
            return super().__call__(*args, **kwargs)
        return DelayedInit(cls, args, kwargs)


class DelayedInitFactory(Generic[P, T]):
    """What ``@delayed_init`` turns a factory *function* into: calls record specs."""

    __wrapped__: Callable[P, T]
    __qualname__: str

    def __init__(self, factory: Callable[P, T]):
        # Copy only the identity attributes, not the wrapped object's __dict__.
        functools.update_wrapper(self, factory, updated=())
        self.__wrapped__ = factory

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> DelayedInit[T]:
        return DelayedInit(cast("Callable[..., T]", self), args, kwargs)

    def __reduce__(self) -> Union[str, tuple[Any, ...]]:
        # Pickle by reference to the decorated module-level name when it resolves to us (the
        # original function is shadowed by this object, so pickling *it* by name would fail).
        module = sys.modules.get(self.__module__)
        found: Any = module
        for part in self.__qualname__.split("."):
            found = getattr(found, part, None)
        if found is self:
            return str(self.__qualname__)
        return (DelayedInitFactory, (self.__wrapped__,))

    def __repr__(self) -> str:
        return f"<delayed_init {self.__module__}.{self.__qualname__}>"


C = TypeVar("C", bound=type)


@overload
def delayed_init(cls: C) -> C: ...


@overload
def delayed_init(cls: Callable[P, T]) -> Callable[P, T]: ...


def delayed_init(cls: Callable[P, T]) -> Any:
    """Class decorator: constructor calls return picklable specs instead of instances.

    The class stays a class (attributes, classmethods, ``super()``, ``isinstance``,
    ``issubclass`` and subclasses work as before); only calling it changes.  Its
    classmethods that return an instance (no return annotation, or one naming the class,
    ``Self`` or a type variable) become alternative constructors: ``Model.from_name("x")``
    is a spec whose worker runs ``from_name``.  Annotate a helper classmethod's other return
    type to call it directly.  ``Model.__wrapped__(...)`` builds a real instance at once
    (for a custom ``__reduce__``).  Type checkers see the plain class, so a spec is typed as
    an instance of it; it supports calling, not attribute access.

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
    if isinstance(cls, type):
        return _delayed_class(cls)
    if not callable(cls):
        raise TypeError(f"delayed_init expects a class or factory, got {cls!r}")
    return DelayedInitFactory(cls)


def _delayed_class(cls: type) -> type:
    if isinstance(cls, DelayedInitClass):
        return cls  # already delayed (or a subclass of a delayed class)
    return rebuild_class(cls, meta_for(DelayedInitClass, type(cls)), _record_constructor_call)


def _constructor_signature(cls: type) -> Optional[inspect.Signature]:
    """The signature of calling ``cls``, read from its ``__init__`` or ``__new__``."""
    import inspect  # only for help() and introspection: not on every import

    for name in ("__init__", "__new__"):
        method = getattr(cls, name)
        if method is getattr(object, name):
            continue
        try:
            signature = inspect.signature(method)
        except (TypeError, ValueError, NameError):  # NameError: 3.14+ unresolved annotation
            return None
        parameters = list(signature.parameters.values())[1:]  # drop self / cls
        return signature.replace(parameters=parameters, return_annotation=inspect.Signature.empty)
    return inspect.Signature()


class SentByValue:
    """A worker spec that plain pickle cannot send (a lambda, a closure, a local class),
    carried to spawned worker processes as cloudpickle bytes; it unpickles as the spec itself.
    """

    __slots__ = ("data", "spec")

    def __init__(self, spec: WorkerLike, data: bytes):
        self.spec = spec
        self.data = data

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.spec(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        import pickle  # only spawned process pools send specs

        return (pickle.loads, (self.data,))

    def __repr__(self) -> str:
        return repr(self.spec)


def build_worker(spec: WorkerLike) -> Any:
    """The per-worker object for ``spec``: a fresh instance of a spec, or a plain callable as is."""
    if isinstance(spec, SentByValue):
        spec = spec.spec
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
    if isinstance(spec, SentByValue):
        spec = spec.spec
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

    __slots__ = ("_spec_instances", "index", "instance")

    def __init__(self, index: int, instance: Any):
        self.index = index
        self.instance = instance
        self._spec_instances: Optional[collections.OrderedDict[int, Any]] = None

    def instance_for(self, spec: DelayedInit[Any]) -> Any:
        """This worker's own instance of ``spec`` (a spec called as a function), built once."""
        cache = self._spec_instances
        if cache is None:
            cache = self._spec_instances = collections.OrderedDict()
        token = spec._token
        instance = cache.get(token)
        if instance is None:
            instance = spec.build()
            cache[token] = instance
            if len(cache) > SPECS_KEPT_PER_WORKER:
                cache.popitem(last=False)
        else:
            cache.move_to_end(token)
        return instance


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
