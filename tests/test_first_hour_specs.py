"""Specs that work anywhere (issue 20): a ``@delayed_init`` spec passed where a function is
expected gets one object per worker, the decorated name stays a real class, one object
shared by several worker threads is flagged, and lambda/closure specs reach spawned workers.
"""

from __future__ import annotations

import inspect
import multiprocessing
import pickle
import sys
import threading
import warnings
from collections import Counter
from typing import Any

import cloudpickle
import pytest

import mtasklite as mt
from mtasklite.processes import pqdm as process_pqdm
from mtasklite.stateful import SPECS_KEPT_PER_WORKER, WorkerContext
from support.specs import BUILT, Abstract, Base, Concrete, Model

BLOCK_LIMIT = 10.0


@pytest.fixture(autouse=True)
def _clear_builds() -> None:
    BUILT.clear()


def spawn() -> Any:
    return multiprocessing.get_context("spawn")


# --- a spec where a function is expected -----------------------------------------------------


def test_spec_as_thread_imap_function_builds_one_object_per_worker_and_never_overlaps() -> None:
    spec = Model("m")
    barrier = threading.Barrier(2, timeout=BLOCK_LIMIT)

    def both_workers_busy(x: int) -> int:  # make sure both threads serve items
        if x < 2:
            barrier.wait()
        return x

    with mt.StatefulThreadPoolExecutor(2, "mt-fh") as ex:
        assert list(ex.map(both_workers_busy, range(2))) == [0, 1]
        results = list(ex.imap(spec, range(40)))
        results += [ex.submit(spec, 5).result(BLOCK_LIMIT)]
        results += list(ex.map(spec, range(3)))
    assert [r[3] for r in results] == [*range(40), 5, 0, 1, 2]
    instances = {r[1] for r in results}
    assert 1 <= len(instances) <= 2, "one object per worker thread, not one per task"
    assert len(BUILT) == len(instances)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_spec_as_process_imap_function_builds_once_per_worker_process(method: str) -> None:
    spec = Model("m")
    ctx = multiprocessing.get_context(method)
    with mt.StatefulProcessPoolExecutor(2, mp_context=ctx) as ex:
        results = list(ex.imap(spec, range(24), chunksize=1))
        results += list(ex.imap_unordered(spec, range(8), chunksize=3))
        results += [ex.submit(spec, 100).result(BLOCK_LIMIT)]
    assert sorted(r[3] for r in results) == sorted([*range(24), *range(8), 100])
    per_pid = Counter(r[0] for r in results)
    objects = {(r[0], r[1]) for r in results}
    assert len(objects) == len(per_pid) <= 2, "one object per worker process"
    assert {r[4] for r in results} == {1}, "a worker built the spec more than once"


def test_distinct_specs_get_distinct_objects_and_pickled_copies_share_one() -> None:
    small, large = Model("small"), Model("large")
    copy = pickle.loads(pickle.dumps(small))
    with mt.StatefulThreadPoolExecutor(1, "mt-fh") as ex:
        a = ex.submit(small, 1).result(BLOCK_LIMIT)
        b = ex.submit(large, 1).result(BLOCK_LIMIT)
        c = ex.submit(copy, 1).result(BLOCK_LIMIT)
    assert a[2] == "small" and b[2] == "large"
    assert a[1] != b[1]
    assert c[1] == a[1], "a pickled copy of a spec is the same spec"
    assert sorted(BUILT) == ["large", "small"]


def test_worker_keeps_a_bounded_number_of_spec_objects() -> None:
    ctx = WorkerContext(0, None)
    specs = [Model(f"m{i}") for i in range(SPECS_KEPT_PER_WORKER + 1)]
    first = ctx.instance_for(specs[0])
    for spec in specs[1:]:
        ctx.instance_for(spec)
    assert len(BUILT) == SPECS_KEPT_PER_WORKER + 1
    assert ctx.instance_for(specs[-1]) is ctx.instance_for(specs[-1])
    assert ctx.instance_for(specs[0]) is not first, "the least recently used one was dropped"


def test_spec_called_outside_any_pool_still_builds_once() -> None:
    spec = Model("serial")
    assert spec(1)[1] == spec(2)[1]
    assert BUILT == ["serial"]


# --- the decorated name is a real class ------------------------------------------------------


def test_decorated_class_keeps_class_behaviour() -> None:
    assert isinstance(Model, type)
    assert Model.DEFAULT == "small"
    assert issubclass(Model, Base)
    assert Model.known_names() == ["small", "large"], "a helper classmethod runs at once"
    instance = Model("x").build()
    assert isinstance(instance, Model) and isinstance(instance, Base)
    assert instance.based, "super(Model, self).__init__() ran"
    assert instance.describe() == "model+base", "zero-argument super() works"
    assert not isinstance(Model("x"), Model), "a spec is not an instance"
    assert str(inspect.signature(Model)) == "(name: 'str', scale: 'int' = 1)"
    assert str(inspect.signature(instance)) == "(x: 'int') -> 'tuple[int, int, str, int, int]'"
    assert BUILT == ["x"]


