"""keepalived's vrrp_sync_group (havs.core.vrrp_group) with the VRRP core: two directors, each with a group of
an IPv4 and an IPv6 instance, over a fake segment with a scripted clock (adverts encoded and decoded, no
sleeps). The group core alone first, then the pair converging, failing over and faulting together."""

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
    RESIGNING,
    Action,
    Ignored,
    SendAdvertisement,
    StateChanged,
    TakeAddresses,
    VrrpInstance,
    VrrpParams,
    WantMaster,
)
from havs.core.vrrp_group import Force, GroupAction, GroupChanged, VrrpGroup, derive

V4 = {"d1": ipaddress.IPv4Address("192.168.72.131"), "d2": ipaddress.IPv4Address("192.168.72.132")}
V6 = {"d1": ipaddress.IPv6Address("fe80::131"), "d2": ipaddress.IPv6Address("fe80::132")}
VIP4 = (ipaddress.IPv4Address("192.168.0.108"), ipaddress.IPv4Address("192.168.72.130"))
VIP6 = (ipaddress.IPv6Address("fd00::108"), ipaddress.IPv6Address("fd72::130"))


# ---------------------------------------------------------------------------------- the group core


def test_derived_state() -> None:
    assert derive([MASTER, RESIGNING]) == MASTER
    assert derive([MASTER, FAULT]) == FAULT
    assert derive([BACKUP, BACKUP]) == BACKUP
    assert derive([INIT, INIT]) == INIT
    assert derive([MASTER, BACKUP]) is None and derive([BACKUP, INIT]) is None


def started(states: dict[str, str]) -> VrrpGroup:
    g = VrrpGroup("G", list(states), 0.0)
    for m, s in states.items():
        g.state_changed(m, INIT, s, 0.0, "start")
    return g


def test_a_member_fault_faults_every_member_and_recovery_waits_for_the_last() -> None:
    g = started({"v4": MASTER, "v6": MASTER})
    assert g.state == MASTER
    assert g.fault("v6", True, 1.0, "interface_down") == [Force("v4", FAULT), Force("v6", FAULT, "interface_down")]
    for m in ("v4", "v6"):
        g.state_changed(m, MASTER, FAULT, 1.0, "sync_group")
    assert g.state == FAULT and g.since == 1.0
    assert g.fault("v4", True, 2.0, "interface_down") == []  # already FAULT
    assert g.fault("v6", False, 3.0, "interface_up") == []  # v4 is still faulty
    assert g.fault("v4", False, 4.0, "interface_up") == [Force("v4", BACKUP, "interface_up"), Force("v6", BACKUP)]


def test_master_only_when_every_member_wants_it_or_one_is_master() -> None:
    g = started({"v4": BACKUP, "v6": BACKUP})
    assert g.want_master("v4", True, 1.0) == []  # v6 still hears its master: prefer BACKUP to thrashing
    assert g.want_master("v4", False, 1.1) == []  # v4 heard its master again
    assert g.want_master("v6", True, 1.2) == []
    assert g.want_master("v4", True, 1.3) == [Force("v4", MASTER), Force("v6", MASTER)]
    g = started({"v4": MASTER, "v6": BACKUP})
    assert g.want_master("v6", True, 1.0) == [Force("v6", MASTER)]


def test_moves_spread_and_the_group_changes_once() -> None:
    g = started({"a": BACKUP, "b": BACKUP, "c": BACKUP})
    assert g.state_changed("a", BACKUP, MASTER, 1.0, "owner") == [Force("b", MASTER), Force("c", MASTER)]
    assert g.state_changed("b", BACKUP, MASTER, 1.0, "sync_group") == [Force("c", MASTER)]
    assert g.state_changed("c", BACKUP, MASTER, 1.0, "sync_group") == [GroupChanged("G", BACKUP, MASTER, "owner")]
    assert g.state_changed("b", MASTER, BACKUP, 2.0, "higher_priority") == [Force("a", BACKUP), Force("c", BACKUP)]
    g.state_changed("a", MASTER, BACKUP, 2.0, "sync_group")
    out = g.state_changed("c", MASTER, BACKUP, 2.0, "sync_group")
    assert out == [GroupChanged("G", MASTER, BACKUP, "higher_priority")]  # the cause, not the follower's
    # a graceful stop: RESIGNING still holds the addresses; the group says stop once all are INIT
    assert g.state_changed("a", BACKUP, INIT, 3.0, "shutdown") == []
    g.state_changed("b", BACKUP, INIT, 3.0, "shutdown")
    assert g.state_changed("c", BACKUP, INIT, 3.0, "shutdown") == [GroupChanged("G", BACKUP, INIT, "shutdown")]


