"""Failback without losing connections, the VRRP side: the daemon holds preemption while it catches up
(protocol message, the parent's non-blocking handle, the child shell's effect on the core)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any, ClassVar

from havs.core import ipvs_sync_wire as wire
from havs.core.controller import Controller
from havs.core.vrrp import BACKUP, MASTER, VrrpInstance
from havs.core.wire import Advertisement
from havs.failback import Failback
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
    proc.set_priority_decrement({"VI_1": 5})  # the decrement still goes on its own
    assert theirs.recv(1 << 16).count(b"\n") == 1
    ours.close()
    theirs.close()


def advert(priority: int) -> Advertisement:
    return Advertisement(3, 51, priority, (ipaddress.IPv4Address("192.168.0.108"),
                                           ipaddress.IPv4Address("192.168.72.130")), 100)


def shell_with_core(**vrrp: Any) -> tuple[VrrpShell, ListLog, list[Any]]:
    log = ListLog()
    shell = VrrpShell(view(**vrrp), log=log, name="VI_1")
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


# ------------------------------------------------------------------------------------ the catch-up shell

TABLE_HEAD = "Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData\n"


def proc_line(c: Any) -> str:
    name = {6: "TCP", 17: "UDP"}[c.protocol]
    return (f"{name} {int(c.client):08X} {c.cport:04X} {int(c.vip):08X} {c.vport:04X} {int(c.server):08X} "
            f"{c.dport:04X} {c.state:<11} {900:7d}\n")


class Net:
    """Two directors' catch-up sockets and kernels: a sync message reaching the other director's kernel
    becomes entries in its table (as its backup sync thread would make them), unless `drop_sync`."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[Any, Any]] = {"lvs1": {}, "lvs2": {}}
        self.sockets: dict[str, FakeSock] = {}
        self.drop_sync = 0  # sync messages to lose


class FakeSock:
    addrs: ClassVar[dict[str, tuple[str, int]]] = {"lvs1": ("192.168.72.131", 8850), "lvs2": ("192.168.72.132", 8850)}

    def __init__(self, net: Net, name: str, fb: Any = None) -> None:
        self.net, self.name, self.inbox = net, name, []
        self.pair = socket.socketpair()
        self.fb = fb
        net.sockets[name] = self

    def open(self) -> None:
        pass

    def fileno(self) -> int:
        return self.pair[0].fileno()

    def receive(self) -> list[Any]:
        out, self.inbox = self.inbox, []
        return out

    def _other(self) -> FakeSock:
        return self.net.sockets["lvs2" if self.name == "lvs1" else "lvs1"]

    def _deliver(self, to: FakeSock, data: bytes) -> None:
        to.inbox.append((data, self.addrs[self.name]))
        asyncio.get_running_loop().call_soon(to.fb._on_readable)

    def request(self, data: bytes) -> None:
        self._deliver(self._other(), data)

    def answer(self, data: bytes, to: tuple[str, int]) -> None:
        [name] = [n for n, a in self.addrs.items() if a == to]
        self._deliver(self.net.sockets[name], data)

    def sync_message(self, data: bytes) -> None:
        if self.net.drop_sync:
            self.net.drop_sync -= 1
            return
        other = self._other().name
        for c in wire.decode_sync(data)[1]:
            self.net.tables[other][c.key] = c

    def close(self) -> None:
        for s in self.pair:
            s.close()


def director(net: Net, name: str, state: str, **sync: Any) -> tuple[Failback, list[str], ListLog]:
    v = view(connection_sync={"interface": "server", **sync})
    controller = Controller(v)
    controller.vrrp_changed("VI_1", state)
    holds: list[str] = []
    log = ListLog()
    fb = Failback(controller, log, holds.append,
                  read_table=lambda: TABLE_HEAD + "".join(proc_line(c) for c in net.tables[name].values()),
                  open_socket=lambda ifname, port: FakeSock(net, name))
    return fb, holds, log


