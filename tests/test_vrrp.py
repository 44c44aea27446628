"""The VRRP state machine in pairs over a fake link with a scripted clock: no sleeps, exact times."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import pytest

from havs.core import wire
from havs.core.vrrp import (
    BACKUP,
    FAULT,
    INIT,
    MASTER,
    Action,
    AdvertDropped,
    AnnounceAddresses,
    ReleaseAddresses,
    SendAdvertisement,
    StateChanged,
    TakeAddresses,
    VrrpInstance,
    VrrpParams,
)
from havs.core.wire import Advertisement

VIP = ipaddress.IPv4Address("192.168.0.108")
GW = ipaddress.IPv4Address("192.168.72.130")
A_ADDR = ipaddress.IPv4Address("192.168.0.11")
B_ADDR = ipaddress.IPv4Address("192.168.0.12")
WALL0 = 1_790_000_000.0  # the UTC clock at the link's time 0 (auth_hmac stamps)


def params(addr: ipaddress.IPv4Address, priority: int, **kw: object) -> VrrpParams:
    base: dict[str, object] = {"router_id": 51, "advert_interval": 1.0, "addresses": (VIP, GW)}
    base.update(kw)
    return VrrpParams(priority=priority, primary_address=addr, **base)  # type: ignore[arg-type]


def skew(priority: int, interval: float = 1.0) -> float:
    return (256 - priority) * interval / 256


@dataclass
class Node:
    name: str
    inst: VrrpInstance
    addr: ipaddress.IPv4Address
    up: bool = True  # False: crashed, neither sends nor receives


@dataclass
class Link:
    """Two or more VRRP instances on one multicast segment. Adverts go through wire.encode/decode and
    arrive at the instant they are sent; `connected=False` drops them (a split link)."""

    nodes: dict[str, Node] = field(default_factory=dict)
    now: float = 0.0
    connected: bool = True
    log: list[tuple[float, str, Action]] = field(default_factory=list)

    def add(self, name: str, p: VrrpParams) -> Node:
        node = Node(name, VrrpInstance(p, self.now), p.primary_address)
        self.nodes[name] = node
        return node

    def start(self, name: str) -> None:
        self._dispatch(self.nodes[name], self.nodes[name].inst.start(self.now))

    def do(self, name: str, method: str, *args: object) -> list[Action]:
        node = self.nodes[name]
        actions = getattr(node.inst, method)(*args, self.now)
        self._dispatch(node, actions)
        return actions

    def crash(self, name: str) -> None:
        self.nodes[name].up = False

    def state(self, name: str) -> str:
        return self.nodes[name].inst.state

    def run_until(self, t: float) -> None:
        while True:
            due = [(n.inst.get_timer(), n.name) for n in self.nodes.values() if n.up and n.inst.get_timer() is not None]
            if not due or min(due)[0] > t:
                break
            when, name = min(due)
            self.now = when
            node = self.nodes[name]
            self._dispatch(node, node.inst.handle_timer(when))
        self.now = t

    def _dispatch(self, node: Node, actions: list[Action]) -> None:
        for action in actions:
            self.log.append((self.now, node.name, action))
            if isinstance(action, SendAdvertisement) and self.connected and node.up:
                payload = wire.encode(action.adv, src=node.addr, dst=wire.MULTICAST_V4)
                payload += node.inst.sign(payload, WALL0 + self.now)  # auth_hmac trailer, if configured
                for other in self.nodes.values():
                    if other is not node and other.up:
                        got = other.inst.receive_bytes(
                            payload, src=node.addr, dst=wire.MULTICAST_V4, ttl=255, now=self.now,
                            wall=WALL0 + self.now,
                        )
                        self._dispatch(other, got)

    def changes(self, name: str | None = None) -> list[tuple[float, str, str, str]]:
        return [
            (t, n, a.to, a.reason)
            for t, n, a in self.log
            if isinstance(a, StateChanged) and (name is None or n == name)
        ]

    def actions(self, name: str, kind: type, since: float = 0.0) -> list[tuple[float, Action]]:
        return [(t, a) for t, n, a in self.log if n == name and isinstance(a, kind) and t >= since]


def pair(a_prio: int = 200, b_prio: int = 100, a_kw: dict | None = None, b_kw: dict | None = None) -> Link:
    link = Link()
    link.add("a", params(A_ADDR, a_prio, **(a_kw or {})))
    link.add("b", params(B_ADDR, b_prio, **(b_kw or {})))
    return link


def elected(a_prio: int = 200, b_prio: int = 100, **kw: object) -> Link:
    """A pair after the first election: a is MASTER at 3 + skew(a)."""
    link = pair(a_prio, b_prio, **kw)  # type: ignore[arg-type]
    link.start("a")
    link.start("b")
    link.run_until(10.0)
    assert link.state("a") == MASTER and link.state("b") == BACKUP
    return link


# ---------------------------------------------------------------------------------------- election


def test_first_election_at_exactly_master_down_interval() -> None:
    link = pair()
    link.start("a")
    link.start("b")
    expected = 3 * 1.0 + skew(200)
    link.run_until(expected - 1e-6)
    assert link.state("a") == BACKUP and link.state("b") == BACKUP
    link.run_until(30.0)
    assert link.changes() == [
        (0.0, "a", BACKUP, "start"),
        (0.0, "b", BACKUP, "start"),
        (expected, "a", MASTER, "master_down"),
    ]
    # becoming master takes both addresses, advertises and announces a burst
    kinds = [type(a) for t, n, a in link.log if n == "a" and t == expected]
    assert kinds == [StateChanged, TakeAddresses, SendAdvertisement, AnnounceAddresses]
    assert link.actions("a", TakeAddresses)[0][1] == TakeAddresses((VIP, GW))
    assert link.actions("a", AnnounceAddresses)[0][1] == AnnounceAddresses(burst=True, reason="master_down")
    # then one advert per interval, and the backup never transitions
    sends = [t for t, _ in link.actions("a", SendAdvertisement)]
    assert sends == pytest.approx([expected + k for k in range(len(sends))])
    assert link.nodes["b"].inst.master_address == A_ADDR
    assert link.nodes["b"].inst.counters.adverts_received == len(sends)


def test_owner_goes_master_at_start() -> None:
    link = pair(a_prio=255)
    link.start("a")
    assert link.state("a") == MASTER
    assert link.changes("a") == [(0.0, "a", MASTER, "owner")]


def test_master_down_exactly_three_intervals_plus_skew_after_last_advert() -> None:
    link = elected()
    last = max(t for t, _ in link.actions("a", SendAdvertisement) if t <= 10.0)
    link.crash("a")
    link.run_until(last + 3 + skew(100) - 1e-6)
    assert link.state("b") == BACKUP
    link.run_until(20.0)
    assert link.changes("b")[-1] == (pytest.approx(last + 3 + skew(100)), "b", MASTER, "master_down")


def test_priority_zero_advert_hands_over_after_skew() -> None:
    link = elected()
    link.run_until(10.5)
    actions = link.do("a", "shutdown")
    assert actions[0] == SendAdvertisement(Advertisement(3, 51, 0, (VIP, GW), 100))
    assert ReleaseAddresses((VIP, GW)) in actions
    assert link.state("a") == INIT and link.nodes["a"].inst.get_timer() is None
    # believed once a's next advert is overdue (last + interval + tolerance), then b's skew
    last = max(t for t, _ in link.actions("a", SendAdvertisement) if t < 10.5)
    takeover = last + 1.0 + 0.1 + skew(100)
    link.run_until(takeover - 1e-6)
    assert link.state("b") == BACKUP
    link.run_until(13.0)
    assert link.changes("b")[-1] == (pytest.approx(takeover), "b", MASTER, "master_down")


def test_master_hearing_priority_zero_readvertises() -> None:
    link = elected()
    link.run_until(10.5)
    inst = link.nodes["a"].inst
    out = inst.receive(Advertisement(3, 51, 0, (VIP, GW), 100), B_ADDR, 10.5)
    assert out == [SendAdvertisement(Advertisement(3, 51, 200, (VIP, GW), 100))]
    assert inst.get_timer() == pytest.approx(11.5)


# -------------------------------------------------------------------------------------- preemption


def test_preempt_higher_priority_takes_over_from_running_master() -> None:
    link = pair()
    link.start("b")
    link.run_until(10.0)
    assert link.state("b") == MASTER
    link.start("a")  # at t=10: ignores b's lower-priority adverts, so its down timer runs out
    link.run_until(10 + 3 + skew(200) - 1e-6)
    assert link.state("a") == BACKUP
    link.run_until(20.0)
    assert link.changes("a")[-1] == (pytest.approx(10 + 3 + skew(200)), "a", MASTER, "master_down")
    assert link.changes("b")[-1] == (pytest.approx(10 + 3 + skew(200)), "b", BACKUP, "higher_priority")
    assert link.actions("b", ReleaseAddresses)


def test_no_preempt_backup_accepts_lower_priority_master() -> None:
    link = pair(a_kw={"preempt": False})
    link.start("b")
    link.run_until(10.0)
    link.start("a")
    link.run_until(100.0)
    assert link.state("a") == BACKUP and link.state("b") == MASTER
    assert link.nodes["a"].inst.master_address == B_ADDR


def test_preempt_delay_holds_off_takeover() -> None:
    link = pair(a_kw={"preempt_delay": 5.0})
    link.start("b")
    link.run_until(10.0)
    link.start("a")
    link.run_until(60.0)
    b_sends = [t for t, _ in link.actions("b", SendAdvertisement) if t >= 10.0]
    first_seen = b_sends[0]
    last_accepted = max(t for t in b_sends if t < first_seen + 5.0)
    takeover = link.changes("a")[-1]
    assert takeover == (pytest.approx(last_accepted + 3 + skew(200)), "a", MASTER, "master_down")
    assert takeover[0] > first_seen + 5.0
    assert link.state("b") == BACKUP


def test_equal_priority_tie_broken_by_higher_primary_address() -> None:
    link = pair(a_prio=100, b_prio=100)
    link.connected = False
    link.start("a")
    link.start("b")
    link.run_until(5.0)
    assert link.state("a") == MASTER and link.state("b") == MASTER
    link.connected = True
    link.run_until(6.0)
    # b's address 192.168.0.12 > a's 192.168.0.11
    assert link.state("b") == MASTER and link.state("a") == BACKUP


# ------------------------------------------------------------------------------------- split brain


@pytest.mark.parametrize("first", ["a", "b"])
def test_split_brain_heals_within_one_interval_and_survivor_reannounces(first: str) -> None:
    link = elected()
    link.connected = False
    link.run_until(20.0)
    assert link.state("a") == MASTER and link.state("b") == MASTER
    # heal just before `first` sends its next advert, so that advert is the first to cross
    first_inst, other_inst = link.nodes[first].inst, link.nodes["b" if first == "a" else "a"].inst
    while (nxt := first_inst.get_timer()) > (other := other_inst.get_timer()):  # type: ignore[operator]
        link.run_until(other + 1e-4)
    heal = nxt - 0.001
    assert heal > link.now
    link.run_until(heal)
    link.connected = True
    link.run_until(heal + 0.002)
    first_send = next(n for t, n, a in link.log if isinstance(a, SendAdvertisement) and t >= heal)
    assert first_send == first
    link.run_until(heal + 1.0)
    assert link.state("a") == MASTER and link.state("b") == BACKUP
    (t_b, _, to, reason) = link.changes("b")[-1]
    assert to == BACKUP and reason == "higher_priority" and heal <= t_b <= heal + 1.0
    assert link.actions("b", ReleaseAddresses, since=heal)
    # the survivor heard a lower priority (b's advert, or b's parting advert when a's crossed first),
    # answered at once and re-announced its addresses
    reannounce = link.actions("a", AnnounceAddresses, since=heal)
    assert reannounce and reannounce[0][1] == AnnounceAddresses(burst=False, reason="lower_priority")
    assert reannounce[0][0] == t_b


# --------------------------------------------------------------------------------- interval, v2


def test_v3_backup_adopts_master_interval() -> None:
    link = pair(a_kw={"advert_interval": 0.5}, b_kw={"advert_interval": 2.0})
    link.start("a")
    link.start("b")
    link.run_until(10.0)
    b = link.nodes["b"].inst
    assert link.state("a") == MASTER and b.master_adver_interval == 0.5
    assert b.master_down_interval == pytest.approx(3 * 0.5 + skew(100, 0.5))
    last = max(t for t, _ in link.actions("a", SendAdvertisement))
    link.crash("a")
    link.run_until(30.0)
    assert link.changes("b")[-1][0] == pytest.approx(last + 1.5 + skew(100, 0.5))
    # as master it advertises at its own interval again
    sends = [t for t, _ in link.actions("b", SendAdvertisement)]
    assert sends[1] - sends[0] == pytest.approx(2.0)


def test_v2_interval_mismatch_and_bad_password_are_counted_drops() -> None:
    b = VrrpInstance(params(B_ADDR, 100, version=2, auth_pass="secret"), 0.0)
    b.start(0.0)
    deadline = b.get_timer()
    out = b.receive(Advertisement(2, 51, 200, (VIP, GW), 2, "secret"), A_ADDR, 1.0)
    assert out == [AdvertDropped("interval", A_ADDR)]
    out = b.receive(Advertisement(2, 51, 200, (VIP, GW), 1, "wrong"), A_ADDR, 1.0)
    assert out == [AdvertDropped("auth", A_ADDR)]
    assert b.receive(Advertisement(3, 51, 200, (VIP, GW), 100), A_ADDR, 1.0) == [AdvertDropped("version", A_ADDR)]
    assert b.receive(Advertisement(2, 52, 200, (VIP, GW), 1, "secret"), A_ADDR, 1.0)[0].reason == "router_id"
    assert b.get_timer() == deadline  # none of them reset the down timer
    assert dict(b.counters.dropped) == {"interval": 1, "auth": 1, "version": 1, "router_id": 1}
    b.receive(Advertisement(2, 51, 200, (VIP, GW), 1, "secret"), A_ADDR, 1.0)
    assert b.get_timer() == pytest.approx(1.0 + 3 + (256 - 100) / 256)  # v2 skew is not scaled


def test_v2_pair_over_the_wire() -> None:
    link = pair(a_kw={"version": 2, "auth_pass": "secret"}, b_kw={"version": 2, "auth_pass": "secret"})
    link.start("a")
    link.start("b")
    link.run_until(10.0)
    assert link.state("a") == MASTER and link.state("b") == BACKUP
    assert not link.nodes["b"].inst.counters.dropped


def test_malformed_bytes_are_counted_drops() -> None:
    b = VrrpInstance(params(B_ADDR, 100), 0.0)
    b.start(0.0)
    out = b.receive_bytes(b"\x31\x33", src=A_ADDR, dst=wire.MULTICAST_V4, ttl=255, now=1.0)
    assert out == [AdvertDropped("short", A_ADDR)]
    good = wire.encode(Advertisement(3, 51, 200, (VIP,), 100), src=A_ADDR, dst=wire.MULTICAST_V4)
    out = b.receive_bytes(good, src=A_ADDR, dst=wire.MULTICAST_V4, ttl=64, now=1.0)
    assert out == [AdvertDropped("ttl", A_ADDR)]
    assert b.receive_bytes(good, src=B_ADDR, dst=wire.MULTICAST_V4, ttl=255, now=1.0)[0].reason == "checksum"
    assert dict(b.counters.dropped) == {"short": 1, "ttl": 1, "checksum": 1}


# ------------------------------------------------------------------------------ tracking, fault


def test_lowered_priority_is_advertised_at_once_and_backup_preempts() -> None:
    link = elected(a_prio=200, b_prio=150)
    link.run_until(10.5)
    out = link.do("a", "set_priority", 100)
    assert out == [SendAdvertisement(Advertisement(3, 51, 100, (VIP, GW), 100))]
    # b ignores the now-lower advert; its timer runs from a's last advert at priority 200
    last_high = max(t for t, a in link.actions("a", SendAdvertisement) if a.adv.priority == 200)
    link.run_until(20.0)
    assert link.changes("b")[-1] == (pytest.approx(last_high + 3 + skew(150)), "b", MASTER, "master_down")
    assert link.state("a") == BACKUP


def test_fault_resigns_and_recover_comes_back_as_backup() -> None:
    link = elected()
    link.run_until(10.5)
    out = link.do("a", "fault")
    assert [type(a) for a in out] == [SendAdvertisement, ReleaseAddresses, StateChanged]
    assert out[0].adv.priority == 0 and link.state("a") == FAULT
    link.run_until(13.0)
    last = max(t for t, a in link.actions("a", SendAdvertisement) if t < 10.5)
    assert link.changes("b")[-1] == (pytest.approx(last + 1.1 + skew(100)), "b", MASTER, "master_down")
    # in FAULT it ignores adverts and has no timers
    assert link.nodes["a"].inst.get_timer() is None
    link.run_until(15.0)
    link.do("a", "recover")
    assert link.changes("a")[-1] == (15.0, "a", BACKUP, "interface_up")
    link.run_until(30.0)  # with preemption the higher priority takes back after its down interval
    assert link.changes("a")[-1] == (pytest.approx(15.0 + 3 + skew(200)), "a", MASTER, "master_down")
    assert link.state("b") == BACKUP


def test_fault_from_backup_is_quiet() -> None:
    link = elected()
    out = link.do("b", "fault")
    assert out == [StateChanged(BACKUP, FAULT, "interface_down"), ReleaseAddresses((VIP, GW), "stale")]
    assert link.do("b", "fault") == []


def test_garp_refresh_while_master() -> None:
    link = pair(a_kw={"garp_refresh": 4.0})
    link.start("a")
    link.run_until(20.0)
    became = link.changes("a")[-1][0]
    refreshes = [t for t, a in link.actions("a", AnnounceAddresses) if not a.burst]
    assert refreshes == pytest.approx([became + 4.0 * k for k in range(1, len(refreshes) + 1)])
    assert len(refreshes) == 4


def test_params_validated() -> None:
    with pytest.raises(ValueError):
        params(A_ADDR, 0)
    with pytest.raises(ValueError):
        params(A_ADDR, 100, router_id=0)


def test_start_in_fault_then_recover_starts_as_backup() -> None:
    inst = VrrpInstance(params(A_ADDR, 200), 0.0)
    assert inst.fault(0.0) == [StateChanged(INIT, FAULT, "interface_down"), ReleaseAddresses((VIP, GW), "stale")]
    assert inst.get_timer() is None
    assert inst.recover(2.0) == [StateChanged(FAULT, BACKUP, "interface_up"), ReleaseAddresses((VIP, GW), "stale")]
    assert inst.get_timer() == pytest.approx(2.0 + 3 + skew(200))


# ---------------------------------------------------------------------------------------- reload


def test_reload_changes_priority_and_interval_in_place_without_a_transition() -> None:
    link = elected()
    before = link.changes()
    a = link.nodes["a"].inst
    sent = len(link.actions("a", SendAdvertisement))
    new = params(A_ADDR, 150, advert_interval=0.5)
    actions = link.do("a", "reconfigure", new, 150)
    assert link.changes() == before  # no state change
    assert [type(x) for x in actions] == [SendAdvertisement]  # the new settings go out at once
    assert len(link.actions("a", SendAdvertisement)) == sent + 1
    assert a.params.advert_interval == 0.5 and a.priority == 150
    t0 = link.now
    link.run_until(t0 + 2.0)
    sends = [t for t, _ in link.actions("a", SendAdvertisement, since=t0 + 0.01)]
    assert sends[:2] == pytest.approx([t0 + 0.5, t0 + 1.0])  # the new interval
    assert link.nodes["b"].inst.master_adver_interval == 0.5  # v3: the backup adopted it
    assert link.state("a") == MASTER and link.state("b") == BACKUP


def test_reload_lowering_priority_below_the_backup_lets_it_preempt() -> None:
    link = elected()
    link.do("a", "reconfigure", params(A_ADDR, 50), 50)
    link.run_until(link.now + 5)
    assert link.state("a") == BACKUP and link.state("b") == MASTER


def test_reload_cannot_change_identity_in_place() -> None:
    link = elected()
    with pytest.raises(ValueError, match="cannot change router_id in place"):
        link.nodes["a"].inst.reconfigure(params(A_ADDR, 200, router_id=52), 200, link.now)
    assert link.nodes["a"].inst.params.router_id == 51
