"""Stateful workers: ``@delayed_init`` specs, the worker context (``current_worker`` /
``worker_index``), the picklable ``ex.worker`` handle, and specs that work anywhere (a spec
passed where a function is expected gets one object per worker, the decorated name stays a
real class, one object shared by several worker threads is flagged, lambda/closure specs reach
spawned workers).  Then, per executor: when and where workers
are built (``wait_ready``), and what a failing build does to the pool.
"""

from __future__ import annotations

import concurrent.futures
import copy
import inspect
import logging
import multiprocessing
import os
import pickle
import sys
import threading
import warnings
from collections import Counter
from concurrent.futures.thread import BrokenThreadPool
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import mtasklite as mt
from mtasklite.processes import pqdm as process_pqdm
from mtasklite.stateful import SPECS_KEPT_PER_WORKER, WORKER_HANDLE, WorkerContext
from support import executors, files, processes, specs, tasks
from support.executors import on_every_worker, with_barrier
from support.specs import BUILT, Abstract, Base, Concrete, Model

BLOCK_LIMIT = 10.0


class BuildLog:
    """Thread-safe record of constructor calls."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    def add(self, name: str, *args: object) -> None:
        with self._lock:
            self.calls.append((name, args))

    def count(self, name: str) -> int:
        with self._lock:
            return sum(1 for n, _ in self.calls if n == name)

    def clear(self) -> None:
        with self._lock:
            self.calls.clear()


BUILDS = BuildLog()


@pytest.fixture(autouse=True)
def _reset_builds() -> None:
    BUILDS.clear()


@mt.delayed_init
class Greeter:
    """A stateful worker: counts its own calls."""

    def __init__(self, lang: str, punct: str = "!") -> None:
        BUILDS.add("Greeter", lang)
        self.lang = lang
        self.punct = punct
        self.calls = 0
        self.lock = threading.Lock()  # makes an *instance* unpicklable

    def __call__(self, name: str) -> str:
        self.calls += 1
        return f"{self.lang}:{name}{self.punct}#{self.calls}"


@mt.delayed_init
class Failing:
    def __init__(self) -> None:
        raise ValueError("no")


@mt.delayed_init
class WithReduce:
    """A class that customises its own pickling (legitimate and not rare)."""

    def __init__(self, x: int) -> None:
        self.x = x

    def __reduce__(self) -> tuple[object, ...]:
        return (WithReduce.__wrapped__, (self.x,))

    def __call__(self) -> int:
        return self.x


def plain_double(x: int) -> int:
    return 2 * x


# --- delayed_init specs ----------------------------------------------------------------------


def test_calling_decorated_class_returns_spec_not_instance() -> None:
    spec = Greeter("en")
    assert isinstance(spec, mt.DelayedInit)
    assert not isinstance(spec, Greeter)
    assert BUILDS.count("Greeter") == 0, "recording a spec must not run the constructor"
    assert spec.args == ("en",)
    assert spec.kwargs == {}
    assert spec.cls is Greeter


def test_decorated_class_is_a_delayed_init_class() -> None:
    assert isinstance(Greeter, mt.DelayedInitClass)
    assert Greeter.__name__ == "Greeter"
    assert Greeter.__doc__ == "A stateful worker: counts its own calls."


def test_spec_repr_looks_like_the_constructor_call() -> None:
    assert repr(Greeter("en")) == "Greeter('en')"
    assert repr(Greeter("en", punct="?")) == "Greeter('en', punct='?')"
    assert repr(Greeter(lang="fr")) == "Greeter(lang='fr')"


def test_build_returns_a_new_real_instance_each_time() -> None:
    spec = Greeter("en")
    a, b = spec.build(), spec.build()
    assert isinstance(a, Greeter)
    assert type(a) is Greeter
    assert a is not b
    assert (a.lang, a.punct) == ("en", "!")
    assert BUILDS.count("Greeter") == 2


def test_calling_spec_directly_builds_once_and_keeps_state() -> None:
    spec = Greeter("en")
    assert spec("ann") == "en:ann!#1"
    assert spec("bob") == "en:bob!#2"
    assert spec("cid") == "en:cid!#3"
    assert BUILDS.count("Greeter") == 1


def test_calling_spec_from_many_threads_builds_once() -> None:
    spec = Greeter("en")
    n = 8
    barrier = threading.Barrier(n, timeout=BLOCK_LIMIT)

    def call() -> str:
        barrier.wait()
        return spec("x")

    with concurrent.futures.ThreadPoolExecutor(n, thread_name_prefix="mt-serial") as ex:
        results = [f.result(BLOCK_LIMIT) for f in [ex.submit(call) for _ in range(n)]]
    assert BUILDS.count("Greeter") == 1
    assert len(results) == n


def test_constructor_error_surfaces_on_serial_call_not_on_spec_creation() -> None:
    spec = Failing()  # recording must not raise
    with pytest.raises(ValueError, match="no"):
        spec()


@pytest.mark.parametrize("protocol", range(2, pickle.HIGHEST_PROTOCOL + 1))
def test_spec_pickle_round_trip(protocol: int) -> None:
    spec = Greeter("en", punct="?")
    clone = pickle.loads(pickle.dumps(spec, protocol=protocol))
    assert isinstance(clone, mt.DelayedInit)
    assert repr(clone) == "Greeter('en', punct='?')"
    assert clone.cls is Greeter
    assert BUILDS.count("Greeter") == 0, "unpickling must not build an instance"
    assert clone("ann") == "en:ann?#1"


def test_pickled_spec_carries_no_instance_even_after_serial_use() -> None:
    spec = Greeter("en")
    spec("ann")
    spec("bob")  # the serially built instance holds a lock and two calls of state
    clone = pickle.loads(pickle.dumps(spec))
    assert clone("cid") == "en:cid!#1", "the clone must build its own fresh instance"
    assert BUILDS.count("Greeter") == 2


def test_decorated_class_pickles_by_reference() -> None:
    assert pickle.loads(pickle.dumps(Greeter)) is Greeter


def test_spec_cloudpickle_round_trip() -> None:
    clone = cloudpickle.loads(cloudpickle.dumps(Greeter("de")))
    assert repr(clone) == "Greeter('de')"
    assert isinstance(clone.build(), Greeter)


def test_spec_of_local_class_round_trips_with_cloudpickle() -> None:
    @mt.delayed_init
    class Local:
        def __init__(self, k: int) -> None:
            self.k = k

        def __call__(self, x: int) -> int:
            return x * self.k

    clone = cloudpickle.loads(cloudpickle.dumps(Local(3)))
    assert clone(5) == 15


def test_spec_of_class_with_custom_reduce_pickles() -> None:
    clone = pickle.loads(pickle.dumps(WithReduce(7)))
    assert clone() == 7


def test_delayed_init_rejects_non_callable() -> None:
    with pytest.raises(TypeError):
        mt.delayed_init(42)  # type: ignore[arg-type]


# --- worker context --------------------------------------------------------------------------


def context() -> tuple[object, object]:
    return mt.worker_index(), mt.current_worker()


def test_context_is_none_outside_any_pool() -> None:
    assert mt.current_worker() is None
    assert mt.worker_index() is None


def test_context_is_none_in_plain_threads_and_stdlib_pools() -> None:
    out: list[tuple[object, object]] = []
    t = threading.Thread(target=lambda: out.append(context()), name="mt-plain")
    t.start()
    t.join(BLOCK_LIMIT)
    assert out == [(None, None)]
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mt-stdlib") as ex:
        assert ex.submit(context).result(BLOCK_LIMIT) == (None, None)


def test_context_inside_stateful_worker(prefix: str) -> None:
    with mt.StatefulThreadPoolExecutor(1, prefix, worker=Greeter("en")) as ex:
        index, obj = ex.submit(context).result(BLOCK_LIMIT)
        assert index == 0
        assert isinstance(obj, Greeter)
        assert obj.lang == "en"
        # the same object on the next task
        assert ex.submit(context).result(BLOCK_LIMIT)[1] is obj
    assert mt.current_worker() is None, "the caller's context is untouched"


def test_context_with_plain_callable_worker(prefix: str) -> None:
    with mt.StatefulThreadPoolExecutor(1, prefix, worker=plain_double) as ex:
        assert ex.submit(context).result(BLOCK_LIMIT) == (0, plain_double)


def test_worker_index_in_pool_without_worker_objects(prefix: str) -> None:
    with mt.StatefulThreadPoolExecutor(1, prefix) as ex:
        assert ex.submit(context).result(BLOCK_LIMIT) == (0, None)


def test_pool_workers_do_not_share_the_serial_instance(prefix: str) -> None:
    spec = Greeter("en")
    assert spec("serial") == "en:serial!#1"
    with mt.StatefulThreadPoolExecutor(1, prefix, worker=spec) as ex:
        assert ex.submit(ex.worker, "pool").result(BLOCK_LIMIT) == "en:pool!#1"
    assert spec("serial") == "en:serial!#2"
    assert BUILDS.count("Greeter") == 2


# --- ex.worker handle ------------------------------------------------------------------------


def test_worker_handle_is_picklable_singleton(prefix: str) -> None:
    with mt.StatefulThreadPoolExecutor(1, prefix, worker=Greeter("en")) as ex:
        handle = ex.worker
        assert isinstance(handle, mt.WorkerHandle)
        assert pickle.loads(pickle.dumps(handle)) is handle
        assert cloudpickle.loads(cloudpickle.dumps(handle)) is handle
        assert copy.deepcopy(handle) is handle
        assert handle is WORKER_HANDLE


def test_worker_handle_calls_the_running_workers_object(prefix: str) -> None:
    with mt.StatefulThreadPoolExecutor(1, prefix, worker=Greeter("en")) as ex:
        assert ex.submit(ex.worker, "ann").result(BLOCK_LIMIT) == "en:ann!#1"
        assert list(ex.map(ex.worker, ["bob", "cid"])) == ["en:bob!#2", "en:cid!#3"]
        assert list(ex.imap(ex.worker, ["dan"])) == ["en:dan!#4"]
    assert BUILDS.count("Greeter") == 1


def test_worker_handle_routes_to_each_workers_own_object(prefix: str) -> None:
    langs = ["en", "fr", "de"]
    barrier = threading.Barrier(len(langs), timeout=BLOCK_LIMIT)

    def task(name: str) -> tuple[object, str]:
        barrier.wait()  # forces the three tasks onto three distinct workers
        return mt.worker_index(), pickle.loads(pickle.dumps(handle))(name)

    with mt.StatefulThreadPoolExecutor(
        thread_name_prefix=prefix, worker=[Greeter(lang) for lang in langs]
    ) as ex:
        handle = ex.worker
        results = [f.result(BLOCK_LIMIT) for f in [ex.submit(task, "x") for _ in langs]]
    assert sorted(results) == [(0, "en:x!#1"), (1, "fr:x!#1"), (2, "de:x!#1")]


def test_worker_handle_with_plain_callable(prefix: str) -> None:
    with mt.StatefulThreadPoolExecutor(2, prefix, worker=plain_double) as ex:
        assert list(ex.map(ex.worker, range(5))) == [0, 2, 4, 6, 8]


def test_worker_handle_outside_a_pool_raises_runtime_error(prefix: str) -> None:
    with mt.StatefulThreadPoolExecutor(1, prefix, worker=Greeter("en")) as ex:
        handle = ex.worker
        with pytest.raises(RuntimeError, match="outside a pool worker"):
            handle("ann")
    assert BUILDS.count("Greeter") == 0


def test_worker_handle_inside_a_pool_without_worker_objects_raises(prefix: str) -> None:
    with mt.StatefulThreadPoolExecutor(1, prefix) as ex:
        fut = ex.submit(WORKER_HANDLE, "ann")
        with pytest.raises(RuntimeError):
            fut.result(BLOCK_LIMIT)


def test_worker_attribute_missing_without_worker_argument(prefix: str) -> None:
    with mt.StatefulThreadPoolExecutor(1, prefix) as ex:
        with pytest.raises(AttributeError, match="worker="):
            _ = ex.worker
        assert not hasattr(ex, "worker")


STPE = mt.StatefulThreadPoolExecutor
PPE = mt.StatefulProcessPoolExecutor
FORK = multiprocessing.get_context("fork")
SPAWN = multiprocessing.get_context("spawn")


# --- specs that work anywhere ---------------------------------------------------------------------


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


# --- thread pools: building the workers -----------------------------------------------------------


def test_each_worker_runs_initializer_then_builds_once_before_its_first_task(prefix: str) -> None:
    def init() -> None:
        specs.BUILD_EVENTS.add("init", threading.current_thread().name, mt.worker_index())

    def task(x: int) -> int:
        specs.BUILD_EVENTS.add("task", threading.current_thread().name, mt.worker_index(), x)
        return x

    with STPE(3, prefix, init, worker=specs.LoggedModel("m")) as ex:
        executors.run_on_every_worker(ex, 3, lambda: task(-1))
        assert list(ex.map(task, range(30))) == list(range(30))
        assert [f.result(BLOCK_LIMIT) for f in [ex.submit(task, i) for i in range(10)]] == list(
            range(10)
        )
        assert list(ex.imap(task, range(10))) == list(range(10))
    per_thread: dict[str, list[str]] = {}
    for kind, name, *_ in specs.BUILD_EVENTS.items:
        per_thread.setdefault(name, []).append(kind)
    assert sorted(per_thread) == [f"{prefix}_{i}" for i in range(3)]
    for name, kinds in per_thread.items():
        assert kinds[:2] == ["init", "build"], name
        assert kinds.count("init") == 1, name
        assert kinds.count("build") == 1, name
        assert set(kinds[2:]) == {"task"}, name


def test_per_worker_arguments_land_on_distinct_workers(prefix: str) -> None:
    names = ["a", "b", "c"]
    with STPE(thread_name_prefix=prefix, worker=[specs.LoggedModel(n) for n in names]) as ex:
        seen = executors.run_on_every_worker(
            ex,
            3,
            lambda: (mt.worker_index(), mt.current_worker().name, threading.current_thread().name),
        )
    assert sorted(seen) == [(i, n, f"{prefix}_{i}") for i, n in enumerate(names)]
    assert sorted(b[1:] for b in specs.BUILD_EVENTS.of("build")) == [
        (f"{prefix}_{i}", i, n) for i, n in enumerate(names)
    ]


def test_replicated_spec_gives_each_worker_its_own_instance(prefix: str) -> None:
    with STPE(3, prefix, worker=specs.LoggedModel("m")) as ex:
        seen = executors.run_on_every_worker(
            ex, 3, lambda: (mt.worker_index(), id(mt.current_worker()))
        )
    assert sorted(i for i, _ in seen) == [0, 1, 2]
    assert len({obj for _, obj in seen}) == 3
    assert len(specs.BUILD_EVENTS.of("build")) == 3


def test_mixed_list_of_spec_and_plain_callable(prefix: str) -> None:
    def plain(x: Any) -> tuple[str, Any]:
        return "plain", x

    with STPE(thread_name_prefix=prefix, worker=[specs.LoggedModel("spec"), plain]) as ex:
        seen = executors.run_on_every_worker(ex, 2, lambda: (mt.worker_index(), ex.worker(7)))
    assert sorted(seen) == [(0, ("spec", 7)), (1, ("plain", 7))]


def test_instances_persist_across_submit_map_and_imap(prefix: str) -> None:
    with STPE(2, prefix, worker=specs.LoggedModel("m")) as ex:
        ex.wait_ready(BLOCK_LIMIT)
        seen = set(executors.run_on_every_worker(ex, 2, specs.logged_whoami))
        seen.update(
            f.result(BLOCK_LIMIT) for f in [ex.submit(specs.logged_whoami) for _ in range(20)]
        )
        seen.update(ex.map(specs.logged_whoami, range(20)))
        seen.update(ex.map(specs.logged_whoami, range(20), chunksize=4))
        seen.update(ex.map(specs.logged_whoami, range(20), buffersize=2))
        seen.update(ex.imap(specs.logged_whoami, range(20)))
        seen.update(ex.imap_unordered(specs.logged_whoami, range(20), chunksize=None))
        seen.update(executors.run_on_every_worker(ex, 2, specs.logged_whoami))
    assert len(specs.BUILD_EVENTS.of("build")) == 2
    assert {index for index, _, _ in seen} == {0, 1}
    assert len(seen) == 2, f"each worker index must keep one instance: {seen}"


def test_wait_ready_builds_every_worker_before_any_task(prefix: str) -> None:
    with STPE(3, prefix, worker=specs.LoggedModel("m")) as ex:
        ex.wait_ready(BLOCK_LIMIT)
        assert sorted(b[2] for b in specs.BUILD_EVENTS.of("build")) == [0, 1, 2]
        assert len(processes.threads_named(prefix)) == 3
        ex.wait_ready(BLOCK_LIMIT)  # idempotent
        assert len(specs.BUILD_EVENTS.of("build")) == 3


def test_wait_ready_times_out_while_a_worker_is_still_building(
    prefix: str, release: threading.Event
) -> None:
    with STPE(1, prefix, worker=specs.LoggedModel("slow", gate=release)) as ex:
        with pytest.raises(concurrent.futures.TimeoutError):  # 3.9/3.10: not the builtin
            ex.wait_ready(0.05)
        release.set()
        ex.wait_ready(BLOCK_LIMIT)
        assert ex.submit(specs.logged_whoami).result(BLOCK_LIMIT)[:2] == (0, "slow")


def test_wait_ready_after_shutdown_is_runtime_error(prefix: str) -> None:
    ex = STPE(1, prefix, worker=specs.LoggedModel("m"))
    ex.shutdown()
    with pytest.raises(RuntimeError):
        ex.wait_ready(BLOCK_LIMIT)


# --- thread pools: initialisation failures --------------------------------------------------------


def test_failing_build_breaks_the_pool(prefix: str) -> None:
    spec = specs.LoggedModel("boom", fail=True)
    with STPE(1, prefix, worker=spec) as ex:
        fut = ex.submit(abs, -1)
        with pytest.raises(mt.WorkerInitError) as info:
            fut.result(BLOCK_LIMIT)
        err = info.value
        assert isinstance(err, BrokenThreadPool)
        assert "worker 0" in str(err)
        assert repr(spec) in str(err)
        assert isinstance(err.__cause__, ValueError)
        assert str(err.__cause__) == "cannot load boom"
        with pytest.raises(mt.WorkerInitError) as again:
            ex.submit(abs, -1)
        assert again.value.__cause__ is err.__cause__
        with pytest.raises(BrokenThreadPool):  # what stdlib code catches
            ex.wait_ready(BLOCK_LIMIT)


def test_failing_build_of_one_listed_worker_names_that_worker(prefix: str) -> None:
    bad = specs.LoggedModel("bad", fail=True)
    with STPE(thread_name_prefix=prefix, worker=[specs.LoggedModel("ok"), bad]) as ex:
        with pytest.raises(mt.WorkerInitError) as info:
            ex.wait_ready(BLOCK_LIMIT)
        assert "worker 1" in str(info.value)
        assert "LoggedModel('bad', fail=True)" in str(info.value)
        assert isinstance(info.value.__cause__, ValueError)
        with pytest.raises(mt.WorkerInitError):
            ex.submit(abs, 1)
        with pytest.raises(mt.WorkerInitError):
            ex.map(abs, range(3))
        with pytest.raises(mt.WorkerInitError):
            next(ex.imap(abs, range(3)))


@pytest.mark.parametrize("worker", [None, specs.LoggedModel("m")], ids=["plain", "stateful"])
def test_failing_initializer_breaks_the_pool_and_logs(
    prefix: str, worker: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def init() -> None:
        raise OSError("no device")

    quiet = caplog.at_level(logging.CRITICAL, logger="concurrent.futures")
    with quiet, STPE(1, prefix, init, worker=worker) as ex:
        fut = ex.submit(abs, -1)
        with pytest.raises(BrokenThreadPool) as info:
            fut.result(BLOCK_LIMIT)
        with pytest.raises(BrokenThreadPool):
            ex.submit(abs, -1)
    assert isinstance(info.value.__cause__, OSError)
    records = [
        r
        for r in caplog.records
        if r.name == "concurrent.futures"
        and r.levelno == logging.CRITICAL
        and "Exception in initializer:" in r.getMessage()
    ]
    assert len(records) == 1
    assert records[0].exc_info is not None
    assert records[0].exc_info[0] is OSError
    assert specs.BUILD_EVENTS.of("build") == [], (
        "the worker object is built only after the initializer"
    )


@pytest.mark.timeout(30)
def test_build_failure_after_shutdown_still_lets_healthy_workers_exit(
    prefix: str, release: threading.Event
) -> None:
    fail_now = threading.Event()
    started = threading.Event()

    def busy() -> str:
        started.set()
        release.wait(BLOCK_LIMIT)
        return "done"

    ex = STPE(
        thread_name_prefix=prefix,
        worker=[specs.LoggedModel("ok"), specs.LoggedModel("bad", fail_now, True)],
    )
    try:
        busy_future = ex.submit(busy)  # worker 0 takes it and blocks
        assert started.wait(BLOCK_LIMIT)
        queued = ex.submit(abs, -1)  # starts worker 1, whose build waits for fail_now
        ex.shutdown(wait=False)
        fail_now.set()
        with pytest.raises(mt.WorkerInitError):
            queued.result(BLOCK_LIMIT)
        release.set()
        assert busy_future.result(BLOCK_LIMIT) == "done"
        threads = processes.threads_named(prefix)
        processes.wait_threads_gone(threads, 1.0)
        assert not [t.name for t in threads if t.is_alive()]
    finally:
        release.set()


# --- process pools: one object per worker process -------------------------------------------------


def test_failing_spec_build_breaks_pool_and_names_the_worker() -> None:
    bad = specs.FailingBuild("bad")
    with PPE(mp_context=FORK, worker=[specs.Counter("ok"), bad]) as ex:
        # only worker 0 can take it (worker 1 never gets ready), so it fails with the pool
        fut = ex.submit(tasks.hang_forever)
        with pytest.raises(mt.WorkerInitError) as info:
            fut.result(BLOCK_LIMIT)
        err = info.value
        assert "worker 1" in str(err)
        assert repr(bad) in str(err)
        assert isinstance(err.__cause__, ValueError)
        assert str(err.__cause__) == "cannot load bad"
        with pytest.raises(mt.WorkerInitError):
            ex.submit(tasks.square, 2)


def test_per_worker_specs_run_on_distinct_processes(ctx: Any, tmp_path: Path) -> None:
    log = str(tmp_path / "builds.log")
    init, initargs = with_barrier(ctx, 2)
    with PPE(
        mp_context=ctx,
        initializer=init,
        initargs=initargs,
        worker=[specs.Counter("a", log), specs.Counter("b", log)],
    ) as ex:
        seen = on_every_worker(ex, 2, tasks.rendezvous_call)
        again = on_every_worker(ex, 2, tasks.rendezvous_call)
    assert [(s.index, s.name, s.calls) for s in seen] == [(0, "a", 1), (1, "b", 1)]
    assert [(s.index, s.name, s.calls) for s in again] == [(0, "a", 2), (1, "b", 2)]
    assert [s.pid for s in seen] == [s.pid for s in again]
    assert len({seen[0].pid, seen[1].pid, os.getpid()}) == 3
    builds = sorted(line.split() for line in files.read_lines(log))
    assert builds == sorted([str(s.pid), str(s.index), s.name, s.build_id] for s in seen)


def test_instance_is_built_once_and_survives_submit_map_and_imap(ctx: Any, tmp_path: Path) -> None:
    log = str(tmp_path / "builds.log")
    init, initargs = with_barrier(ctx, 2)
    seen: list[specs.Seen] = []
    with PPE(2, ctx, init, initargs, worker=specs.Counter("m", log)) as ex:
        seen += on_every_worker(ex, 2, tasks.rendezvous_call)
        seen += [f.result(BLOCK_LIMIT) for f in [ex.submit(tasks.call_worker, i) for i in range(8)]]
        seen += ex.map(tasks.call_worker, range(8))
        seen += ex.map(tasks.call_worker, range(8), chunksize=3)
        seen += ex.imap(tasks.call_worker, range(8))
        seen += ex.imap(tasks.call_worker, range(8), chunksize=1)
        seen += ex.imap_unordered(tasks.call_worker, range(8), chunksize=2)
        seen += ex.map(ex.worker, range(8))
        seen += on_every_worker(ex, 2, tasks.rendezvous_call)
    builds = [line.split() for line in files.read_lines(log)]
    assert sorted(b[1] for b in builds) == ["0", "1"], "one build per worker"
    by_build: dict[str, list[specs.Seen]] = {}
    for s in seen:
        by_build.setdefault(s.build_id, []).append(s)
    assert set(by_build) == {b[3] for b in builds}
    for calls in by_build.values():
        assert len({(s.pid, s.index) for s in calls}) == 1
        # the same object served every call: its counter saw each call exactly once
        assert sorted(s.calls for s in calls) == list(range(1, len(calls) + 1))
    assert {s.name for s in seen} == {"m"}


def test_worker_handle_with_submit_map_and_imap() -> None:
    with PPE(1, FORK, worker=specs.Counter("h")) as ex:
        handle = ex.worker
        assert handle is WORKER_HANDLE
        assert pickle.loads(pickle.dumps(handle)) is handle
        first = ex.submit(ex.worker, "s").result(BLOCK_LIMIT)
        mapped = list(ex.map(ex.worker, ["m1", "m2"]))
        imapped = list(ex.imap(ex.worker, ["i1", "i2"]))
        unordered = list(ex.imap_unordered(ex.worker, ["u1"]))
    everything = [first, *mapped, *imapped, *unordered]
    assert [s.x for s in everything] == ["s", "m1", "m2", "i1", "i2", "u1"]
    assert [s.calls for s in everything] == [1, 2, 3, 4, 5, 6]
    assert {(s.name, s.index, s.build_id) for s in everything} == {("h", 0, first.build_id)}


def test_plain_function_as_worker_spec() -> None:
    with PPE(2, FORK, worker=tasks.square) as ex:
        assert list(ex.map(ex.worker, range(4))) == [0, 1, 4, 9]
        assert ex.submit(ex.worker, 5).result(BLOCK_LIMIT) == 25


def test_worker_handle_needs_worker_spec() -> None:
    with PPE(1, FORK) as ex:
        with pytest.raises(AttributeError):
            ex.worker  # noqa: B018
        with pytest.raises(RuntimeError, match="outside a pool worker"):
            ex.submit(WORKER_HANDLE, 1).result(BLOCK_LIMIT)
        assert ex.submit(tasks.whoami).result(BLOCK_LIMIT)[0] == 0
