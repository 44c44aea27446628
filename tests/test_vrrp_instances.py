"""Several VRRP instances in one child (havs.vrrp.instances), two directors in one loop over a fake segment:
real shells, cores, timers and the demultiplexer; the raw socket, rtnetlink and GARP are fakes (no root).
Adverts every 50 ms, so each test takes a second or two of real time; bounds are generous."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import socket
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from havs.core.config import parse_config
from havs.core.model import NodeView
from havs.edge.links import LinkEvent
from havs.edge.vrrp_socket import Received
from havs.vrrp import instances as instances_mod
from havs.vrrp import shell as shell_mod
from havs.vrrp.instances import BoundLog, Instances, rt_priority
from tests.fakes import ListLog

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
SRC = {("d1", 4): ipaddress.ip_address("10.0.72.1"), ("d2", 4): ipaddress.ip_address("10.0.72.2"),
       ("d1", 6): ipaddress.ip_address("fe80::1"), ("d2", 6): ipaddress.ip_address("fe80::2")}
INTERVAL = 0.05

ACTIVE_ACTIVE = """\
nodes:
  d1: {priority: 150, interfaces: {hb: eth1, client: eth0}}
  d2: {priority: 100, interfaces: {hb: eth1, client: eth0}}
vrrp:
  - name: A
    router_id: 51
    priority: {d1: 200, d2: 100}
    advert_interval: 0.05
    interface: hb
    addresses: [{address: 10.0.0.100/24, interface: client}]
    garp: {burst: 1, refresh: 0}
  - name: B
    router_id: 52
    priority: {d1: 100, d2: 200}
    advert_interval: 0.05
    interface: hb
    rt_priority: 7
    addresses: [{address: 10.0.0.101/24, interface: client}]
    garp: {burst: 1, refresh: 0}
"""

DUAL_STACK = """\
nodes:
  d1: {priority: 200, interfaces: {hb: eth1, client: eth0, six: eth6}}
  d2: {priority: 100, interfaces: {hb: eth1, client: eth0, six: eth6}}
vrrp:
  - name: V4
    router_id: 51
    advert_interval: 0.05
    interface: hb
    addresses: [{address: 10.0.0.100/24, interface: client}]
    garp: {burst: 1, refresh: 0}
  - name: V6
    router_id: 61
    advert_interval: 0.05
    interface: hb
    addresses: [{address: 'fd00::100/64', interface: six}]
    garp: {burst: 1, refresh: 0}
vrrp_sync_groups:
  - name: G
    instances: [V4, V6]