def conns(n: int) -> dict[Any, Any]:
    ip = ipaddress.IPv4Address
    cs = [wire.Conn(6, ip("192.168.0.105"), 40000 + i, ip("192.168.0.108"), 80, ip("192.168.72.128"), 80)
          for i in range(n)]
    return {c.key: c for c in cs}


async def run_pair(net: Net, **sync: Any) -> tuple[Any, ...]:
    master, master_holds, mlog = director(net, "lvs2", "MASTER", **sync)
    returner, holds, log = director(net, "lvs1", "BACKUP", **sync)
    master.start()
    net.sockets["lvs2"].fb = master
    returner.start()
    net.sockets["lvs1"].fb = returner
    for _ in range(200):
        if returner.catchup is not None and returner.catchup.done:
            break
        await asyncio.sleep(0.02)
    await returner.stop()
    await master.stop()
    return master, master_holds, mlog, returner, holds, log


async def test_returning_director_holds_until_the_masters_table_is_replayed_into_its_kernel() -> None:
    net = Net()
    net.tables["lvs2"] = conns(100)
    master, master_holds, mlog, returner, holds, log = await run_pair(net)
    assert holds == ["catching up on connections", ""]
    assert set(net.tables["lvs1"]) == set(net.tables["lvs2"])  # the replay reached "its kernel"
    done = [kw for ev, kw in log.events if ev == "sync.catchup_done"]
    assert len(done) == 1 and done[0]["reason"] == "caught_up" and done[0]["entries"] == 100
    assert master.replays == 1 and [kw["entries"] for ev, kw in mlog.events if ev == "sync.catchup_replay"] == [100]
    assert returner.status()["catchup"]["missing"] == 0 and returner.status()["table_size"] == 100
    assert master_holds == []  # the master is not held: it is the master, not returning


async def test_a_lost_replay_is_asked_again() -> None:
    net = Net()
    net.tables["lvs2"] = conns(100)
    net.drop_sync = 1  # the first of three sync messages never arrives
    master, _, _, _, holds, log = await run_pair(net)
    assert holds[-1] == "" and set(net.tables["lvs1"]) == set(net.tables["lvs2"])
    assert master.replays == 2
    assert [kw["reason"] for ev, kw in log.events if ev == "sync.catchup_done"] == ["caught_up"]


async def test_deadline_releases_the_hold_when_nobody_answers() -> None:
    net = Net()
    net.tables["lvs2"] = conns(3)
    master, _, _ = director(net, "lvs2", "BACKUP", catchup_deadline=0.2)  # no master: nobody replays
    returner, holds, log = director(net, "lvs1", "BACKUP", catchup_deadline=0.2)
    master.start()
    net.sockets["lvs2"].fb = master
    returner.start()
    net.sockets["lvs1"].fb = returner
    await asyncio.sleep(0.4)
    assert holds == ["catching up on connections", ""]
    assert [(kw["reason"], kw["entries"]) for ev, kw in log.events if ev == "sync.catchup_done"] == [
        ("deadline", None)]
    assert master.replays == 0
    await returner.stop()
    await master.stop()


async def test_becoming_master_releases_at_once_and_no_hold_without_preempt_or_deadline() -> None:
    net = Net()
    returner, holds, _ = director(net, "lvs1", "BACKUP")
    returner.start()
    net.sockets["lvs1"].fb = returner
    FakeSock(net, "lvs2")
    returner.state_changed("VI_1", "MASTER")
    assert holds == ["catching up on connections", ""]
    assert returner.catchup is not None and returner.catchup.released is not None
    assert returner.catchup.released.reason == "became_master"
    await returner.stop()
    for sync in ({"catchup_deadline": 0}, ):
        off, holds_off, _ = director(Net(), "lvs1", "BACKUP", **sync)
        off.start()
        assert holds_off == [] and off.catchup is None
        await off.stop()


