"""The process pool's verdicts (``mtasklite._procpool.blame``), without starting a process.

What users rely on: when a worker dies only the item that killed it fails, every other item
of the work it held runs again (exactly once), a crash that cannot be attributed yet is
narrowed down instead of charged to an innocent item, and the pool breaks only when a
respawned worker could not do better (initialisation failed, ``on_worker_crash="break"``,
or a worker that keeps dying outside any task).
"""

from __future__ import annotations

import signal
from typing import Any, Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mtasklite import TaskTimeoutError, WorkerCrashedError, WorkerInitError
from mtasklite._procpool import blame, wire
from mtasklite._procpool.blame import (
    Breakage,
    Death,
    Remedy,
    describe_start_death,
    judge_death,
    starting_death_is_a_crash,
)
from mtasklite._procpool.jobs import Span
from mtasklite._procpool.slots import SlotState


def death(**changes: Any) -> Death:
    """A worker that died while BUSY with items 3..8 of a job, none reported, the cell
    between items; override what a case needs."""
    base = Death(
        state=SlotState.BUSY,
        unreported=Span(3, 8),
        accepted_until=8,
        phase=wire.IDLE,
        running=None,
        init_failed=False,
        ever_ready=False,
        winding_down=False,
        pool_broken=False,
        work_waiting=False,
        break_on_crash=False,
        deaths_in_a_row=0,
    )
    return base._replace(**changes)


# --- which item is running ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phase", "reported", "expected"),
    [
        (wire.IDLE, 0, None),
        (wire.UNTRACKED, 0, None),
        (wire.RECEIVING, 2, None),
        (4.0, 2, 4),
        (2.0, 2, 2),  # reported 0 and 1; running 2
        (1.0, 2, None),  # the cell still names an item already reported: between items
    ],
)
def test_running_item_is_named_only_by_an_unreported_index(
    phase: float, reported: int, expected: Optional[int]
) -> None:
    assert blame.running_item(phase, reported) == expected


def test_an_items_deadline_counts_from_its_start_or_from_now_between_items() -> None:
    assert blame.item_deadline(3.0, 1, 100.0, 2.5, 200.0) == (3, 102.5)
    assert blame.item_deadline(wire.IDLE, 1, 100.0, 2.5, 200.0) == (None, 202.5)


# --- deaths: who is charged, what runs again --------------------------------------------------


def test_a_death_while_running_a_named_item_charges_that_item_and_reruns_the_others() -> None:
    verdict = judge_death(death(phase=5.0, running=5, deaths_in_a_row=2))
    assert verdict.charged == 5
    assert verdict.during == blame.WHILE_RUNNING
    assert verdict.requeue == (Span(3, 5), Span(6, 8))
    assert verdict.breaks is None
    assert verdict.deaths_in_a_row == 0, "a death that resolved an item resets the count"
    assert verdict.respawn


def test_a_death_on_the_first_unreported_item_reruns_only_the_items_after_it() -> None:
    verdict = judge_death(death(phase=3.0, running=3))
    assert verdict.charged == 3
    assert verdict.requeue == (Span(4, 8),)


def test_an_untracked_batch_reruns_tracked_instead_of_charging_an_innocent_item() -> None:
    verdict = judge_death(death(phase=wire.UNTRACKED))
    assert verdict.charged is None
    assert verdict.requeue == (Span(3, 8, track=True),)
    assert verdict.deaths_in_a_row == 0


def test_a_lone_untracked_item_is_the_culprit() -> None:
    verdict = judge_death(death(phase=wire.UNTRACKED, unreported=Span(7, 8)))
    assert verdict.charged == 7
    assert verdict.during == blame.WHILE_RUNNING
    assert verdict.requeue == ()


@pytest.mark.parametrize("phase", [wire.RECEIVING, wire.SENDING])
def test_a_death_while_pickling_narrows_down_one_item_at_a_time(phase: float) -> None:
    several = judge_death(death(phase=phase))
    assert several.charged is None
    assert several.requeue == tuple(Span(i, i + 1) for i in range(3, 8))
    lone = judge_death(death(phase=phase, unreported=Span(5, 6)))
    assert lone.charged == 5
    assert lone.during == blame.WHILE_PICKLING


def test_a_death_between_items_charges_nothing_and_counts_as_fruitless() -> None:
    verdict = judge_death(death(phase=wire.IDLE, deaths_in_a_row=1))
    assert verdict.charged is None
    assert verdict.requeue == (Span(3, 8),)
    assert verdict.deaths_in_a_row == 2
    assert verdict.breaks is None
    assert verdict.respawn


def test_an_overrun_worker_reruns_everything_but_the_late_item_which_already_failed() -> None:
    verdict = judge_death(death(state=SlotState.KILLING, accepted_until=5, phase=5.0, running=5))
    assert verdict.charged is None
    assert verdict.requeue == (Span(3, 5), Span(6, 8))
    assert verdict.breaks is None
    assert verdict.respawn