"""


class Segment:
    """One broadcast domain: what a socket sends, every other open socket of its family receives."""

    def __init__(self) -> None:
        self.sockets: list[FakeSocket] = []
        self.dead: set[str] = set()  # directors that crashed: they neither send nor receive
        self.sent: list[tuple[float, str, int]] = []  # (time, director, router id)
        self.broken: set[str] = set()  # interfaces whose raw socket cannot be opened
        self.opened: list[Any] = []  # every shell opened, in order
        self.closed: list[Any] = []  # every shell closed


class FakeSocket:
    segment: Segment

    def __init__(self, ifname: str, src: IP, *, peers: Any = (), group: Any = None) -> None:
        if ifname in self.segment.broken:
            raise OSError(1, f"cannot open a VRRP socket on {ifname}")
        self.ifname, self.src, self.peers = ifname, src, tuple(peers)
        self.director = next(d for (d, _), a in SRC.items() if a == src)
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self.inbox: list[Received] = []
        self.segment.sockets.append(self)

    unicast = False

    @property
    def destinations(self) -> tuple[IP, ...]:
        return (ipaddress.ip_address("224.0.0.18" if self.src.version == 4 else "ff02::12"),)

    def fileno(self) -> int:
        return self._r.fileno()

    def send(self, payload: bytes, dst: IP) -> None:
        seg = self.segment
        if self.director in seg.dead:
            return
        seg.sent.append((time.monotonic(), self.director, payload[1]))
        for other in seg.sockets:
            if other is not self and other.src.version == self.src.version and other.director not in seg.dead:
                other.inbox.append(Received(payload, self.src, dst, 255))
                other._w.send(b"x")

    def receive(self, limit: int = 1 << 30) -> list[Received]:
        with contextlib.suppress(BlockingIOError):
            self._r.recv(4096)
        out, self.inbox = self.inbox[:limit], self.inbox[limit:]
        if self.inbox:
            self._w.send(b"x")
        return out

    def close(self) -> None:
        if self in self.segment.sockets:
            self.segment.sockets.remove(self)
        self._r.close()
        self._w.close()


class FakeAddrs:
    held: ClassVar[dict[str, set[str]]] = {}  # director → "address dev ifname"
    slow: ClassVar[set[str]] = set()  # addresses whose add takes a second (a stuck netlink)

    def __init__(self) -> None:
        self.director = ""
        self.listed: list[str] = []  # interfaces whose addresses were read

    async def open(self) -> FakeAddrs:
        return self

    async def close(self) -> None:
        pass

    async def ensure(self, ifname: str, a: Any) -> None:
        if str(a) in self.slow:
            await asyncio.sleep(1.0)
        self.held.setdefault(self.director, set()).add(f"{a} dev {ifname}")

    async def list(self, ifname: str, family: int) -> list[tuple[Any, bool]]:
        self.listed.append(ifname)
        return [(ipaddress.ip_interface(h.split(" dev ")[0]), True) for h in self.held.get(self.director, set())
                if h.endswith(f" dev {ifname}")]

    async def remove(self, ifname: str, a: Any) -> bool:
        there = f"{a} dev {ifname}" in self.held.get(self.director, set())
        self.held.get(self.director, set()).discard(f"{a} dev {ifname}")
        return there

    async def link_up(self, ifname: str) -> bool:
        return not ifname.startswith("nosuch")  # as the real one: a missing interface is down


class FakeSender:
    def announce(self, ifname: str, addresses: Any) -> int:
        return 1

    def close(self) -> None:
        pass


@pytest.fixture
def segment(monkeypatch: pytest.MonkeyPatch) -> Iterator[Segment]:
    seg = Segment()
    FakeSocket.segment = seg
    FakeAddrs.held = {}
    FakeAddrs.slow = set()

    async def fake_open(self: shell_mod.VrrpShell) -> None:
        self.src = SRC[self.view.name, self.family]
        self._addrs.director = self.view.name  # type: ignore[attr-defined]
        self._down = {i for i in self.track if i.startswith("nosuch")}  # a missing interface is down (link_up)
        seg.opened.append(self)

    real_close = shell_mod.VrrpShell.close

    async def fake_close(self: shell_mod.VrrpShell) -> None:
        seg.closed.append(self)
        await real_close(self)

    monkeypatch.setattr(instances_mod, "VrrpSocket", FakeSocket)
    monkeypatch.setattr(instances_mod, "interface_exists", lambda name: not name.startswith("nosuch"))
    monkeypatch.setattr(shell_mod, "Addresses", FakeAddrs)
    monkeypatch.setattr(shell_mod.VrrpShell, "open", fake_open)
    monkeypatch.setattr(shell_mod.VrrpShell, "close", fake_close)
    monkeypatch.setattr("havs.vrrp.announcer.Garp", FakeSender)
    monkeypatch.setattr("havs.vrrp.announcer.Ndisc", FakeSender)
    yield seg


def view(text: str, node: str) -> NodeView:
    cfg = parse_config(text, "havs.yaml")
    return NodeView(name=node, node=cfg.nodes[node], config=cfg)


class Director:
    def __init__(self, text: str, node: str) -> None:
        self.log = ListLog()
        self.changes: list[tuple[str, str, str, str, str]] = []
        self.vrrp = Instances(view(text, node), log=self.log, on_state=lambda *a: self.changes.append(a))

    def states(self) -> dict[str, str]:
        return {i["instance"]: i["state"] for i in self.vrrp.snapshot()["instances"]}


async def wait_for(what: str, check: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.01)


async def pair(text: str) -> tuple[Director, Director]:
    d1, d2 = Director(text, "d1"), Director(text, "d2")
    await d1.vrrp.start()
    await d2.vrrp.start()
    return d1, d2


async def test_active_active_share_one_socket_and_a_crash_leaves_both_on_the_survivor(segment: Segment) -> None:
    d1, d2 = await pair(ACTIVE_ACTIVE)
    try:
        assert len(d1.vrrp._demux) == 1 and len(segment.sockets) == 2  # one socket per director, not per instance
        await wait_for("A on d1, B on d2", lambda: d1.states() == {"A": "MASTER", "B": "BACKUP"}
                       and d2.states() == {"A": "BACKUP", "B": "MASTER"})
        await wait_for("addresses", lambda: FakeAddrs.held.get("d1") == {"10.0.0.100/24 dev eth0"}
                       and FakeAddrs.held.get("d2") == {"10.0.0.101/24 dev eth0"})
        snap = d1.vrrp.snapshot()
        assert [(i["instance"], i["group"], i["router_id"], i["priority"]) for i in snap["instances"]] == [
            ("A", None, 51, 200), ("B", None, 52, 100)]
        assert snap["groups"] == {} and "unmatched_router_id" not in snap["instances"][0]
        assert ("A", "BACKUP", "MASTER", "master_down", "") in d1.changes
        states = [kw for _, ev, kw in d1.log.events if ev == "vrrp.state"]
        assert {kw["instance"] for kw in states} == {"A", "B"} and all("group" not in kw for kw in states)
        segment.dead.add("d1")  # kill -9 of the director
        await wait_for("d2 holds both", lambda: d2.states() == {"A": "MASTER", "B": "MASTER"})
        await wait_for("both addresses on d2", lambda: FakeAddrs.held["d2"] == {
            "10.0.0.100/24 dev eth0", "10.0.0.101/24 dev eth0"})
    finally:
        await d2.vrrp.stop(graceful=False)
        await d1.vrrp.stop(graceful=False)
    assert segment.sockets == []


async def test_one_instances_stuck_address_change_does_not_delay_anothers_adverts(segment: Segment) -> None:
    FakeAddrs.slow = {"10.0.0.100/24"}  # A's takeover on d1 hangs in netlink for a second
    d1, d2 = await pair(ACTIVE_ACTIVE)
    try:
        await wait_for("B master on d2", lambda: d2.states()["B"] == "MASTER")
        await wait_for("A master on d1", lambda: d1.states()["A"] == "MASTER")
        t0 = time.monotonic()
        await asyncio.sleep(1.0)
        for director, rid in (("d1", 51), ("d2", 52)):
            sent = [t for t, d, r in segment.sent if d == director and r == rid and t >= t0]
            gaps = [b - a for a, b in itertools.pairwise(sent)]
            assert len(sent) >= 15 and max(gaps) < 3 * INTERVAL, (director, max(gaps))
        await wait_for("A's address, once its netlink is unstuck",
                       lambda: "10.0.0.100/24 dev eth0" in FakeAddrs.held.get("d1", set()))
    finally:
        await asyncio.gather(d1.vrrp.stop(graceful=False), d2.vrrp.stop(graceful=False))


async def test_sync_group_a_members_link_fault_moves_both_families(segment: Segment) -> None:
    d1, d2 = await pair(DUAL_STACK)
    try:
        assert len(d1.vrrp._demux) == 2  # one socket per family
        await wait_for("d1 master of both", lambda: d1.states() == {"V4": "MASTER", "V6": "MASTER"}
                       and d2.states() == {"V4": "BACKUP", "V6": "BACKUP"})
        assert d1.vrrp.snapshot()["groups"] == {"G": "MASTER"}
        assert [i["group"] for i in d1.vrrp.snapshot()["instances"]] == ["G", "G"]
        d1.vrrp._on_link(LinkEvent("eth6", 6, up=False))  # the IPv6 instance's link
        assert d1.states() == {"V4": "FAULT", "V6": "FAULT"} and d1.vrrp.snapshot()["groups"] == {"G": "FAULT"}
        await wait_for("d2 takes both", lambda: d2.states() == {"V4": "MASTER", "V6": "MASTER"})
        assert ("V6", "MASTER", "FAULT", "interface_down", "G") in d1.changes
        assert ("V4", "MASTER", "FAULT", "sync_group", "G") in d1.changes
        groups = [kw for _, ev, kw in d1.log.events if ev == "vrrp.group"]
        assert groups[-1] == {"group": "G", "from_": "MASTER", "to": "FAULT", "reason": "interface_down",
                              "instances": ["V4", "V6"]}
        states = [kw for _, ev, kw in d1.log.events if ev == "vrrp.state"]
        assert all(kw["group"] == "G" for kw in states)
        d1.vrrp._on_link(LinkEvent("eth6", 6, up=True))
        assert d1.states() == {"V4": "BACKUP", "V6": "BACKUP"}
        await wait_for("d1 preempts with both", lambda: d1.states() == {"V4": "MASTER", "V6": "MASTER"}
                       and d2.states() == {"V4": "BACKUP", "V6": "BACKUP"})
        # a lost quorum on the IPv4 instance's services lowers the whole group: both move to d2
        d1.vrrp.set_priority_decrement({"V4": 150})
        assert [i["priority"] for i in d1.vrrp.snapshot()["instances"]] == [50, 50]
        await wait_for("d2 takes both again", lambda: d2.states() == {"V4": "MASTER", "V6": "MASTER"}
                       and d1.states() == {"V4": "BACKUP", "V6": "BACKUP"})
    finally:
        await asyncio.gather(d1.vrrp.stop(graceful=True), d2.vrrp.stop(graceful=True))
    assert d2.vrrp.snapshot()["groups"] == {"G": "INIT"}


async def test_reload_by_name_leaves_the_unchanged_alone(segment: Segment) -> None:
    d1, d2 = await pair(ACTIVE_ACTIVE)
    try:
        await wait_for("converged", lambda: d1.states() == {"A": "MASTER", "B": "BACKUP"}
                       and d2.states() == {"A": "BACKUP", "B": "MASTER"})
        await wait_for("addresses", lambda: "10.0.0.101/24 dev eth0" in FakeAddrs.held.get("d2", set()))
        a_core = d2.vrrp.shells["A"].inst
        b_since = d2.vrrp.snapshot()["instances"][1]["since"]
        head, a, b = ACTIVE_ACTIVE.split("  - name: ")
        c = """C
    router_id: 53
    advert_interval: 0.05
    interface: hb
    addresses: [{address: 10.0.0.102/24, interface: client}]