def test_a_rebuilt_group_keeps_its_members_states() -> None:
    g = VrrpGroup("G", ["a", "b"], 5.0, states={"a": MASTER, "b": MASTER}, faulty=["zz"])
    assert g.state == MASTER and g.faulty == set()


# ------------------------------------------------------------------------- two directors, the core


@dataclass
class Member:
    director: str
    name: str
    inst: VrrpInstance


@dataclass
class Lab:
    """Directors d1 and d2, each with a sync group G of an IPv4 instance (router 51) and an IPv6 one (router 61).
    Adverts reach the other director's members of the same family (each decodes and filters by router id)."""

    now: float = 0.0
    members: dict[tuple[str, str], Member] = field(default_factory=dict)
    groups: dict[str, VrrpGroup] = field(default_factory=dict)
    crashed: set[str] = field(default_factory=set)
    log: list[tuple[float, str, str, Action | GroupAction]] = field(default_factory=list)

    def add(self, director: str, prio: dict[str, int], group: bool = True, interval: float = 1.0) -> None:
        for name, addr, router_id, vips in (("v4", V4[director], 51, VIP4), ("v6", V6[director], 61, VIP6)):
            p = VrrpParams(router_id=router_id, priority=prio[name], advert_interval=interval, primary_address=addr,
                           addresses=vips, sync_group=group)
            self.members[director, name] = Member(director, name, VrrpInstance(p, self.now))
        if group:
            self.groups[director] = VrrpGroup("G", ["v4", "v6"], self.now)

    def start(self, director: str) -> None:
        for (d, _), m in list(self.members.items()):
            if d == director:
                self._dispatch(m, m.inst.start(self.now))

    def state(self, director: str, name: str) -> str:
        return str(self.members[director, name].inst.state)

    def states(self, director: str) -> tuple[str, str]:
        return self.state(director, "v4"), self.state(director, "v6")

    def link(self, director: str, name: str, up: bool) -> None:
        m = self.members[director, name]
        g = self.groups.get(director)
        if g is None:
            self._dispatch(m, m.inst.recover(self.now) if up else m.inst.fault(self.now))
        else:
            self._apply(director, g.fault(name, not up, self.now, "interface_up" if up else "interface_down"))

    def run_until(self, t: float) -> None:
        while True:
            due = [(m.inst.get_timer(), key) for key, m in self.members.items()
                   if m.director not in self.crashed and m.inst.get_timer() is not None]
            if not due or min(due)[0] > t:
                break
            when, key = min(due)
            self.now = when
            self._dispatch(self.members[key], self.members[key].inst.handle_timer(when))
        self.now = t

    def _apply(self, director: str, actions: list[GroupAction]) -> None:
        for a in actions:
            self.log.append((self.now, director, "G", a))
            if isinstance(a, Force):
                m = self.members[director, a.instance]
                if m.inst.state != a.to:
                    self._dispatch(m, m.inst.force(a.to, self.now, a.reason))

    def _dispatch(self, m: Member, actions: list[Action]) -> None:
        g = self.groups.get(m.director)
        for a in actions:
            self.log.append((self.now, m.director, m.name, a))
            if isinstance(a, SendAdvertisement) and m.director not in self.crashed:
                src = m.inst.params.primary_address
                dst = wire.MULTICAST_V4 if src.version == 4 else wire.MULTICAST_V6
                payload = wire.encode(a.adv, src=src, dst=dst)
                for other in list(self.members.values()):
                    if other.director != m.director and other.director not in self.crashed \
                            and other.inst.params.primary_address.version == src.version:
                        self._dispatch(other, other.inst.receive_bytes(payload, src=src, dst=dst, ttl=255,
                                                                       now=self.now))
            elif isinstance(a, StateChanged) and g is not None:
                self._apply(m.director, g.state_changed(m.name, a.from_, a.to, self.now, a.reason))
            elif isinstance(a, WantMaster) and g is not None:
                self._apply(m.director, g.want_master(m.name, a.want, self.now))

    def changes(self, director: str) -> list[tuple[float, str, str, str]]:
        return [(t, n, a.to, a.reason) for t, d, n, a in self.log if d == director and isinstance(a, StateChanged)]

    def group_changes(self, director: str) -> list[tuple[str, str]]:
        return [(a.to, a.reason) for _, d, _, a in self.log if d == director and isinstance(a, GroupChanged)]


