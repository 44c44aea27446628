"""The VRRP core's handover, hardening, stale addresses and transition table: pairs over the fake link
of test_vrrp with the scripted clock, exact deadlines, no sleeps."""

from __future__ import annotations

import ipaddress
import itertools

import pytest
from test_vrrp import A_ADDR, B_ADDR, GW, VIP, Link, elected, params, skew

from havs.core.vrrp import (
    ANSWERS_PER_INTERVAL,
    BACKUP,
    FAULT,
    INIT,
    MASTER,
    MOVES,
    RESIGN_EXTRA,
    RESIGNING,
    STALE_CHECK_INTERVALS,
    TABLE,
    AdvertDropped,
    AnnounceAddresses,
    Handover,
    Ignored,
    Input,
    ReleaseAddresses,
    SendAdvertisement,
    StateChanged,
    TakeAddresses,
    VrrpInstance,
)
from havs.core.wire import Advertisement

ATTACKER = ipaddress.IPv4Address("192.168.0.66")


def inject(link: Link, to: str, adv: Advertisement, src: ipaddress.IPv4Address) -> list:
    node = link.nodes[to]
    actions = node.inst.receive(adv, src, link.now)
    link._dispatch(node, actions)
    return actions


def adv(priority: int, interval_cs: int = 100) -> Advertisement:
    return Advertisement(3, 51, priority, (VIP, GW), interval_cs)


def last_send(link: Link, name: str, before: float) -> float:
    return max(t for t, _ in link.actions(name, SendAdvertisement) if t <= before)


# ------------------------------------------------------------------------------------ handover


def test_graceful_stop_keeps_addresses_until_the_successor_advertises() -> None:
    link = elected(a_kw={"garp_burst_interval": 0.02})
    link.run_until(10.5)
    last = last_send(link, "a", 10.5)
    out = link.do("a", "stop")
    assert out == [SendAdvertisement(adv(0)), StateChanged(MASTER, RESIGNING, "shutdown")]
    assert link.state("a") == RESIGNING
    takeover = last + 1.0 + 0.1 + skew(100)
    link.run_until(takeover - 1e-6)
    assert link.state("b") == BACKUP and not link.actions("a", ReleaseAddresses, since=10.5)
    link.run_until(takeover)
    assert link.state("b") == MASTER
    # a heard b's first advert at the takeover: it lingers 0.1 s + one burst interval, then lets go
    release = takeover + 0.1 + 0.02
    link.run_until(release - 1e-6)
    assert link.state("a") == RESIGNING
    link.run_until(release + 1.0)
    tail = [(t, a) for t, n, a in link.log if n == "a" and t >= release - 1e-9 and not isinstance(a, Ignored)]
    assert [a for _, a in tail] == [
        Handover("peer took over", pytest.approx(release - 10.5)),  # type: ignore[arg-type]
        ReleaseAddresses((VIP, GW)),
        StateChanged(RESIGNING, INIT, "shutdown"),
    ]
    assert tail[0][0] == pytest.approx(release)
    assert link.nodes["a"].inst.get_timer() is None
    # the take on b came before the release on a: make before break
    assert link.actions("b", TakeAddresses)[-1][0] < tail[1][0]


def test_resigning_alone_releases_at_the_deadline() -> None:
    link = Link()
    link.add("a", params(A_ADDR, 200))
    link.start("a")
    link.run_until(10.0)
    link.do("a", "stop")
    deadline = 10.0 + 3 * 1.0 + RESIGN_EXTRA
    link.run_until(deadline - 1e-6)
    assert link.state("a") == RESIGNING
    link.run_until(deadline + 1)
    (t, handover), = link.actions("a", Handover)
    assert t == pytest.approx(deadline) and handover.outcome == "no peer heard"
    assert link.state("a") == INIT and link.actions("a", ReleaseAddresses, since=deadline)


def test_graceful_stop_of_a_backup_releases_stale_addresses() -> None:
    link = elected()
    out = link.do("b", "stop")
    assert out == [StateChanged(BACKUP, INIT, "shutdown"), ReleaseAddresses((VIP, GW), "stale")]


def test_shutdown_while_resigning_releases_at_once() -> None:
    link = elected()
    link.do("a", "stop")
    out = link.do("a", "shutdown")
    assert [type(a) for a in out] == [Handover, ReleaseAddresses, StateChanged]
    assert link.state("a") == INIT


# --------------------------------------------------------------------------- priority-0 forgeries


def test_forged_priority_zero_in_rhythm_from_the_master_never_flaps_the_backup() -> None:
    link = elected(a_prio=150, b_prio=100, a_kw={"advert_interval": 0.1}, b_kw={"advert_interval": 0.1})
    start = link.now
    b = link.nodes["b"].inst
    t = start
    # right after each of a's adverts (the worst rhythm: skew 61 ms ends before a's next advert)
    for _ in range(100):
        nxt = link.nodes["a"].inst.get_timer()
        assert nxt is not None
        link.run_until(nxt + 0.001)
        inject(link, "b", adv(0, 10), A_ADDR)
        t = link.now
    link.run_until(t + 0.1)  # a's advert after the last forgery too
    assert link.changes("b")[-1][2] == BACKUP and len(link.changes("b")) == 1
    assert link.state("a") == MASTER
    assert b.counters.dropped["priority0_contradicted"] == 100


def test_priority_zero_from_anyone_but_the_master_is_a_counted_drop() -> None:
    link = elected()
    deadline = link.nodes["b"].inst.get_timer()
    out = inject(link, "b", adv(0), ATTACKER)
    assert out == [AdvertDropped("priority0_not_master", ATTACKER)]
    assert link.nodes["b"].inst.get_timer() == deadline