def test_an_overrun_of_the_last_item_reruns_only_the_items_before_it() -> None:
    verdict = judge_death(death(state=SlotState.KILLING, accepted_until=7))
    assert verdict.requeue == (Span(3, 7),)


def test_a_stopped_worker_without_work_is_respawned_and_charged_nothing() -> None:
    verdict = judge_death(death(state=SlotState.KILLING, unreported=None))  # cancelled task
    assert (verdict.charged, verdict.requeue, verdict.breaks) == (None, (), None)
    assert verdict.respawn


# --- deaths: when the pool breaks, when the slot respawns -----------------------------------


def test_a_reported_init_failure_breaks_the_pool() -> None:
    verdict = judge_death(death(state=SlotState.STARTING, unreported=None, init_failed=True))
    assert verdict.breaks is Breakage.INIT
    assert not verdict.respawn


def test_a_death_during_initialisation_breaks_the_pool_unless_it_is_winding_down() -> None:
    starting = death(state=SlotState.STARTING, unreported=None)
    assert judge_death(starting).breaks is Breakage.INIT
    stopping = judge_death(starting._replace(winding_down=True))
    assert stopping.breaks is None
    assert not stopping.respawn, "nothing is left to run"


def test_a_death_while_rebuilding_a_spec_that_built_before_is_survived_as_a_crash() -> None:
    rebuilding = death(state=SlotState.STARTING, unreported=None, ever_ready=True)
    verdict = judge_death(rebuilding)
    assert (verdict.breaks, verdict.respawn, verdict.deaths_in_a_row) == (None, True, 1)
    last = judge_death(rebuilding._replace(deaths_in_a_row=blame.MAX_DEATHS_IN_A_ROW - 1))
    assert last.breaks is Breakage.DEATHS, "a slot that keeps dying while rebuilding breaks"
    reported = judge_death(rebuilding._replace(init_failed=True))
    assert reported.breaks is Breakage.INIT, "a reported failure is never survived"


def test_break_on_crash_breaks_on_a_death_in_a_task_but_not_on_an_overrun() -> None:
    assert judge_death(death(break_on_crash=True, running=4)).breaks is Breakage.CRASH
    assert judge_death(death(break_on_crash=True, unreported=None)).breaks is None
    overrun = judge_death(death(break_on_crash=True, state=SlotState.KILLING, accepted_until=4))
    assert overrun.breaks is None
    assert overrun.requeue == (Span(3, 4), Span(5, 8))


def test_a_worker_that_keeps_dying_outside_tasks_breaks_the_pool_on_the_third_death() -> None:
    idle = death(state=SlotState.IDLE, unreported=None)
    counts = []
    for _ in range(blame.MAX_DEATHS_IN_A_ROW):
        verdict = judge_death(idle)
        counts.append((verdict.deaths_in_a_row, verdict.breaks, verdict.respawn))
        idle = idle._replace(deaths_in_a_row=verdict.deaths_in_a_row)
    assert counts == [(1, None, True), (2, None, True), (3, Breakage.DEATHS, False)]


def test_while_winding_down_a_slot_respawns_only_for_work_left_to_run() -> None:
    idle = death(state=SlotState.IDLE, unreported=None, winding_down=True)
    assert not judge_death(idle).respawn
    assert judge_death(idle._replace(deaths_in_a_row=2)).breaks is None, "shutdown deaths"
    assert judge_death(idle._replace(work_waiting=True)).respawn
    busy = death(winding_down=True, phase=4.0, running=4)
    assert judge_death(busy).respawn, "its re-queued items still need a worker"
    assert not judge_death(busy._replace(pool_broken=True)).respawn


# --- the property behind every death verdict ------------------------------------------------


@st.composite
def deaths_with_work(draw: Any) -> Death:
    start = draw(st.integers(0, 20))
    stop = draw(st.integers(start + 1, start + 12))
    state = draw(st.sampled_from([SlotState.BUSY, SlotState.KILLING, SlotState.STOPPING]))
    running = draw(st.one_of(st.none(), st.integers(start, stop - 1)))
    if running is not None:
        phase = float(running)
    else:
        phase = draw(st.sampled_from([wire.IDLE, wire.RECEIVING, wire.SENDING, wire.UNTRACKED]))
    return death(
        state=state,
        unreported=Span(start, stop),
        accepted_until=draw(st.integers(start - 1, stop - 1)),
        phase=phase,
        running=running,
        deaths_in_a_row=draw(st.integers(0, blame.MAX_DEATHS_IN_A_ROW - 1)),
        winding_down=draw(st.booleans()),
    )


@given(deaths_with_work())
def test_every_unreported_item_is_charged_or_rerun_exactly_once(case: Death) -> None:
    verdict = judge_death(case)
    assert case.unreported is not None
    expected = list(range(case.unreported.start, case.unreported.stop))
    if case.state is SlotState.KILLING and case.accepted_until in expected:
        expected.remove(case.accepted_until)  # failed with TaskTimeoutError already
    accounted = [i for span in verdict.requeue for i in range(span.start, span.stop)]
    if verdict.charged is not None:
        accounted.append(verdict.charged)
    assert sorted(accounted) == expected
    assert all(span.start < span.stop for span in verdict.requeue)
    assert [span.start for span in verdict.requeue] == sorted(s.start for s in verdict.requeue)


