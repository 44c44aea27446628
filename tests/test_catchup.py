"""The returning director's catch-up decision, on a scripted clock."""

from __future__ import annotations

import ipaddress

import pytest

from havs.core.catchup import CatchUp, Progress, Released, ReplayLimiter, SendRequest
from havs.core.ipvs_sync_wire import Key


def key(n: int) -> Key:
    ip = ipaddress.IPv4Address
    return Key(6, ip("192.168.0.105"), 40000 + n, ip("192.168.0.108"), 80, ip("192.168.72.128"), 80)


def test_requests_at_start_then_back_off_until_answered() -> None:
    cu = CatchUp(100.0, deadline=30.0, first_nonce=7, retry=1.0)
    assert cu.tick(100.0) == [SendRequest(7)]
    assert cu.tick(100.9) == []
    assert cu.tick(101.0) == [SendRequest(8)]
    assert cu.next_wake() == 103.0  # 2 s after the second request
    assert cu.tick(102.9) == []
    assert cu.tick(103.0) == [SendRequest(9)]
    assert cu.next_wake() == 107.0
    for t in (107.0, 115.0, 123.0):  # capped at 8 × retry
        assert cu.tick(t) and cu.next_wake() == min(t + 8.0, 130.0)


def test_caught_up_when_every_replayed_tuple_is_in_our_table() -> None:
    cu = CatchUp(0.0, deadline=30.0, first_nonce=1)
    cu.tick(0.0)
    assert cu.table([], 0.1) == []  # no answer yet: nothing to compare with
    assert cu.answer(1, frozenset({key(1), key(2), key(3)}), 0.2) == []
    assert cu.table([key(1)], 0.3) == [Progress(1, 3)]
    assert cu.table([key(1)], 0.35) == []  # no change, no progress event
    assert cu.table([key(1), key(2), key(3), key(9)], 0.5) == [Released("caught_up", 0.5, 3, 0)]
    assert cu.done and cu.next_wake() is None
    assert cu.tick(40.0) == [] and cu.table([], 41.0) == []


def test_an_empty_master_table_is_caught_up_at_once() -> None:
    cu = CatchUp(5.0, deadline=30.0, first_nonce=1)
    cu.tick(5.0)
    assert cu.answer(1, frozenset(), 5.01) == [Released("caught_up", pytest.approx(0.01), 0, 0)]


def test_deadline_preempts_anyway_and_says_how_far_it_got() -> None:
    cu = CatchUp(0.0, deadline=10.0, first_nonce=1)
    cu.tick(0.0)
    cu.answer(1, frozenset({key(1), key(2)}), 0.1)
    cu.table([key(2)], 0.2)
    assert cu.tick(9.99) == [SendRequest(2)] and not cu.done  # still asking
    assert cu.tick(10.0) == [Released("deadline", 10.0, 2, 1)]


def test_deadline_without_any_answer() -> None:
    cu = CatchUp(0.0, deadline=3.0, first_nonce=1)
    cu.tick(0.0)
    assert cu.tick(3.0) == [Released("deadline", 3.0, None, None)]


def test_deadline_zero_never_holds() -> None:
    cu = CatchUp(0.0, deadline=0.0, first_nonce=1)
    assert cu.tick(0.0) == [Released("deadline", 0.0, None, None)]


def test_answers_to_requests_we_never_sent_are_ignored_late_ones_count() -> None:
    cu = CatchUp(0.0, deadline=30.0, first_nonce=10)
    cu.tick(0.0)
    cu.tick(1.0)  # nonce 11
    assert cu.answer(9, frozenset(), 1.1) == []
    assert cu.answer(12, frozenset(), 1.1) == []
    assert not cu.done
    assert cu.answer(10, frozenset(), 1.2) == [Released("caught_up", 1.2, 0, 0)]


def test_becoming_master_ends_the_wait_once() -> None:
    cu = CatchUp(0.0, deadline=30.0, first_nonce=1)
    cu.tick(0.0)
    assert cu.became_master(2.0) == [Released("became_master", 2.0, None, None)]
    assert cu.became_master(3.0) == [] and cu.stop(3.0) == []


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        CatchUp(0.0, deadline=-1.0, first_nonce=1)
    with pytest.raises(ValueError):
        CatchUp(0.0, deadline=1.0, first_nonce=1, retry=0.0)


def test_replay_limiter() -> None:
    lim = ReplayLimiter(0.5)
    assert lim.allow(10.0)
    assert not lim.allow(10.4)
    assert lim.allow(10.5)