"""
        a = a.replace("A\n", "A\n    preempt_delay: 1\n", 1)
        b = b.replace("priority: {d1: 100, d2: 200}", "priority: {d1: 100, d2: 210}")
        text = head + "  - name: " + a + "  - name: " + b + "  - name: " + c
        assert await d2.vrrp.update(view(text, "d2"))
        assert d2.vrrp.shells["A"].inst is a_core  # reconfigured in place, not restarted
        snap = {i["instance"]: i for i in d2.vrrp.snapshot()["instances"]}
        assert list(snap) == ["A", "B", "C"] and snap["B"]["since"] == b_since and snap["B"]["priority"] == 210
        assert snap["B"]["state"] == "MASTER"
        # B removed: it hands over and releases its address; A and C keep going
        assert await d2.vrrp.update(view(head + "  - name: " + a + "  - name: " + c, "d2"))
        assert [i["instance"] for i in d2.vrrp.snapshot()["instances"]] == ["A", "C"]
        await wait_for("B released on d2", lambda: "10.0.0.101/24 dev eth0" not in FakeAddrs.held["d2"])
        assert d2.vrrp.shells["A"].inst is a_core
    finally:
        await asyncio.gather(d1.vrrp.stop(graceful=False), d2.vrrp.stop(graceful=False))


async def test_a_reload_naming_a_missing_heartbeat_interface_changes_nothing(segment: Segment) -> None:
    d = Director(ACTIVE_ACTIVE, "d1")
    await d.vrrp.start()
    try:
        text = ACTIVE_ACTIVE.replace("client: eth0}", "client: eth0, other: nosuch9}") + """\
  - name: C
    router_id: 53
    interface: other
    addresses: [{address: 10.0.0.102/24, interface: client}]
