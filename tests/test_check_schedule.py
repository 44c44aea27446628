"""The health shell's timetable (core/check_schedule.py): one wake-up serves every check due, the in-flight
bound queues instead of timing out, deadlines start when a check really starts."""

from __future__ import annotations

import pytest

from havs.core.check_schedule import CheckSchedule


def test_due_starts_what_is_due_and_what_is_due_within_the_early_window() -> None:
    s: CheckSchedule[str] = CheckSchedule(early=0.01)
    s.plan("a", 1.0)
    s.plan("b", 1.008)
    s.plan("c", 1.02)
    assert s.next_wake() == 1.0
    assert s.due(0.5) == []
    assert s.planned("b") == 1.008
    assert s.due(1.0) == ["a", "b"]  # b goes out with a: one wake-up, not two
    assert s.is_running("a") and s.is_running("b") and not s.is_running("c")
    assert s.next_wake() == 1.02


def test_a_new_plan_replaces_the_old_one() -> None:
    s: CheckSchedule[str] = CheckSchedule(early=0.0)
    s.plan("a", 5.0)
    s.plan("a", 1.0)  # an early check
    assert s.planned("a") == 1.0 and s.next_wake() == 1.0
    assert s.due(1.0) == ["a"]
    assert s.due(10.0) == []  # the replaced plan is gone
    assert len(s) == 1


def test_plans_made_while_running_wait_for_the_end() -> None:
    s: CheckSchedule[str] = CheckSchedule(early=0.0)
    s.plan("a", 1.0)
    assert s.due(1.0) == ["a"]
    s.begin("a", 2.0)
    s.plan("a", 1.1)  # e.g. an early check asked for mid-check
    assert s.due(1.5) == [] and s.next_wake() == 2.0
    s.finished("a")
    assert s.planned("a") == 1.1 and s.due(1.5) == ["a"]


def test_the_in_flight_bound_queues_in_due_order() -> None:
    s: CheckSchedule[str] = CheckSchedule(max_in_flight=2, early=0.0)
    for i, key in enumerate("abcd"):
        s.plan(key, 1.0 + i * 0.001)
    assert s.due(2.0) == ["a", "b"]
    for key in "ab":
        s.begin(key, 3.0)
    assert s.running == 2
    assert s.next_wake() == 3.0  # full: only a deadline can wake it
    assert s.due(2.5) == []
    s.finished("a")
    assert s.next_wake() == 1.002  # a slot is free: c is overdue, start it at once
    assert s.planned("c") == 1.002
    assert s.due(2.6) == ["c"]
    s.begin("c", 3.6)  # its deadline counts from when it really started, not from when it was due


def test_deadlines_expire_once_and_not_after_finishing() -> None:
    s: CheckSchedule[str] = CheckSchedule(early=0.0)
    for key in "abc":
        s.plan(key, 0.0)
    s.due(0.0)
    s.begin("a", 1.0)
    s.begin("b", 1.0)
    s.begin("c", None)  # times itself
    s.finished("b")
    assert s.next_wake() == 1.0
    assert s.expired(0.99) == []
    assert s.expired(1.0) == ["a"]
    assert s.expired(5.0) == []  # once
    assert s.is_running("a")  # until the shell says it finished
    s.finished("a")
    assert s.next_wake() is None


def test_drop_forgets_everything() -> None:
    s: CheckSchedule[str] = CheckSchedule(early=0.0)
    s.plan("a", 1.0)
    s.plan("b", 2.0)
    s.due(1.0)
    s.begin("a", 3.0)
    s.plan("a", 4.0)
    s.drop("a")
    s.drop("b")
    assert len(s) == 0 and s.running == 0 and s.next_wake() is None
    assert s.expired(10.0) == [] and s.due(10.0) == []
    s.finished("a")  # a late completion of a dropped check changes nothing
    assert s.planned("a") is None and s.due(10.0) == []


def test_a_bound_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        CheckSchedule(max_in_flight=0)
