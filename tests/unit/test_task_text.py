"""How tasks are passed their items and named in messages (``_passing``, ``_task_text``)."""

from __future__ import annotations

from typing import Any

import pytest

import mtasklite as mt
from mtasklite._passing import Passing, call_item, input_items, passing_for
from mtasklite._task_text import describe_item, task_name, timeout_error


def join(*args: Any, **kwargs: Any) -> str:
    return "-".join(map(str, args)) + "|" + ",".join(f"{k}={v}" for k, v in kwargs.items())


def test_passing_values_are_those_of_the_process_wire_format() -> None:
    # The process pool sends modes as these ints, and code taking a ``star`` flag reads
    # SINGLE as false and STAR as true.
    assert (int(Passing.SINGLE), int(Passing.STAR), int(Passing.CALL)) == (0, 1, 2)
    assert not Passing.SINGLE and Passing.STAR


def test_one_iterable_passes_items_whole_several_pass_their_zip() -> None:
    assert passing_for(([1, 2],)) is Passing.SINGLE
    assert list(input_items(([(1, 2), (3, 4)],))) == [(1, 2), (3, 4)]
    assert passing_for(([1, 2], "ab")) is Passing.STAR
    assert list(input_items(([1, 2, 3], "ab"))) == [(1, "a"), (2, "b")]


def test_call_item_applies_each_mode() -> None:
    assert call_item(join, (1, 2), Passing.SINGLE) == "(1, 2)|"
    assert call_item(join, (1, 2), Passing.STAR) == "1-2|"
    assert call_item(join, ((1,), {"k": 3}), Passing.CALL) == "1|k=3"


def test_describe_item_shows_the_call_and_shortens_long_arguments() -> None:
    assert describe_item(5, Passing.SINGLE) == "(5)"
    assert describe_item((5, "x"), Passing.STAR) == "(5, 'x')"
    assert describe_item(((5,), {"k": None}), Passing.CALL) == "(5, k=None)"
    long = describe_item("y" * 200, Passing.SINGLE)
    assert long.endswith("...)") and len(long) <= 62


def test_task_name_falls_back_to_repr() -> None:
    assert task_name(join) == "join"
    assert task_name(mt.worker_index) == "worker_index"
    assert "partial" in task_name(__import__("functools").partial(join, 1))


@pytest.mark.parametrize("worker", [3, None])
def test_timeout_error_names_task_limit_worker_place_and_outcome(worker: Any) -> None:
    error = timeout_error(join, (7,), Passing.STAR, 0.5, worker, "pid 42", "it was replaced")
    assert isinstance(error, mt.TaskTimeoutError) and isinstance(error, TimeoutError)
    where = " in worker 3" if worker is not None else ""
    assert str(error) == f"task join(7) exceeded its 0.5 s limit{where} (pid 42); it was replaced"