"""
        assert not await d.vrrp.update(view(text, "d1"))
        assert list(d.vrrp.shells) == ["A", "B"]
        (failed,) = d.log.named("vrrp.reload_failed")
        assert failed["instance"] == "C" and "nosuch9" in failed["error"]
    finally:
        await d.vrrp.stop(graceful=False)


async def test_adverts_for_router_ids_nobody_has_are_counted_once(segment: Segment) -> None:
    d = Director(ACTIVE_ACTIVE, "d1")
    await d.vrrp.start()
    try:
        sock = segment.sockets[0]
        stranger = FakeSocket("eth1", SRC["d2", 4])
        from havs.core import wire
        adv = wire.Advertisement(3, 99, 100, (ipaddress.IPv4Address("10.0.0.9"),), 5)
        stranger.send(wire.encode(adv, src=SRC["d2", 4], dst=wire.MULTICAST_V4), wire.MULTICAST_V4)
        await wait_for("counted", lambda: d.vrrp.snapshot()["instances"][0].get("unmatched_router_id") == 1)
        snap = d.vrrp.snapshot()["instances"]
        assert all(i["dropped"].get("router_id") is None for i in snap)  # no instance parsed it
        assert sock.inbox == []
        stranger.close()
    finally:
        await d.vrrp.stop(graceful=False)


def test_rt_priority_is_the_highest_any_instance_asks_for() -> None:
    assert rt_priority(view(ACTIVE_ACTIVE, "d1")) == 7


def test_bound_log_adds_the_instance_to_every_event() -> None:
    log = ListLog()
    bound = BoundLog(log, instance="A")
    bound.info("vrrp.state", to="MASTER")
    bound.fields = {"instance": "A", "group": "G"}
    bound.error("vrrp.effect_failed", error="x")
    assert log.events == [("info", "vrrp.state", {"instance": "A", "to": "MASTER"}),
                          ("error", "vrrp.effect_failed", {"instance": "A", "group": "G", "error": "x"})]


async def test_group_notify_hook_runs_on_the_groups_changes(segment: Segment, tmp_path: Any) -> None:
    out = tmp_path / "group"
    hook = f"echo $HAVS_GROUP $HAVS_STATE $HAVS_INSTANCE. >> {out}"
    text = DUAL_STACK + f"    notify: {{master: [/bin/sh, -c, '{hook}'], fault: [/bin/sh, -c, '{hook}']}}\n"
    d = Director(text, "d1")
    await d.vrrp.start()
    try:
        await wait_for("both MASTER alone", lambda: d.states() == {"V4": "MASTER", "V6": "MASTER"})
        d.vrrp._on_link(LinkEvent("eth1", 1, up=False))  # both members' heartbeat link
        await wait_for("hooks ran", lambda: out.exists() and len(out.read_text().splitlines()) == 2)
        assert out.read_text().splitlines() == ["G MASTER .", "G FAULT ."]  # once per group change, no instance
    finally:
        await d.vrrp.stop(graceful=False)


async def test_a_reload_that_groups_running_instances_keeps_their_states(segment: Segment) -> None:
    # members of a group prefer the same node (the model refuses A on d1 with B on d2 in one group)
    agreeing = ACTIVE_ACTIVE.replace("priority: {d1: 100, d2: 200}", "priority: {d1: 200, d2: 100}")
    d = Director(agreeing, "d1")
    await d.vrrp.start()
    try:
        await wait_for("both MASTER alone", lambda: d.states() == {"A": "MASTER", "B": "MASTER"})
        a_core = d.vrrp.shells["A"].inst
        assert await d.vrrp.update(view(agreeing + "vrrp_sync_groups: [{name: G, instances: [A, B]}]\n", "d1"))
        assert d.vrrp.shells["A"].inst is a_core and a_core is not None and a_core.params.sync_group
        assert d.vrrp.snapshot()["groups"] == {"G": "MASTER"} and d.states() == {"A": "MASTER", "B": "MASTER"}
        d.vrrp.shells["B"].on_link(LinkEvent("eth1", 1, up=False))  # B's alone: the group takes A along
        assert d.states() == {"A": "FAULT", "B": "FAULT"}
        assert d.changes[-2:] == [("A", "MASTER", "FAULT", "sync_group", "G"),
                                  ("B", "MASTER", "FAULT", "interface_down", "G")]
    finally:
        await d.vrrp.stop(graceful=False)


THREE = ACTIVE_ACTIVE + """\
  - name: D
    router_id: 54
    priority: {d1: 200, d2: 100}
    advert_interval: 0.05
    interface: hb
    addresses: [{address: 10.0.0.103/24, interface: client}]
    garp: {burst: 1, refresh: 0}