# --- unreadable messages --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("has_piece", "streaming", "remedy"),
    [
        (False, False, Remedy.INIT_FAILED),
        (True, True, Remedy.FAIL_ONE),
        (True, False, Remedy.FAIL_REST),
    ],
)
def test_an_unreadable_result_fails_its_items_and_never_runs_them_again(
    has_piece: bool, streaming: bool, remedy: Remedy
) -> None:
    assert blame.unreadable_results(has_piece, streaming) is remedy


def test_an_unreadable_run_is_split_to_find_the_item_that_cannot_be_unpickled() -> None:
    assert blame.unreadable_run(4) is Remedy.SPLIT
    assert blame.unreadable_run(1) is Remedy.FAIL_REST


# --- the errors ---------------------------------------------------------------------------


def test_a_crash_error_names_the_worker_its_pid_and_how_it_died() -> None:
    error = blame.crash_error(1, 4242, -signal.SIGKILL, blame.WHILE_RUNNING)
    assert isinstance(error, WorkerCrashedError)
    assert str(error) == "worker 1 (pid 4242) died while running this task (killed by SIGKILL)"
    assert (error.slot, error.pid, error.exitcode) == (1, 4242, -signal.SIGKILL)


@pytest.mark.parametrize(
    ("exitcode", "text"),
    [
        (None, "exit status unknown"),
        (3, "exit code 3"),
        (-9, "killed by SIGKILL"),
        (-200, "killed by signal 200"),
    ],
)
def test_exits_are_described_in_words(exitcode: Optional[int], text: str) -> None:
    assert blame.describe_exit(exitcode) == text


def test_an_init_error_says_whether_the_spec_or_the_initializer_failed_and_why() -> None:
    cause = ValueError("no model")
    spec = blame.init_error(blame.initialising(0, "Model('x')"), cause)
    assert isinstance(spec, WorkerInitError)
    assert str(spec).startswith("building worker 0 (Model('x')) failed: ValueError('no model')")
    assert spec.__cause__ is cause
    initializer = blame.init_error(blame.initialising(2, None), cause)
    assert str(initializer).startswith("the pool initializer in worker 2 failed")


def test_a_death_while_starting_says_how_far_the_worker_got() -> None:
    what = blame.initialising(1, None)
    died = blame.start_death_error(1, 3, True, what, "spawn")
    assert isinstance(died, WorkerInitError)
    assert str(died).startswith("the pool initializer in worker 1 failed: the worker died")
    early = str(blame.start_death_error(0, 1, False, what, "spawn"))
    assert early.startswith("worker 0 died while starting (exit code 1)")
    assert "main module fail to import under spawn" in early


def test_workers_exits_are_checked_often_when_expected_now_and_then_with_work() -> None:
    assert blame.death_poll_interval(True, True, 0.3) == blame.DEATH_POLL
    assert blame.death_poll_interval(False, True, 0.3) == 0.3
    assert blame.death_poll_interval(False, True, -1.0) == 0.0
    assert blame.death_poll_interval(False, False, 0.3) is None, "idle workers: sleep"


def test_a_timeout_error_shows_the_call_shortened() -> None:
    error = blame.timeout_error(divmod, ((7, "x" * 100), {}), wire.CALL, 1.5, 0, 99)
    assert isinstance(error, TaskTimeoutError)
    text = str(error)
    assert text.startswith("task divmod(7, 'xxx")
    assert "...) exceeded its 1.5 s limit in worker 0 (pid 99)" in text


# --- what a death while a worker starts is reported as --------------------------------------------


@pytest.mark.parametrize(
    ("ever_ready", "is_crash"),
    [(True, True), (False, False)],
)
def test_a_death_while_starting_is_a_crash_only_once_the_slot_has_been_ready(
    ever_ready: bool, is_crash: bool
) -> None:
    assert starting_death_is_a_crash(ever_ready) is is_crash


def test_start_death_message_says_what_happened() -> None:
    plain = describe_start_death(0, 1, False, None, "spawn")
    assert plain == (
        "worker 0 died while starting (exit code 1), before running any task "
        "(did its main module fail to import under spawn?)"
    )
    assert "initializer" not in plain
    assert "main module" not in describe_start_death(2, -9, False, None, "fork")
    # our code ran, with an initializer or a spec to blame
    blamed = describe_start_death(1, 3, True, "the pool initializer in worker 1", "spawn")
    assert blamed.startswith("the pool initializer in worker 1 failed: the worker died while")
    assert "exit code 3" in blamed and "main module" not in blamed
    # nothing of ours to blame: no initializer, no spec
    assert describe_start_death(1, 3, True, None, "fork").startswith("worker 1 died while")
