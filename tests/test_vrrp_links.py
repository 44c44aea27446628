"""The VRRP shell's link tracking: link events decide at once, the slow poll is the fallback and never
undoes an event it started before."""

from __future__ import annotations

import asyncio
from typing import Any

from havs.core.model import Config, NodeView
from havs.edge.links import LinkEvent
from havs.vrrp.shell import VrrpShell


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))

    warning = error = info


class Inst:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def fault(self, now: float) -> list[object]:
        self.calls.append("fault")
        return []

    def recover(self, now: float) -> list[object]:
        self.calls.append("recover")
        return []


def shell(interval: float = 1.0) -> tuple[VrrpShell, Inst, Log]:
    cfg = Config.model_validate({
        "nodes": {"lvs1": {"priority": 150, "interfaces": {"client": "eth0", "server": "eth1"}}},
        "vrrp": {"router_id": 51, "interface": "server", "advert_interval": interval,
                 "addresses": [{"address": "192.168.0.108/24", "interface": "client"}]}})
    log = Log()
    s = VrrpShell(NodeView(name="lvs1", node=cfg.nodes["lvs1"], config=cfg), log=log, name="VI_1")
    inst = Inst()
    s.inst = inst  # type: ignore[assignment]
    s.dispatch = lambda actions: None  # type: ignore[method-assign]
    return s, inst, log


async def test_events_for_tracked_links_fault_and_recover_at_once() -> None:
    s, inst, log = shell()
    s.on_link(LinkEvent("eth9", 9, False))  # not tracked
    s.on_link(LinkEvent("eth0", 2, False))
    s.on_link(LinkEvent("eth1", 3, False))
    s.on_link(LinkEvent("eth0", 2, True))
    s.on_link(LinkEvent("eth0", 2, True))  # no change: nothing
    s.on_link(LinkEvent("eth1", 3, False, deleted=True))
    assert s.faulty == frozenset({"eth1"})
    s.on_link(LinkEvent("eth1", 3, True))
    assert inst.calls == ["fault", "fault", "fault", "recover"] and s.faulty == frozenset()
    tracks = [kw for ev, kw in log.events if ev == "vrrp.track"]
    assert tracks[0] == {"interface": "eth0", "up": False, "source": "event"}


async def test_a_poll_that_started_before_an_event_does_not_undo_it() -> None:
    s, inst, _ = shell(0.01)
    s.links_open = True
    polled = asyncio.Event()
    release = asyncio.Event()

    class Addrs:
        async def link_up(self, ifname: str) -> bool:
            polled.set()
            await release.wait()
            return True  # what the link was when the poll read it

    s._addrs = Addrs()  # type: ignore[assignment]
    task = asyncio.ensure_future(s._track_loop())
    try:
        await asyncio.wait_for(polled.wait(), 2)  # the first tick polls (nothing polled yet)
        s.on_link(LinkEvent("eth0", 2, False))  # the link goes down while the poll runs
        release.set()
        await asyncio.sleep(0.05)
        assert s.faulty == frozenset({"eth0"}) and inst.calls == ["fault"]
    finally:
        task.cancel()


async def test_lost_events_make_the_next_tick_poll() -> None:
    s, _, _ = shell()
    s._polled = 1e12
    s.on_link(None)
    assert s._polled == 0.0
