"""The pure health core: hysteresis, intervals, weights, quorum. Scripted clock, no sleeps."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from havs.core.health import (
    HealthChanged,
    ProbeResult,
    ServerHealth,
    Timing,
    WeightPlan,
    effective_weight,
    quorum_met,
    server_name,
)
from havs.core.model import Check, VirtualService

OK = ProbeResult(True, "ok", 0.002)
FAIL = ProbeResult(False, "timeout", 1.0)


def run(health: ServerHealth, script: str) -> list[tuple[str, str, int]]:
    """Feed '+' (success) and '-' (failure) one per second; return (from, to, after) of each change."""
    out = []
    for i, ch in enumerate(script):
        change = health.observe(OK if ch == "+" else FAIL, float(i + 1))
        if change is not None:
            out.append((change.from_, change.to, change.after))
    return out


@pytest.mark.parametrize(
    ("rise", "fall", "initial", "script", "changes", "final"),
    [
        # from unknown: rise successes make it up, fall failures make it down
        (2, 2, "down", "+", [], "unknown"),
        (2, 2, "down", "++", [("unknown", "up", 2)], "up"),
        (1, 1, "down", "+", [("unknown", "up", 1)], "up"),
        (2, 2, "down", "--", [("unknown", "down", 2)], "down"),
        (2, 3, "down", "+-+-+-", [], "unknown"),  # alternating never settles
        # up -> down needs fall consecutive failures; a success in between resets the count
        (2, 3, "down", "++--+---", [("unknown", "up", 2), ("up", "down", 3)], "down"),
        (2, 3, "down", "++--+--+", [("unknown", "up", 2)], "up"),
        # down -> up needs rise consecutive successes
        (3, 1, "down", "-++-+++", [("unknown", "down", 1), ("down", "up", 3)], "up"),
        (3, 1, "down", "-++-++", [("unknown", "down", 1)], "down"),
        # flapping with rise=fall=1 follows every result
        (1, 1, "up", "+-+-", [("unknown", "up", 1), ("up", "down", 1), ("down", "up", 1), ("up", "down", 1)],
         "down"),
        # results agreeing with the state produce no events
        (1, 1, "down", "+++++", [("unknown", "up", 1)], "up"),
        (2, 2, "down", "------", [("unknown", "down", 2)], "down"),
    ],
)
def test_hysteresis(rise: int, fall: int, initial: str, script: str, changes: list, final: str) -> None:
    h = ServerHealth("10.0.0.1:80", Timing(rise=rise, fall=fall), initial=initial)  # type: ignore[arg-type]
    assert run(h, script) == changes
    assert h.state == final


def test_change_event_carries_the_tipping_result() -> None:
    h = ServerHealth("192.168.72.128:80", Timing(rise=1, fall=2), service="TCP 192.168.0.108:80")
    assert h.observe(OK, 10.0) == HealthChanged(
        "192.168.72.128:80", "unknown", "up", "ok", 1, 0.002, "TCP 192.168.0.108:80", 10.0
    )
    assert h.observe(ProbeResult(False, "refused", 0.001), 11.0) is None
    change = h.observe(ProbeResult(False, "status 503", 0.004), 12.0)
    assert change is not None
    assert (change.from_, change.to, change.reason, change.after, change.latency, change.at) == (
        "up", "down", "status 503", 2, 0.004, 12.0,
    )
    assert h.since == 12.0
    assert h.last == ProbeResult(False, "status 503", 0.004)


@pytest.mark.parametrize(
    ("initial", "script", "is_up"),
    [("down", "", False), ("up", "", True), ("up", "+", True), ("up", "--", False), ("down", "++", True)],
)
def test_unknown_is_treated_as_initial(initial: str, script: str, is_up: bool) -> None:
    h = ServerHealth("a:1", Timing(rise=2, fall=2), initial=initial)  # type: ignore[arg-type]
    run(h, script)
    assert h.is_up is is_up


def test_agent_weight_follows_successes_only() -> None:
    h = ServerHealth("a:1", Timing(rise=1, fall=3))
    h.observe(ProbeResult(True, "ok", 0.0, 0.5), 1.0)
    assert h.agent_weight == 0.5
    h.observe(ProbeResult(True, "ok", 0.0, None), 2.0)
    assert h.agent_weight is None
    h.observe(ProbeResult(True, "ok", 0.0, 0.25), 3.0)
    h.observe(FAIL, 4.0)
    assert h.agent_weight is None


@pytest.mark.parametrize(
    ("script", "fast"),
    [
        ("", True),  # unknown: hurry to a verdict
        ("+", True),
        ("++", False),  # up and agreeing
        ("++-", True),  # first failure while up
        ("++-+", False),  # recovered before fall: back to normal
        ("--", False),  # down and agreeing
        ("--+", True),  # first success while down
    ],
)
def test_next_interval_fast_while_changing(script: str, fast: bool) -> None:
    h = ServerHealth("a:1", Timing(rise=2, fall=2, interval=5.0, fast_interval=1.0, jitter=0.2))
    run(h, script)
    base = 1.0 if fast else 5.0
    assert h.next_interval(0.5) == pytest.approx(base)
    assert h.next_interval(0.0) == pytest.approx(base * 0.8)
    assert h.next_interval(1.0) == pytest.approx(base * 1.2)
    assert h.next_due(100.0, 0.5) == pytest.approx(100.0 + base)


def test_next_due_counts_the_interval_from_the_end_of_the_check() -> None:
    h = ServerHealth("a:1", Timing(rise=2, fall=3, interval=5.0, fast_interval=1.0, jitter=0.0))
    h.observe(ProbeResult(True, "ok", 0.01), 100.01)
    assert h.next_due(100.01) == pytest.approx(101.01)  # fast while changing
    h.observe(ProbeResult(True, "ok", 3.0), 104.0)
    assert h.next_due(104.0) == pytest.approx(109.0)  # up: the interval after a 3 s answer (period 8 s)
    h.observe(ProbeResult(False, "timeout", 1.0), 114.0)
    assert h.next_due(114.0) == pytest.approx(115.0)


def test_next_due_spaces_the_rise_checks_of_a_server_without_a_verdict() -> None:
    h = ServerHealth("a:1", Timing(rise=2, fall=2, interval=5.0, fast_interval=0.2, jitter=0.0))
    h.observe(ProbeResult(True, "ok", 0.01), 10.0)  # unknown, one pass of two
    assert h.next_due(10.0, first_round=0.5) == pytest.approx(10.5)  # not the herd's 0.2
    assert h.next_due(10.0, first_round=0.1) == pytest.approx(10.2)  # never below the fast interval
    h.observe(ProbeResult(True, "ok", 0.01), 10.5)  # up
    h.observe(ProbeResult(False, "refused", 0.0), 15.5)  # changing, with a verdict: fast again
    assert h.next_due(15.5, first_round=0.5) == pytest.approx(15.7)


def test_timing_from_check_and_retime_keeps_state() -> None:
    check = Check(interval=2.0, rise=3, fall=4, jitter=0.0)
    t = Timing.of(check)
    assert (t.rise, t.fall, t.interval, t.fast_interval, t.jitter) == (3, 4, 2.0, 0.4, 0.0)
    h = ServerHealth("a:1", Timing(rise=1, fall=3))
    run(h, "+--")
    assert h.state == "up"
    h.retime(Timing(rise=1, fall=2))
    assert h.state == "up"
    assert h.observe(FAIL, 10.0) is not None  # third failure, past the new fall of 2


@pytest.mark.parametrize(
    ("kwargs", "now", "expected"),
    [
        # down: removed or inhibited
        ({"up": False}, 0, None),
        ({"up": False, "on_down": "inhibit"}, 0, 0),
        ({"up": "down"}, 0, None),
        ({"up": "unknown", "on_down": "inhibit"}, 0, 0),
        ({"up": False, "drained": True}, 0, None),
        # up: configured weight
        ({"up": True}, 0, 100),
        ({"up": "up"}, 0, 100),
        # drained wins over everything while up
        ({"up": True, "drained": True}, 0, 0),
        ({"up": True, "drained": True, "agent_fraction": 1.0}, 0, 0),
        # agent scales; clamps to 0..1; 0% takes no new connections
        ({"up": True, "agent_fraction": 0.5}, 0, 50),
        ({"up": True, "agent_fraction": 0.0}, 0, 0),
        ({"up": True, "agent_fraction": 1.7}, 0, 100),
        ({"up": True, "agent_fraction": -1.0}, 0, 0),
        # slow start: 1 at the start, linear, full at the end
        ({"up": True, "since_up": 10.0, "slow_start": 10.0}, 10.0, 1),
        ({"up": True, "since_up": 10.0, "slow_start": 10.0}, 15.0, 50),
        ({"up": True, "since_up": 10.0, "slow_start": 10.0}, 19.99, 99),
        ({"up": True, "since_up": 10.0, "slow_start": 10.0}, 20.0, 100),
        ({"up": True, "since_up": 10.0, "slow_start": 10.0}, 500.0, 100),
        # slow start ramps towards the agent-scaled weight
        ({"up": True, "since_up": 0.0, "slow_start": 10.0, "agent_fraction": 0.5}, 5.0, 25),
        # configured 0 stays 0
        ({"up": True, "configured": 0, "slow_start": 10.0}, 0.0, 0),
        ({"up": True, "configured": 1, "slow_start": 10.0}, 0.0, 1),
    ],
)
def test_effective_weight(kwargs: dict, now: float, expected: int | None) -> None:
    args = {"configured": 100, "since_up": 0.0, **kwargs}
    configured, up, since_up = args.pop("configured"), args.pop("up"), args.pop("since_up")
    assert effective_weight(configured, up, since_up, now, **args) == expected


def test_weight_plan_next_change_follows_the_ramp() -> None:
    plan = WeightPlan(configured=11, up=True, since_up=0.0, slow_start=10.0)
    assert plan.weight(0.0) == 1
    assert plan.next_change(0.0) == pytest.approx(1.0)  # one unit per second
    assert plan.weight(1.0) == 2
    assert plan.next_change(9.5) == pytest.approx(10.0)
    assert plan.next_change(10.0) is None
    assert WeightPlan(configured=11, up=True, since_up=0.0).next_change(0.0) is None
    assert WeightPlan(configured=11, up=False, since_up=0.0, slow_start=10.0).next_change(0.0) is None
    assert WeightPlan(configured=1, up=True, since_up=0.0, slow_start=10.0).next_change(0.0) is None
    # the weight never changes between two announced wake-ups
    plan = WeightPlan(configured=7, up=True, since_up=3.0, slow_start=4.0)
    t = 3.0
    while (nxt := plan.next_change(t)) is not None:
        assert plan.weight(nxt - 1e-9) == plan.weight(t)
        assert plan.weight(nxt) == plan.weight(t) + 1  # type: ignore[operator]
        t = nxt
    assert plan.weight(t) == 7


def _service(**quorum: object) -> VirtualService:
    data: dict = {"address": "192.168.0.108", "port": 80, "real_servers": [{"address": "192.168.72.128"}]}
    if quorum:
        data["quorum"] = quorum
    return VirtualService.model_validate(data)


@pytest.mark.parametrize(
    ("quorum", "weights", "met"),
    [
        ({}, [], True),
        ({}, [None, 0], True),
        ({"min_weight": 1}, [], False),
        ({"min_weight": 1}, [None, 0], False),
        ({"min_weight": 1}, [None, 1], True),
        ({"min_weight": 5}, [2, 2, None], False),
        ({"min_weight": 5}, [2, 3], True),
        ({"min_weight": 5}, {"a:1": 4, "b:1": 1}, True),
        ({"min_weight": 5}, {"a:1": 4, "b:1": None}, False),
    ],
)
def test_quorum(quorum: dict, weights: object, met: bool) -> None:
    assert quorum_met(_service(**quorum), weights) is met  # type: ignore[arg-type]


def test_server_name() -> None:
    assert server_name("192.168.72.128", 80) == "192.168.72.128:80"
    assert server_name("2001:db8::1", 443) == "[2001:db8::1]:443"


def test_health_core_is_pure() -> None:
    banned = {"asyncio", "socket", "time", "random", "pyroute2", "aiohttp", "structlog"}
    tree = ast.parse(Path(__file__).parent.parent.joinpath("havs/core/health.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & banned


def test_an_inconclusive_result_neither_passes_nor_fails() -> None:
    """The director could not run the check (EMFILE): counts, state and agent weight stand."""
    local = ProbeResult(False, "local: too many open files", 0.0, inconclusive=True)
    h = ServerHealth("10.0.0.1:80", Timing(rise=2, fall=2), initial="up")
    assert h.observe(ProbeResult(True, "ok", 0.0, 0.5), 1.0) is None
    for t in range(2, 20):
        assert h.observe(local, float(t)) is None
    assert h.is_up and h.state == "unknown" and h.agent_weight == 0.5 and h.last is local
    change = h.observe(OK, 20.0)  # the earlier success still counts: this is the second in a row
    assert change is not None and (change.to, change.after) == ("up", 2)
    assert h.observe(FAIL, 21.0) is None
    assert h.observe(local, 22.0) is None
    change = h.observe(FAIL, 23.0)
    assert change is not None and (change.to, change.after) == ("down", 2)


# ---------------------------------------------------------------------------------------------- overload

def test_a_timeout_under_loop_lag_is_inconclusive_only_then() -> None:
    from havs.core.health import Overload, overload_verdict

    policy = Overload(lag=0.1, max_consecutive=3)
    timeout = ProbeResult(False, "timeout", 1.86)
    set_aside = overload_verdict(timeout, 0.86, policy, 0)
    assert set_aside is not None and set_aside.inconclusive and not set_aside.ok
    assert set_aside.reason == "overload: timeout while the director's loop lagged 860 ms"
    assert set_aside.latency == 1.86
    assert overload_verdict(timeout, 0.099, policy, 0) is None  # the loop kept time: the server is slow
    assert overload_verdict(timeout, 0.86, policy, 3) is None  # three set aside already: this one counts
    assert overload_verdict(ProbeResult(False, "refused", 0.9), 0.86, policy, 0) is None  # an answer is an answer
    assert overload_verdict(OK, 0.86, policy, 0) is None


def test_overload_never_takes_a_live_server_out_but_a_dead_one_still_goes() -> None:
    from havs.core.health import Overload

    policy = Overload(lag=0.1, max_consecutive=3)
    h = ServerHealth("s", Timing(rise=2, fall=2), initial="down")
    h.observe(OK, 1.0)
    assert h.observe(OK, 2.0) is not None and h.state == "up"
    # a burst of overload: answers sat unread while the loop was late; each burst ends with an answer
    t = 3.0
    for _ in range(5):
        for _ in range(3):
            assert h.observe(FAIL, t, lag=0.8, overload=policy) is None
            t += 1
        assert h.last is not None and h.last.inconclusive and h.last.reason.startswith("overload: ")
        assert h.observe(OK, t, lag=0.8, overload=policy) is None and h.overload_skips == 0
        t += 1
    assert h.state == "up"
    # the server dies during a long overload: 3 set aside, then fall=2 real failures
    changes = [h.observe(FAIL, t + i, lag=0.8, overload=policy) for i in range(5)]
    assert changes[:4] == [None] * 4 and changes[4] is not None
    assert (changes[4].to, changes[4].after, changes[4].reason) == ("down", 2, "timeout")
    # no lag: a timeout counts at once, as before
    h2 = ServerHealth("s", Timing(rise=1, fall=1), initial="up")
    h2.observe(OK, 1.0)
    change = h2.observe(FAIL, 2.0, lag=0.01, overload=policy)
    assert change is not None and change.to == "down"


def test_lag_window_keeps_the_worst_lateness_per_slot_and_forgets_old_ones() -> None:
    from havs.core.health import LagWindow

    w = LagWindow(bucket=0.1, horizon=1.0)
    assert w.worst(0.0, 5.0) == 0.0
    w.record(10.05, 0.02)
    w.record(10.07, 0.5)
    w.record(10.09, 0.1)
    w.record(10.35, 0.2)
    assert w.worst(10.0, 10.4) == 0.5
    assert w.worst(10.12, 10.4) == 0.2  # the check started after the worst slot
    assert w.worst(10.45, 10.9) == 0.0  # (to the slot: 0.1 s)
    # 10 slots later the ring has wrapped: the 0.5 s slot is reused, not misread as new
    w.record(11.06, 0.03)
    assert w.worst(11.02, 11.08) == 0.03
    assert w.worst(10.0, 11.1) == 0.2  # only the horizon (1 s) is kept: 10.07's 0.5 s is forgotten
