"""Failback without losing connections, the VRRP side: the daemon holds preemption while it catches up
(protocol message, the parent's non-blocking handle, the child shell's effect on the core)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from havs.core.vrrp import BACKUP, MASTER, VrrpInstance
from havs.core.wire import Advertisement
from havs.vrrp import protocol
from havs.vrrp.process import VrrpProcess
from havs.vrrp.protocol import HoldPreemption, Snapshot
from havs.vrrp.shell import VrrpShell
from tests.test_vrrp_service import ListLog, view

PEER = ipaddress.IPv4Address("192.168.72.132")
OURS = ipaddress.IPv4Address("192.168.72.131")


def test_hold_message_round_trips() -> None:
    for reason in ("catching up on connections", ""):
        assert protocol.decode(protocol.encode(HoldPreemption(reason))) == HoldPreemption(reason)


def test_process_sends_the_hold_once_started_never_before() -> None:
    proc = VrrpProcess(view(), log=ListLog())
    ours, theirs = socket.socketpair()
    proc._sock = ours
    theirs.setblocking(False)
    proc.hold_preemption("catching up")  # not started: nothing before Start
    assert proc._sent_hold == ""
    proc._ready.set()
    proc._dispatch(Snapshot({"state": "BACKUP"}))  # the child's push retries
    assert protocol.decode(theirs.recv(1 << 16)) == HoldPreemption("catching up")
    proc.hold_preemption("")
    assert protocol.decode(theirs.recv(1 << 16)) == HoldPreemption("")
    proc.set_priority_decrement(5)  # the decrement still goes on its own
    assert theirs.recv(1 << 16).count(b"\n") == 1
    ours.close()
    theirs.close()


def advert(priority: int) -> Advertisement:
    return Advertisement(3, 51, priority, (ipaddress.IPv4Address("192.168.0.108"),
                                           ipaddress.IPv4Address("192.168.72.130")), 100)


def shell_with_core(**vrrp: Any) -> tuple[VrrpShell, ListLog, list[Any]]:
    log = ListLog()
    shell = VrrpShell(view(**vrrp), log=log)
    shell.src = OURS
    shell.inst = VrrpInstance(shell.params(), 0.0)
    dispatched: list[Any] = []
    shell.dispatch = dispatched.extend  # type: ignore[method-assign]
    return shell, log, dispatched


def test_held_backup_follows_a_lower_priority_master_then_preempts_on_release(monkeypatch: Any) -> None:
    shell, log, _ = shell_with_core(advert_interval=1.0)
    inst = shell.inst
    assert inst is not None
    loop_time = [0.0]

    class Loop:
        def time(self) -> float:
            return loop_time[0]

    monkeypatch.setattr("havs.vrrp.shell.asyncio.get_running_loop", lambda: Loop())
    inst.start(0.0)
    shell.set_preempt_hold("catching up on connections")
    assert inst.params.preempt is False and shell.snapshot()["preempt_hold"] == "catching up on connections"
    t = 0.5
    while t < 20.0:  # a lower-priority master advertises every second: held, we follow it
        inst.receive(advert(100), PEER, t)
        shell._note_deferred()
        assert inst.handle_timer(t + 0.99) == [] or inst.state == BACKUP
        t += 1.0
    assert inst.state == BACKUP
    deferred = [kw for ev, kw in log.events if ev == "vrrp.preempt_deferred"]
    assert deferred == [{"reason": "catching up on connections", "master": str(PEER), "master_priority": 100,
                         "priority": 150}]  # said once per hold
    loop_time[0] = t
    shell.set_preempt_hold("")  # caught up
    assert inst.params.preempt is True and shell.snapshot()["preempt_hold"] is None
    inst.receive(advert(100), PEER, t + 0.5)  # ignored now: Master_Down runs out
    while inst.state == BACKUP and (timer := inst.get_timer()) is not None and timer <= t + 0.5 + 4.0:
        inst.handle_timer(timer)  # Master_Down: 3 intervals + skew after the last advert it followed
    assert inst.state == MASTER


class Loop0:
    def time(self) -> float:
        return 0.0


def test_hold_never_delays_a_takeover_when_no_master_is_heard(monkeypatch: Any) -> None:
    monkeypatch.setattr("havs.vrrp.shell.asyncio.get_running_loop", lambda: Loop0())
    shell, _, _ = shell_with_core(advert_interval=1.0)
    inst = shell.inst
    assert inst is not None
    inst.start(0.0)
    shell.set_preempt_hold("catching up")  # held from the start, nobody advertising (first start, failover)
    assert inst.params.preempt is False
    while inst.state == BACKUP and (timer := inst.get_timer()) is not None and timer < 3.5:
        inst.handle_timer(timer)
    assert inst.state == MASTER


def test_a_higher_priority_master_is_followed_whatever_the_hold() -> None:
    shell, log, _ = shell_with_core(advert_interval=1.0)
    inst = shell.inst
    assert inst is not None
    inst.start(0.0)
    shell.preempt_hold = "catching up"
    inst.receive(advert(200), PEER, 0.5)
    shell._note_deferred()
    assert inst.state == BACKUP and not [ev for ev, _ in log.events if ev == "vrrp.preempt_deferred"]
