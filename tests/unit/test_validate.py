"""The argument checks every entry point shares (``mtasklite._validate``)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from mtasklite._validate import input_length, positive_int_or_none


@pytest.mark.parametrize("value", [None, 1, 7])
def test_positive_int_or_none_accepts(value: Any) -> None:
    assert positive_int_or_none("n", value) == value


@pytest.mark.parametrize("value", [0, -1, True, 2.0, "3"])
def test_positive_int_or_none_names_the_argument_and_the_value(value: Any) -> None:
    with pytest.raises(
        ValueError, match=rf"^chunk_size must be a positive integer or None, got {value!r}$"
    ):
        positive_int_or_none("chunk_size", value)


def test_input_length_is_the_shortest_sized_input() -> None:
    assert input_length([1, 2, 3]) == 3
    assert input_length([1, 2, 3], "ab") == 2
    assert input_length(range(0)) == 0


def test_input_length_is_unknown_for_unsized_or_huge_inputs() -> None:
    assert input_length(iter([1])) is None
    assert input_length([1, 2], itertools.count()) is None
    assert input_length(range(10**20)) is None  # len() overflows
    assert input_length() is None