"""


async def test_a_reload_whose_added_instance_cannot_open_its_socket_leaves_every_instance_as_it_was(
        segment: Segment) -> None:
    d = Director(THREE.replace("hb: eth1, client: eth0}", "hb: eth1, client: eth0, hb2: eth7}"), "d1")
    await d.vrrp.start()
    try:
        await wait_for("all MASTER alone", lambda: d.states() == {"A": "MASTER", "B": "MASTER", "D": "MASTER"})
        held = {"10.0.0.100/24 dev eth0", "10.0.0.101/24 dev eth0", "10.0.0.103/24 dev eth0"}
        await wait_for("addresses", lambda: FakeAddrs.held.get("d1") == held)
        before = {n: (s, s.inst, s.inst.state if s.inst else None, s.inst.priority if s.inst else None)
                  for n, s in d.vrrp.shells.items()}
        sockets, demux, opened = list(segment.sockets), dict(d.vrrp._demux), len(segment.opened)
        segment.broken = {"eth7"}
        # in one reload: A's priority changes (in place), B gets a new router id (replaced), D is removed, the
        # group is new, and C is added on an interface whose raw socket cannot be opened (it comes last)
        text = (THREE.replace("hb: eth1, client: eth0}", "hb: eth1, client: eth0, hb2: eth7}")
                .replace("priority: {d1: 200, d2: 100}\n    advert_interval: 0.05\n    interface: hb\n    "
                         "addresses: [{address: 10.0.0.100", "priority: {d1: 180, d2: 100}\n    advert_interval: "
                         "0.05\n    interface: hb\n    addresses: [{address: 10.0.0.100")
                .replace("router_id: 52", "router_id: 55"))
        head, _d = text.split("  - name: D\n")
        text = head + """\
  - name: C
    router_id: 53
    advert_interval: 0.05
    interface: hb2
    addresses: [{address: 10.0.0.102/24, interface: client}]