async def test_an_unopenable_socket_is_an_error_event_and_no_hold() -> None:
    def refuse(ifname: str, port: int) -> Any:
        raise OSError(19, f"catch-up socket on {ifname} port {port}: No such device")

    v = view(connection_sync={"interface": "server"})
    holds: list[str] = []
    log = ListLog()
    fb = Failback(Controller(v), log, holds.append, open_socket=refuse)
    fb.start()
    assert holds == [] and [ev for ev, _ in log.events] == ["sync.catchup_unavailable"]


async def test_supervisor_holds_at_start_and_a_master_state_from_the_link_thread_releases() -> None:
    import threading

    from havs.vrrp_supervisor import VrrpSupervisor

    v = view(connection_sync={"interface": "server"})
    states: list[tuple[str, str, str]] = []
    procs: list[Any] = []

    class Proc:
        def __init__(self, view: Any, *, log: Any, log_format: str, on_state: Any) -> None:
            self.view, self.on_state, self.holds = view, on_state, []
            procs.append(self)

        def spawn(self) -> None: ...
        def start(self) -> None: ...
        def stop(self, graceful: bool = True) -> None: ...
        def set_priority_decrement(self, n: int) -> None: ...

        def hold_preemption(self, reason: str) -> None:
            self.holds.append(reason)

    log = ListLog()
    sup = VrrpSupervisor(Controller(v), Proc, log=log, log_format="json",
                         on_state=lambda *a: states.append(a))  # type: ignore[arg-type]
    net = Net()
    FakeSock(net, "lvs2")
    sup.failback = Failback(sup.controller, log, sup._hold,
                            open_socket=lambda ifname, port: FakeSock(net, "lvs1"))
    assert sup.spawn(v) and await sup.start()
    net.sockets["lvs1"].fb = sup.failback
    assert procs[0].holds == ["catching up on connections"]
    thread = threading.Thread(target=procs[0].on_state, args=("VI_1", "BACKUP", "MASTER", "master_down"))
    thread.start()
    thread.join()
    await asyncio.sleep(0.05)
    assert states == [("VI_1", "BACKUP", "MASTER", "master_down")]
    assert procs[0].holds == ["catching up on connections", ""]
    await sup.stop()
    assert sup.failback.sock is None


async def test_supervisor_without_the_sync_interface_says_so_and_holds_nothing() -> None:
    from havs.vrrp_supervisor import VrrpSupervisor

    v = view(connection_sync={"interface": "mgmt"})  # eth9: no such interface

    class Proc:
        def __init__(self, view: Any, **kw: Any) -> None:
            self.holds: list[str] = []

        def spawn(self) -> None: ...
        def start(self) -> None: ...
        def stop(self, graceful: bool = True) -> None: ...

        def hold_preemption(self, reason: str) -> None:
            self.holds.append(reason)

    log = ListLog()
    sup = VrrpSupervisor(Controller(v), Proc, log=log, log_format="json", on_state=lambda *a: None)  # type: ignore[arg-type]
    assert sup.spawn(v) and await sup.start()
    assert [ev for ev, _ in log.events if ev.startswith("sync.")] == ["sync.catchup_unavailable"]
    assert sup.process.holds == []  # type: ignore[union-attr]
    await sup.stop()


async def test_a_big_table_is_replayed_paced_and_caught_up() -> None:
    net = Net()
    net.tables["lvs2"] = conns(2000)  # 50 sync messages: paced, 33 answer parts
    _, _, mlog, _, holds, log = await run_pair(net)
    assert holds == ["catching up on connections", ""] and set(net.tables["lvs1"]) == set(net.tables["lvs2"])
    assert [kw["messages"] for ev, kw in mlog.events if ev == "sync.catchup_replay"] == [50]
    assert [(kw["reason"], kw["entries"]) for ev, kw in log.events if ev == "sync.catchup_done"] == [
        ("caught_up", 2000)]