def pair(d1: dict[str, int], d2: dict[str, int], group: bool = True) -> Lab:
    lab = Lab()
    lab.add("d1", d1, group)
    lab.add("d2", d2, group)
    lab.start("d1")
    lab.start("d2")
    return lab


def test_two_groups_converge_with_each_family_on_one_director() -> None:
    lab = pair({"v4": 200, "v6": 200}, {"v4": 100, "v6": 100})
    lab.run_until(10.0)
    assert lab.states("d1") == (MASTER, MASTER) and lab.states("d2") == (BACKUP, BACKUP)
    assert lab.group_changes("d1") == [(BACKUP, "start"), (MASTER, "master_down")]
    assert lab.group_changes("d2") == [(BACKUP, "start")]
    # both took over at once, when the later of the two Master_Down timers ran out (3 + skew(200) s)
    takeovers = [(t, n) for t, n, to, _ in lab.changes("d1") if to == MASTER]
    assert sorted(n for _, n in takeovers) == ["v4", "v6"]
    assert [t for t, _ in takeovers] == [pytest.approx(3 + 56 / 256)] * 2
    assert not [a for _, d, _, a in lab.log if isinstance(a, Ignored)]


def test_crash_of_the_master_moves_both_families_together() -> None:
    lab = pair({"v4": 200, "v6": 200}, {"v4": 100, "v6": 100})
    lab.run_until(10.0)
    lab.crashed.add("d1")
    lab.run_until(20.0)
    assert lab.states("d2") == (MASTER, MASTER)
    up = [(t, n, reason) for t, n, to, reason in lab.changes("d2") if to == MASTER]
    assert {n for _, n, _ in up} == {"v4", "v6"} and {r for _, _, r in up} == {"master_down"}
    assert up[0][0] == up[1][0]  # one instant: the group moved as one
    took = [(n, a.addresses) for t, d, n, a in lab.log if d == "d2" and isinstance(a, TakeAddresses)]
    assert sorted(took) == [("v4", VIP4), ("v6", VIP6)]


def test_a_member_link_fault_faults_the_group_and_the_peer_takes_both() -> None:
    lab = pair({"v4": 200, "v6": 200}, {"v4": 100, "v6": 100})
    lab.run_until(10.0)
    lab.link("d1", "v6", up=False)  # the IPv6 instance's link: the IPv4 one goes too
    assert lab.states("d1") == (FAULT, FAULT)
    assert lab.group_changes("d1")[-1] == (FAULT, "interface_down")
    faults = {n: reason for t, n, to, reason in lab.changes("d1") if to == FAULT}
    assert faults == {"v6": "interface_down", "v4": "sync_group"}
    # both resigned (priority 0): d2 takes both over within the skew after d1's next advert was due
    lab.run_until(12.0)
    assert lab.states("d2") == (MASTER, MASTER)
    lab.link("d1", "v6", up=True)
    assert lab.states("d1") == (BACKUP, BACKUP)
    lab.run_until(30.0)  # d1 has the higher priority: it preempts, both members together
    assert lab.states("d1") == (MASTER, MASTER) and lab.states("d2") == (BACKUP, BACKUP)
    assert lab.group_changes("d2")[-2:] == [(MASTER, "master_down"), (BACKUP, "higher_priority")]
    assert lab.group_changes("d1")[-2:] == [(BACKUP, "interface_up"), (MASTER, "master_down")]


def test_a_member_stepping_down_takes_the_other_down_with_it() -> None:
    lab = pair({"v4": 100, "v6": 100}, {"v4": 90, "v6": 90})
    lab.run_until(10.0)
    assert lab.states("d1") == (MASTER, MASTER)
    # d2's IPv4 instance gets a higher priority (a reload): it preempts; d2's group needs both members to
    # want MASTER, so v4 alone waits ...
    v4 = lab.members["d2", "v4"].inst
    lab._dispatch(lab.members["d2", "v4"], v4.set_priority(250, lab.now))
    lab.run_until(20.0)
    assert lab.states("d2") == (BACKUP, BACKUP) and lab.states("d1") == (MASTER, MASTER)
    assert v4.want_master  # its master is lower: it wants, the group holds it (v6 still follows d1)
    # ... until v6 wants too
    v6 = lab.members["d2", "v6"].inst
    lab._dispatch(lab.members["d2", "v6"], v6.set_priority(250, lab.now))
    lab.run_until(30.0)
    assert lab.states("d2") == (MASTER, MASTER) and lab.states("d1") == (BACKUP, BACKUP)
    downs = {n: reason for t, n, to, reason in lab.changes("d1") if to == BACKUP and t > 20.0}
    assert set(downs.values()) <= {"higher_priority", "sync_group"} and set(downs) == {"v4", "v6"}