def test_classmethod_constructor_records_a_spec_run_by_the_worker() -> None:
    spec = Model.from_name("abc")
    assert isinstance(spec, mt.DelayedInit)
    assert repr(spec) == "Model.from_name('abc')"
    assert BUILT == [], "the alternative constructor must not run in the caller"
    with mt.StatefulThreadPoolExecutor(worker=spec, thread_name_prefix="mt-fh") as ex:
        _, _, name, value, _ = ex.submit(ex.worker, 2).result(BLOCK_LIMIT)
    assert (name, value) == ("ABC", 20)
    built = pickle.loads(pickle.dumps(spec)).build()
    assert type(built) is Model and built.name == "ABC"


@pytest.mark.timeout(60)
def test_classmethod_spec_runs_in_spawned_worker() -> None:
    with mt.StatefulProcessPoolExecutor(worker=Model.from_name("gpt"), mp_context=spawn()) as ex:
        assert ex.submit(ex.worker, 3).result(BLOCK_LIMIT)[2:4] == ("GPT", 30)


def test_abstract_base_with_slots_and_a_delayed_subclass() -> None:
    spec = Concrete(3)
    assert isinstance(spec, mt.DelayedInit)
    assert spec(2) == 6
    instance = spec.build()
    assert isinstance(instance, Concrete) and not hasattr(instance, "__dict__")
    with pytest.raises(TypeError, match="abstract"):
        Abstract(1).build()  # the ABC still refuses to build an abstract class


def test_instances_and_classes_pickle_by_reference() -> None:
    instance = Concrete(4).build()
    assert pickle.loads(pickle.dumps(Model)) is Model
    clone = pickle.loads(pickle.dumps(instance))
    assert type(clone) is Concrete and clone(2) == 8
    assert Model.__wrapped__("now").name == "now", "__wrapped__ builds a real instance"


def test_attribute_access_on_a_spec_explains_what_a_spec_is() -> None:
    with pytest.raises(AttributeError, match=r"Model\('m'\) is a @delayed_init spec.*'name'"):
        Model("m").name  # noqa: B018


def test_local_class_spec_round_trips_through_cloudpickle() -> None:
    @mt.delayed_init
    class Local:
        def __init__(self, k: int) -> None:
            self.k = k

        @classmethod
        def doubled(cls, k: int) -> Local:
            return cls(2 * k)

        def __call__(self, x: int) -> int:
            return x * self.k

    assert cloudpickle.loads(cloudpickle.dumps(Local.doubled(3)))(5) == 30


# --- one object shared by several worker threads ---------------------------------------------


class Stateful:
    def __init__(self) -> None:
        self.seen: list[int] = []

    def __call__(self, x: int) -> int:
        self.seen.append(x)
        return x


def test_thread_pool_warns_when_one_instance_serves_several_workers() -> None:
    with pytest.warns(UserWarning, match="delayed_init"):
        mt.StatefulThreadPoolExecutor(2, "mt-fh", worker=Stateful()).shutdown()
    shared = Stateful()
    with pytest.warns(UserWarning, match="several worker threads"):
        mt.StatefulThreadPoolExecutor(worker=[shared, shared], thread_name_prefix="mt-f").shutdown()


def test_no_warning_for_functions_specs_or_distinct_instances() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for worker in (abs, Model("m"), [Stateful(), Stateful()], Stateful()):
            workers = 1 if isinstance(worker, Stateful) else 2
            mt.StatefulThreadPoolExecutor(workers, "mt-fh", worker=worker).shutdown()


# --- lambdas and closures under spawn --------------------------------------------------------


@pytest.mark.timeout(60)
def test_lambda_and_closure_worker_specs_reach_spawned_workers() -> None:
    offset = 7

    def closure(x: int) -> int:
        return x + offset

    workers = [lambda x: x * 2, closure]
    with mt.StatefulProcessPoolExecutor(worker=workers, mp_context=spawn()) as ex:
        ex.wait_ready(BLOCK_LIMIT)
        results = set(ex.map(ex.worker, [1] * 20))
    assert results <= {2, 8} and results, results


@pytest.mark.timeout(60)
def test_pqdm_takes_a_lambda_under_spawn() -> None:
    results = process_pqdm(range(5), lambda x: x + 1, n_jobs=2, mp_context=spawn(), disable=True)
    assert list(results) == [1, 2, 3, 4, 5]


# --- Python 3.14+: annotations evaluated on access -------------------------------------------


class _LazyAnnotations:
    """A classmethod's function as 3.14 presents it while its class is not bound yet: reading
    ``__annotations__`` evaluates them and fails on the class's own name."""

    def __init__(self, returns: str) -> None:
        self.returns = returns

    @property
    def __annotations__(self) -> dict[str, Any]:  # type: ignore[override]
        raise NameError(f"name {self.returns!r} is not defined")


class _FakeAnnotationlib:
    class Format:
        STRING = "string"

    @staticmethod
    def get_annotations(func: _LazyAnnotations, format: str) -> dict[str, str]:
        assert format == "string"
        return {"return": func.returns}


def test_constructor_annotation_naming_the_unbound_class_is_read_as_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mtasklite._spec_class import _returns_instance

    monkeypatch.setitem(sys.modules, "annotationlib", _FakeAnnotationlib())

    class Pending:
        pass

    assert _returns_instance(_LazyAnnotations("Pending"), Pending)  # type: ignore[arg-type]
    assert not _returns_instance(_LazyAnnotations("list[str]"), Pending)  # type: ignore[arg-type]
