"""Where the Dask executor moves a pinned spec whose worker vanished (``reassign_slots``)."""

from __future__ import annotations

from typing import Any, Optional

import pytest

pytest.importorskip("distributed")

from mtasklite.dask import REPLACEMENT_GRACE, reassign_slots


def _slots(*pairs: tuple[str, Any]) -> tuple[list[str], list[Any], list[Optional[float]]]:
    return [a for a, _ in pairs], [n for _, n in pairs], [None] * len(pairs)


def test_live_workers_keep_their_specs() -> None:
    addresses, names, lost = _slots(("a", 0), ("b", 1))
    lost[1] = 5.0  # seen gone once, back since
    assert reassign_slots(addresses, names, lost, {"a": 0, "b": 1}, now=10.0) == set()
    assert addresses == ["a", "b"] and lost == [None, None]


def test_a_restarted_worker_with_the_same_name_gets_its_spec_back() -> None:
    addresses, names, lost = _slots(("a", 0), ("b", 1))
    live = {"a": 0, "c": 7, "b2": 1}  # b restarted at a new address, c is an idle newcomer
    assert reassign_slots(addresses, names, lost, live, now=10.0) == {1}
    assert addresses == ["a", "b2"] and names == [0, 1] and lost == [None, None]


def test_otherwise_a_worker_hosting_no_spec_takes_it() -> None:
    addresses, names, lost = _slots(("a", 0), ("b", 1))
    assert reassign_slots(addresses, names, lost, {"a": 0, "c": 7}, now=10.0) == {1}
    assert addresses == ["a", "c"] and names == [0, 7]


def test_a_busy_worker_shares_only_after_the_grace_period() -> None:
    addresses, names, lost = _slots(("a", 0), ("b", 1), ("c", 2))
    live = {"a": 0, "c": 2}
    assert reassign_slots(addresses, names, lost, live, now=10.0) == set()
    assert addresses[1] == "b" and lost[1] == 10.0  # waits, remembering since when
    later = 10.0 + REPLACEMENT_GRACE
    assert reassign_slots(addresses, names, lost, live, now=later) == {1}
    assert addresses[1] == "a" and lost[1] is None  # the first of the least loaded


def test_no_live_worker_moves_nothing() -> None:
    addresses, names, lost = _slots(("a", 0))
    assert reassign_slots(addresses, names, lost, {}, now=10.0 + 2 * REPLACEMENT_GRACE) == set()
    assert addresses == ["a"]