def test_a_stepping_down_member_forces_its_partner_at_once() -> None:
    lab = pair({"v4": 200, "v6": 200}, {"v4": 100, "v6": 100})
    lab.run_until(10.0)
    # a higher-priority v4 advert reaches d1 (its peer's v4 went up): v4 steps down, v6 follows the same instant
    d1v4 = lab.members["d1", "v4"]
    adv = wire.Advertisement(3, 51, 250, VIP4, 100)
    lab._dispatch(d1v4, d1v4.inst.receive(adv, V4["d2"], lab.now))
    assert lab.states("d1") == (BACKUP, BACKUP)
    assert [(n, to, r) for t, n, to, r in lab.changes("d1") if t == lab.now] == [
        ("v4", BACKUP, "higher_priority"), ("v6", BACKUP, "sync_group")]


def test_without_a_group_the_instances_are_independent() -> None:
    lab = pair({"v4": 200, "v6": 100}, {"v4": 100, "v6": 200}, group=False)
    lab.run_until(10.0)
    assert lab.states("d1") == (MASTER, BACKUP) and lab.states("d2") == (BACKUP, MASTER)  # active/active
    lab.link("d1", "v6", up=False)
    assert lab.states("d1") == (MASTER, FAULT)


def test_a_member_wants_master_keeps_listening_and_stops_wanting_when_it_hears_a_master() -> None:
    p = VrrpParams(router_id=51, priority=100, advert_interval=1.0, primary_address=V4["d2"], addresses=VIP4,
                   sync_group=True)
    inst = VrrpInstance(p, 0.0)
    inst.start(0.0)
    down = 3 + 156 / 256
    assert inst.handle_timer(down) == [WantMaster(True)]
    assert inst.state == BACKUP and inst.timers.master_down == pytest.approx(2 * down)  # asks again if still silent
    assert inst.snapshot()["want_master"] is True
    assert inst.receive(wire.Advertisement(3, 51, 200, VIP4, 100), V4["d1"], 4.0) == [WantMaster(False)]
    assert inst.force(MASTER, 4.1)[0:1] == [StateChanged(BACKUP, MASTER, "sync_group")]
    assert inst.force(MASTER, 4.2) == []  # already there
    out = inst.force(BACKUP, 4.3)
    assert StateChanged(MASTER, BACKUP, "sync_group") in out and inst.state == BACKUP


def test_forces_that_make_no_sense_are_counted_no_ops() -> None:
    p = VrrpParams(router_id=51, priority=100, advert_interval=1.0, primary_address=V4["d2"], addresses=VIP4)
    inst = VrrpInstance(p, 0.0)
    assert inst.force(MASTER, 0.0) == [Ignored(INIT, "sync_master")]  # not started
    with pytest.raises(ValueError):
        inst.force(INIT, 0.0)


def test_a_group_made_with_a_faulty_member_faults_the_running_others() -> None:
    # a reload groups a MASTER with an instance whose own link is down: the group is FAULT, so both are
    g = VrrpGroup("G", ["A", "B"], 1.0, {"A": MASTER, "B": FAULT}, faulty=["B"])
    assert g.state == FAULT
    assert g.settle() == [Force("A", FAULT)]
    assert VrrpGroup("G", ["A", "B"], 1.0, {"A": MASTER, "B": MASTER}).settle() == []
    assert VrrpGroup("G", ["A", "B"], 1.0, {"A": INIT, "B": FAULT}, faulty=["B"]).settle() == []


def test_an_instance_that_is_no_member_cannot_fault_or_move_the_group() -> None:
    # a removed member's shell still polls its links while it hands over: its fault is not the group's
    g = VrrpGroup("G", ["A", "B"], 1.0, {"A": MASTER, "B": MASTER})
    assert g.fault("C", True, 2.0, "interface_down") == [] and not g.any_faulty
    assert g.want_master("C", True, 2.0) == [] and g.wants == set()
    assert g.fault("A", True, 2.0, "interface_down") == [Force("A", FAULT, "interface_down"), Force("B", FAULT)]