def test_repeated_priority_zero_does_not_move_the_deadline() -> None:
    link = elected()
    link.run_until(10.5)
    inject(link, "b", adv(0), A_ADDR)
    deadline = link.nodes["b"].inst.timers.master_down
    link.run_until(10.6)
    assert inject(link, "b", adv(0), A_ADDR) == [AdvertDropped("priority0_repeat", A_ADDR)]
    assert link.nodes["b"].inst.timers.master_down == deadline


# ------------------------------------------------------------------------------------ the flood


def test_lower_priority_flood_is_answered_at_most_once_per_interval_per_sender() -> None:
    link = elected(a_prio=150, b_prio=100, a_kw={"advert_interval": 0.1}, b_kw={"advert_interval": 0.1})
    link.connected = True
    t0 = link.now
    answers = 0
    for i in range(10_000):  # 10,000 in 0.2 s, from one forged sender and 50 others
        link.run_until(t0 + i * 0.2 / 10_000)
        src = ATTACKER if i % 2 else ipaddress.IPv4Address(f"192.168.0.{100 + i % 50}")
        out = link.nodes["a"].inst.receive(adv(1, 10), src, link.now)
        answers += sum(isinstance(a, SendAdvertisement) for a in out)
        link._dispatch(link.nodes["a"], out)
    link.run_until(t0 + 0.5)
    # at most ANSWERS_PER_INTERVAL answers per 0.1 s window, over ~0.2 s (3 windows)
    assert 0 < answers <= 3 * ANSWERS_PER_INTERVAL
    announces = [a for t, a in link.actions("a", AnnounceAddresses, since=t0)]
    assert len(announces) == answers and all(a.reason == "lower_priority" for a in announces)
    assert link.nodes["a"].inst.counters.dropped["answer_rate"] == 10_000 - answers
    # the heartbeat never stopped: no gap above one interval, and b never moved
    sends = [t for t, _ in link.actions("a", SendAdvertisement, since=t0 - 0.1)]
    assert max(b - a for a, b in itertools.pairwise(sends)) <= 0.1 + 1e-9
    assert len(link.changes("b")) == 1 and link.state("a") == MASTER


def test_one_lower_priority_peer_is_answered_once_per_interval() -> None:
    link = elected()
    t0 = link.now
    first = inject(link, "a", adv(50), B_ADDR)
    assert [type(a) for a in first] == [SendAdvertisement, AnnounceAddresses]
    link.run_until(t0 + 0.999)
    assert inject(link, "a", adv(50), B_ADDR) == [AdvertDropped("answer_rate", B_ADDR)]
    link.run_until(t0 + 1.0)
    assert [type(a) for a in inject(link, "a", adv(50), B_ADDR)] == [SendAdvertisement, AnnounceAddresses]


# ---------------------------------------------------------------------------- stale addresses


def test_stale_addresses_released_on_start_and_rechecked_in_backup() -> None:
    inst = VrrpInstance(params(B_ADDR, 100), 0.0)
    assert inst.start(0.0) == [StateChanged(INIT, BACKUP, "start"), ReleaseAddresses((VIP, GW), "stale")]
    every = STALE_CHECK_INTERVALS * 1.0
    assert inst.timers.stale == every
    # a master keeps it BACKUP; the re-check comes every `every` seconds, exactly
    seen = []
    t = 0.0
    while t < 3 * every + 0.5:
        t += 0.5
        inst.receive(adv(200), A_ADDR, t)
        for a in inst.handle_timer(t):
            if isinstance(a, ReleaseAddresses):
                seen.append((t, a.reason))
    assert seen == [(every, "stale"), (2 * every, "stale"), (3 * every, "stale")]


def test_master_has_no_stale_check_and_leaving_master_releases_for_real() -> None:
    link = elected()
    assert link.nodes["a"].inst.timers.stale is None
    out = link.do("a", "fault")
    assert ReleaseAddresses((VIP, GW)) in out and ReleaseAddresses((VIP, GW), "stale") not in out


# ------------------------------------------------------------------------------------ the table


def test_inputs_not_in_the_table_are_counted_no_ops() -> None:
    inst = VrrpInstance(params(B_ADDR, 100), 0.0)
    assert inst.recover(0.0) == [Ignored(INIT, Input.RECOVER)]
    assert inst.receive(adv(200), A_ADDR, 0.0) == [Ignored(INIT, Input.ADVERT)]
    inst.start(0.0)
    assert inst.start(0.1) == [Ignored(BACKUP, Input.START)]
    assert inst.counters.ignored == {"INIT:recover": 1, "INIT:advert": 1, "BACKUP:start": 1}
    assert inst.snapshot()["ignored"] == {"INIT:recover": 1, "INIT:advert": 1, "BACKUP:start": 1}
    inst.fault(0.2)
    assert inst.receive(adv(200), A_ADDR, 0.3) == [Ignored(FAULT, Input.ADVERT)]


def test_moves_forbid_what_never_happens() -> None:
    assert (INIT, RESIGNING) not in MOVES and (RESIGNING, MASTER) not in MOVES
    assert (BACKUP, RESIGNING) not in MOVES and (FAULT, RESIGNING) not in MOVES
    for (state, _), handler in TABLE.items():
        assert callable(handler) and state in (INIT, BACKUP, MASTER, FAULT, RESIGNING)
    inst = VrrpInstance(params(A_ADDR, 100), 0.0)
    with pytest.raises(RuntimeError, match="illegal VRRP transition"):
        inst._transition(RESIGNING, "test", 0.0)