vrrp_sync_groups: [{name: G, instances: [A, C]}]
"""
        new = view(text, "d1")
        assert new.config.instance("A").priority == {"d1": 180, "d2": 100}
        assert not await d.vrrp.update(new)
        (failed,) = d.log.named("vrrp.reload_failed")
        assert failed["instance"] == "C" and "eth7" in failed["error"]
        # B's new shell was opened first (config order), then closed again with C's
        assert [s.name for s in segment.opened[opened:]] == ["B", "C"]
        assert all(s in segment.closed for s in segment.opened[opened:])
        await asyncio.sleep(5 * INTERVAL)  # a removal's or a replacement's handover would have run by now
        after = {n: (s, s.inst, s.inst.state if s.inst else None, s.inst.priority if s.inst else None)
                 for n, s in d.vrrp.shells.items()}
        assert after == before and d.states() == {"A": "MASTER", "B": "MASTER", "D": "MASTER"}
        assert FakeAddrs.held["d1"] == held and segment.sockets == sockets and d.vrrp._demux == demux
        assert d.vrrp.view.config.instance("A").priority == {"d1": 200, "d2": 100}
        assert d.vrrp.snapshot()["groups"] == {} and d.vrrp._hooks == {} and not d.vrrp._background
        names = {ev for _, ev, _ in d.log.events}
        assert not names & {"vrrp.instance_removed", "vrrp.instance_replaced", "vrrp.reload", "vrrp.priority"}
        assert all(s not in segment.closed for s in d.vrrp.shells.values())
        # the same reload once the socket opens is applied whole
        segment.broken = set()
        assert await d.vrrp.update(new)
        assert list(d.vrrp.shells) == ["A", "B", "C"] and d.vrrp.shells["A"].inst is before["A"][1]
        await wait_for("D released, C started", lambda: "10.0.0.103/24 dev eth0" not in FakeAddrs.held["d1"]
                       and d.states().get("C") in ("BACKUP", "MASTER"))
    finally:
        await d.vrrp.stop(graceful=False)


async def test_a_missing_tracked_interface_is_fault_at_start_and_on_reload_alike(segment: Segment) -> None:
    tracked = ACTIVE_ACTIVE.replace("client: eth0}", "client: eth0, uplink: nosuch3}").replace(
        "    rt_priority: 7\n", "    rt_priority: 7\n    track_interfaces: [uplink]\n")
    d = Director(tracked, "d1")
    await d.vrrp.start()  # at start: B runs, in FAULT, and A is not held up
    try:
        await wait_for("A MASTER, B FAULT", lambda: d.states() == {"A": "MASTER", "B": "FAULT"})
        assert d.vrrp.snapshot()["instances"][1]["faulty_interfaces"] == ["nosuch3"]
    finally:
        await d.vrrp.stop(graceful=False)
    d = Director(ACTIVE_ACTIVE, "d1")
    await d.vrrp.start()
    try:
        await wait_for("both MASTER", lambda: d.states() == {"A": "MASTER", "B": "MASTER"})
        a_core = d.vrrp.shells["A"].inst
        # on reload: an added instance tracking it starts in FAULT; the running ones go on
        added = tracked.replace("    track_interfaces: [uplink]\n", "") + """\
  - name: C
    router_id: 53
    advert_interval: 0.05
    interface: hb
    track_interfaces: [uplink]
    addresses: [{address: 10.0.0.102/24, interface: client}]
