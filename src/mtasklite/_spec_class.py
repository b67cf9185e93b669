"""How ``@delayed_init`` keeps a class a class: the same class body under a spec-making metaclass.

The decorated name must stay a real class (class attributes, ``super(Model, self)``,
``issubclass``, ``isinstance`` and pickling by reference all behave as on the plain class),
yet calling it must record a spec instead of building an instance.  Only a metaclass can
change what calling a class does, and a class's metaclass cannot be swapped in place, so the
decorator rebuilds the class from its own namespace under a metaclass derived from the
original one, and points every method's implicit ``__class__`` cell (zero-argument
``super()``) at the rebuilt class.

While a spec is being built (in a worker, or by ``spec.build()``), calls to its class, and
to the classmethods that stand for alternative constructors, construct for real: that is
what lets ``cls(...)`` inside ``from_name`` return an instance.
"""

from __future__ import annotations

import functools
import importlib
import threading
import typing
from contextlib import contextmanager
from typing import Any, Callable, Iterator

__all__ = ["constructing", "is_constructing", "meta_for", "rebuild_class"]

_local = threading.local()


@contextmanager
def constructing(cls: type) -> Iterator[None]:
    """While active, calling ``cls`` (on this thread) builds a real instance."""
    stack: list[type] = getattr(_local, "stack", None) or []
    _local.stack = stack
    stack.append(cls)
    try:
        yield
    finally:
        stack.pop()


def is_constructing(cls: type) -> bool:
    return cls in getattr(_local, "stack", ())


_metaclasses: dict[type, type] = {}
_metaclasses_lock = threading.Lock()


def meta_for(spec_meta: type, original: type) -> type:
    """``spec_meta`` combined with the class's own metaclass (``ABCMeta``, ...), made once."""
    if issubclass(original, spec_meta):
        return original
    if original is type:
        return spec_meta
    with _metaclasses_lock:
        meta = _metaclasses.get(original)
        if meta is None:
            name = f"{spec_meta.__name__}_{original.__name__}"
            meta = type(name, (spec_meta, original), {"__module__": spec_meta.__module__})
            _metaclasses[original] = meta
        return meta


def rebuild_class(
    cls: type, meta: type, record: Callable[[type, str, tuple[Any, ...], dict[str, Any]], Any]
) -> type:
    """``cls``'s body re-created under ``meta``; its constructor classmethods record specs.

    ``record(owner, classmethod_name, args, kwargs)`` makes the spec for a call of an
    alternative constructor.  ``__init_subclass__`` of the bases runs again for the copy.
    """
    namespace = dict(cls.__dict__)
    for slot in _slot_names(cls):
        namespace.pop(slot, None)  # the copy makes its own slot descriptors
    namespace.pop("__dict__", None)
    namespace.pop("__weakref__", None)
    for name, value in list(namespace.items()):
        if isinstance(value, classmethod) and _returns_instance(value.__func__, cls):
            namespace[name] = AlternativeConstructor(value, name, record)
    rebuilt: type = meta(cls.__name__, cls.__bases__, namespace)
    for value in namespace.values():
        _repoint_class_cell(value, cls, rebuilt)
    return rebuilt


def _slot_names(cls: type) -> tuple[str, ...]:
    slots = cls.__dict__.get("__slots__", ())
    return (slots,) if isinstance(slots, str) else tuple(slots)


def _returns_instance(func: Callable[..., Any], cls: type) -> bool:
    """Whether a classmethod is an alternative constructor.

    It is unless its return annotation says otherwise: no annotation, the class itself (by
    object or name), ``Self`` or a type variable all count as "returns an instance".
    """
    annotation = _return_annotation(func, cls)
    if isinstance(annotation, str):
        text = annotation.strip().strip("'\"")
        if text.rsplit(".", 1)[-1] in (cls.__name__, "Self"):
            return True
        annotation = getattr(func, "__globals__", {}).get(text)
    if annotation is cls or isinstance(annotation, typing.TypeVar):
        return True
    return getattr(annotation, "_name", None) == "Self" or getattr(
        annotation, "__name__", None
    ) in (cls.__name__, "Self")


def _return_annotation(func: Callable[..., Any], default: object) -> object:
    """``func``'s return annotation, as a string when it cannot be evaluated yet.

    From Python 3.14 annotations are evaluated on access, and a constructor's usually names
    the class being decorated, which is not bound yet: read that one as text instead.
    """
    try:
        return getattr(func, "__annotations__", {}).get("return", default)
    except NameError:
        annotationlib: Any = importlib.import_module("annotationlib")
        as_text = annotationlib.get_annotations(func, format=annotationlib.Format.STRING)
        return as_text.get("return", default)


def _repoint_class_cell(value: object, old: type, new: type) -> None:
    """Make zero-argument ``super()`` (the ``__class__`` cell) in ``value`` mean ``new``."""
    if isinstance(value, AlternativeConstructor):
        value = value.method
    if isinstance(value, (classmethod, staticmethod)):
        value = value.__func__
    if isinstance(value, property):
        for accessor in (value.fget, value.fset, value.fdel):
            _repoint_class_cell(accessor, old, new)
        return
    code = getattr(value, "__code__", None)
    closure = getattr(value, "__closure__", None)
    if code is None or not closure or "__class__" not in code.co_freevars:
        return
    cell = closure[code.co_freevars.index("__class__")]
    if cell.cell_contents is old:
        cell.cell_contents = new


class AlternativeConstructor:
    """A classmethod of a ``@delayed_init`` class that returns an instance.

    Called on the class it records a spec, which runs the classmethod in each worker (the
    ``from_pretrained`` pattern); while that spec is being built it is the plain classmethod.
    """

    def __init__(
        self,
        method: classmethod[Any, Any, Any],
        name: str,
        record: Callable[[type, str, tuple[Any, ...], dict[str, Any]], Any],
    ):
        self.method = method
        self.name = name
        self.record = record
        self.__doc__ = method.__func__.__doc__
        self.__wrapped__ = method.__func__

    def __get__(self, obj: object, owner: type | None = None) -> Callable[..., Any]:
        owner = owner if owner is not None else type(obj)
        bound: Callable[..., Any] = self.method.__get__(obj, owner)
        if is_constructing(owner):
            return bound

        def record_spec(*args: Any, **kwargs: Any) -> Any:
            return self.record(owner, self.name, args, kwargs)

        functools.update_wrapper(record_spec, bound)
        return record_spec