"""
        assert await d.vrrp.update(view(added, "d1"))
        assert d.states() == {"A": "MASTER", "B": "MASTER", "C": "FAULT"} and d.vrrp.shells["A"].inst is a_core
        assert not d.log.named("vrrp.reload_failed")
        # in place: A tracking it now goes FAULT at its next tick, not at the next 5 s poll (links are watched)
        assert d.vrrp._links_open and shell_mod.LINK_POLL >= 5
        a_tracks = added.replace("    garp: {burst: 1, refresh: 0}\n", "    garp: {burst: 1, refresh: 0}\n"
                                 "    track_interfaces: [uplink]\n", 1)
        assert await d.vrrp.update(view(a_tracks, "d1"))
        await wait_for("A FAULT", lambda: d.states()["A"] == "FAULT", timeout=1.0)
        assert d.vrrp.shells["A"].inst is a_core and not d.log.named("vrrp.reload_failed")
    finally:
        await d.vrrp.stop(graceful=False)


async def test_a_renamed_instance_keeps_hearing_its_peer_and_its_old_self_hands_over(segment: Segment) -> None:
    # a rename is a removal and an addition with the same router id on the same socket: the new instance must
    # not be displaced from the socket's demultiplexer by the old one's stop (deaf, it would take over)
    d1, d2 = await pair(ACTIVE_ACTIVE)
    renamed = ACTIVE_ACTIVE.replace("  - name: A\n", "  - name: A2\n")
    try:
        await wait_for("converged", lambda: d1.states() == {"A": "MASTER", "B": "BACKUP"}
                       and d2.states() == {"A": "BACKUP", "B": "MASTER"})
        assert await d2.vrrp.update(view(renamed, "d2"))  # on the backup
        await asyncio.sleep(10 * INTERVAL)  # well past A2's Master_Down were it deaf
        assert d2.states() == {"A2": "BACKUP", "B": "MASTER"}
        demux = d2.vrrp.shells["A2"].demux
        assert demux is not None and demux.heartbeats[51] is d2.vrrp.shells["A2"]._heartbeat
        assert await d1.vrrp.update(view(renamed, "d1"))  # on the master: the old A hands over, A2 preempts back
        await wait_for("A2 MASTER on d1 again", lambda: d1.states() == {"A2": "MASTER", "B": "BACKUP"}
                       and d2.states() == {"A2": "BACKUP", "B": "MASTER"})
        await asyncio.sleep(10 * INTERVAL)
        assert d1.states() == {"A2": "MASTER", "B": "BACKUP"} and d2.states() == {"A2": "BACKUP", "B": "MASTER"}
        assert not d1.vrrp._background and not d2.vrrp._background  # the old A's handover is over
        assert "10.0.0.100/24 dev eth0" in FakeAddrs.held["d1"]
        assert "10.0.0.100/24 dev eth0" not in FakeAddrs.held["d2"]
    finally:
        await asyncio.gather(d1.vrrp.stop(graceful=False), d2.vrrp.stop(graceful=False))


async def test_an_instance_the_groups_fault_held_recovers_when_a_reload_takes_it_out_of_the_group(
        segment: Segment) -> None:
    d = Director(DUAL_STACK, "d1")
    await d.vrrp.start()
    try:
        await wait_for("both MASTER alone", lambda: d.states() == {"V4": "MASTER", "V6": "MASTER"})
        d.vrrp._on_link(LinkEvent("eth6", 6, up=False))  # V6's own link: V4 is held in FAULT by the group
        assert d.states() == {"V4": "FAULT", "V6": "FAULT"}
        assert await d.vrrp.update(view(DUAL_STACK.split("vrrp_sync_groups:")[0], "d1"))  # no group any more
        await wait_for("V4 runs alone, V6 stays FAULT", lambda: d.states() == {"V4": "MASTER", "V6": "FAULT"})
    finally:
        await d.vrrp.stop(graceful=False)


async def test_a_replaced_faulty_member_takes_its_fault_out_of_the_group(segment: Segment) -> None:
    d = Director(DUAL_STACK, "d1")
    await d.vrrp.start()
    try:
        await wait_for("both MASTER alone", lambda: d.states() == {"V4": "MASTER", "V6": "MASTER"})
        d.vrrp._on_link(LinkEvent("eth6", 6, up=False))
        assert d.states() == {"V4": "FAULT", "V6": "FAULT"}
        # V6's address moves to a link that is up: a new identity, a new V6 that is not faulty
        moved = DUAL_STACK.replace("six: eth6}", "six: eth6, six2: eth8}").replace("interface: six}",
                                                                                   "interface: six2}")
        assert await d.vrrp.update(view(moved, "d1"))
        await wait_for("the group runs again", lambda: d.states() == {"V4": "MASTER", "V6": "MASTER"})
        assert d.vrrp.snapshot()["groups"] == {"G": "MASTER"}
    finally:
        await d.vrrp.stop(graceful=False)


async def test_a_reload_that_groups_a_master_with_a_faulty_instance_faults_both(segment: Segment) -> None:
    agreeing = ACTIVE_ACTIVE.replace("priority: {d1: 100, d2: 200}", "priority: {d1: 200, d2: 100}").replace(
        "client: eth0}", "client: eth0, uplink: nosuch3}").replace(
        "    rt_priority: 7\n", "    rt_priority: 7\n    track_interfaces: [uplink]\n")
    d = Director(agreeing, "d1")
    await d.vrrp.start()
    try:
        await wait_for("A MASTER, B FAULT", lambda: d.states() == {"A": "MASTER", "B": "FAULT"})
        assert await d.vrrp.update(view(agreeing + "vrrp_sync_groups: [{name: G, instances: [A, B]}]\n", "d1"))
        assert d.states() == {"A": "FAULT", "B": "FAULT"} and d.vrrp.snapshot()["groups"] == {"G": "FAULT"}
        assert d.changes[-1] == ("A", "MASTER", "FAULT", "sync_group", "G")
    finally:
        await d.vrrp.stop(graceful=False)
