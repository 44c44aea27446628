"""The VRRP shell's pieces that need no root: construction from the model, notify hooks, the announcer's
bookkeeping and the parent handle's non-blocking snapshot."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from havs.core.model import Config, NodeView, Notify
from havs.vrrp.announcer import Announcer, RateLimitedLog
from havs.vrrp.notify import NotifyRunner
from havs.vrrp.process import VrrpProcess
from havs.vrrp.protocol import Snapshot
from havs.vrrp.shell import VrrpShell


class ListLog:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))

    warning = error = info


def view(**vrrp: Any) -> NodeView:
    cfg = Config.model_validate(
        {
            "nodes": {"lvs1": {"priority": 150, "interfaces": {"client": "eth0", "server": "eth1", "mgmt": "eth9"}}},
            "vrrp": {
                "router_id": 51,
                "interface": "server",
                "addresses": [
                    {"address": "192.168.0.108/24", "interface": "client"},
                    {"address": "192.168.72.130/24", "interface": "server"},
                ],
                **vrrp,
            },
        }
    )
    return NodeView(name="lvs1", node=cfg.nodes["lvs1"], config=cfg)


def test_tracks_heartbeat_address_and_extra_interfaces_once() -> None:
    svc = VrrpShell(view(track_interfaces=["mgmt", "client"]), log=ListLog(), name="VI_1")
    assert svc.track == ("eth1", "eth0", "eth9")


def test_the_shell_runs_the_instance_it_is_named_and_nothing_else() -> None:
    cfg = view().config.model_dump()
    second = {**cfg["vrrp"][0], "name": "VI_2", "router_id": 52, "priority": {"lvs1": 77},
              "addresses": [{"address": "192.168.0.109/24", "interface": "client"}]}
    c = Config.model_validate({**cfg, "vrrp": [cfg["vrrp"][0], second]})
    two = NodeView(name="lvs1", node=c.nodes["lvs1"], config=c)
    svc = VrrpShell(two, log=ListLog(), name="VI_2")
    snap = svc.snapshot()
    assert (svc.cfg.name, snap["router_id"], snap["priority"], snap["addresses"]) == (
        "VI_2", 52, 77, ["192.168.0.109/24 dev eth0"])
    with pytest.raises(KeyError):
        VrrpShell(two, log=ListLog(), name="VI_3")  # no fallback to the first instance
    with pytest.raises(TypeError):
        VrrpShell(two, log=ListLog())  # type: ignore[call-arg]


def test_priority_decrement_floors_at_one_and_shows_in_snapshot() -> None:
    svc = VrrpShell(view(), log=ListLog(), name="VI_1")
    svc.set_priority_decrement(50)
    assert svc.effective_priority == 100
    svc.set_priority_decrement(500)
    assert svc.effective_priority == 1
    snap = svc.snapshot()
    assert snap["state"] == "INIT" and snap["priority"] == 1 and snap["priority_decrement"] == 500
    assert snap["addresses"] == ["192.168.0.108/24 dev eth0", "192.168.72.130/24 dev eth1"]
    assert snap["held"] == []


def test_an_ipv6_instance_is_accepted_and_is_one_family() -> None:
    cfg = view().config.model_dump()
    cfg["vrrp"][0]["addresses"] = [{"address": "2001:db8::1/64", "interface": "client"}]
    c = Config.model_validate(cfg)
    svc = VrrpShell(NodeView(name="lvs1", node=c.nodes["lvs1"], config=c), log=ListLog(), name="VI_1")
    assert svc.family == 6
    assert svc.snapshot()["addresses"] == ["2001:db8::1/64 dev eth0"]


async def test_notify_hooks_run_in_order_with_env_and_timeout(tmp_path: Path) -> None:
    out = tmp_path / "hooks"
    script = f"import os,time,sys; time.sleep(float(sys.argv[1])); open({str(out)!r},'a').write(" \
             "os.environ['HAVS_NODE']+' '+os.environ['HAVS_STATE']+' '+os.environ['HAVS_PREVIOUS']+' '+" \
             "os.environ['HAVS_REASON']+'\\n')"
    log = ListLog()
    runner = NotifyRunner(
        Notify(master=[sys.executable, "-c", script, "0.2"], backup=[sys.executable, "-c", script, "0"],
               fault=[sys.executable, "-c", script, "5"], stop=[sys.executable, "-c", script, "0"], timeout=0.5),
        log,
        "lvs1",
    )
    runner.start()
    t0 = time.monotonic()
    runner.submit("BACKUP", "start")
    runner.submit("MASTER", "master_down")  # slow one: order is kept
    runner.submit("FAULT", "interface_down")  # killed at the timeout
    runner.submit("BACKUP", "interface_up")
    runner.submit("MASTER", "master_down")
    runner.submit("RESIGNING", "shutdown")  # no hook: part of leaving MASTER
    runner.submit("INIT", "shutdown")
    assert time.monotonic() - t0 < 0.1  # submitting never waits for a hook
    await runner.stop(wait=True)
    assert out.read_text().splitlines() == [
        "lvs1 BACKUP INIT start", "lvs1 MASTER BACKUP master_down", "lvs1 BACKUP FAULT interface_up",
        "lvs1 MASTER BACKUP master_down", "lvs1 INIT MASTER shutdown"]
    notes = [kw for ev, kw in log.events if ev == "vrrp.notify"]
    assert [n["state"] for n in notes] == ["BACKUP", "MASTER", "FAULT", "BACKUP", "MASTER", "INIT"]
    assert notes[2]["rc"] is None and "timed out" in notes[2]["error"]


async def test_a_missing_hook_program_is_logged_not_raised() -> None:
    log = ListLog()
    runner = NotifyRunner(Notify(master=["/nonexistent/hook"]), log, "lvs1")
    runner.start()
    runner.submit("MASTER", "owner")
    await runner.stop(wait=True)
    (note,) = [kw for ev, kw in log.events if ev == "vrrp.notify"]
    assert note["rc"] is None and "nonexistent" in note["error"]


class FailingAddresses:
    async def remove(self, ifname: str, address: object) -> bool:
        return ifname == "eth1"

    async def list(self, ifname: str, family: int) -> list[object]:
        return []  # nothing there: a MASTER's check puts them back

    async def ensure(self, ifname: str, address: object) -> None:
        raise OSError(105, "No buffer space available")


async def test_stale_release_is_logged_only_when_something_was_there() -> None:
    log = ListLog()
    v = view()
    floating = tuple((v.ifname(fa.interface), fa.address) for fa in v.config.vrrp[0].addresses)  # type: ignore[union-attr]
    ann = Announcer(floating, FailingAddresses(), log, RateLimitedLog(log))  # type: ignore[arg-type]
    await ann.release("stale")
    assert log.events == [("vrrp.addresses", {"action": "release", "reason": "stale",
                                              "addresses": ["192.168.72.130/24 dev eth1"]})]
    with pytest.raises(OSError):
        await ann.reassert()  # the shell's effects worker catches and counts it


def test_rate_limited_log_counts_everything_and_logs_once_per_window() -> None:
    log = ListLog()
    warn = RateLimitedLog(log)
    for _ in range(1000):
        warn("drop:answer_rate", "vrrp.advert_dropped", reason="answer_rate")
    assert warn.counts["drop:answer_rate"] == 1000
    assert len(log.events) == 1


def test_snapshot_never_waits_for_the_child() -> None:
    proc = VrrpProcess(view(), log=ListLog())
    t0 = time.monotonic()
    snap = proc.snapshot()
    assert time.monotonic() - t0 < 0.01
    # not spawned: no instance pushed yet, and nothing alive
    assert snap == {"instances": [], "groups": {}, "error": "the VRRP process does not answer", "restarts": 0}


async def test_effects_worker_survives_a_failing_effect() -> None:
    log = ListLog()
    shell = VrrpShell(view(), log=log, name="VI_1")
    worker = asyncio.get_running_loop().create_task(shell._effects_worker())

    async def boom() -> None:
        raise OSError(105, "ENOBUFS")

    ran: list[int] = []

    async def ok() -> None:
        ran.append(1)

    for effect in (boom, boom, ok):
        shell._effects.put_nowait(effect)
    shell._effects.put_nowait(None)
    await asyncio.wait_for(worker, 2)
    assert ran == [1] and shell.warn.counts["effect:OSError"] == 2
    assert [ev for ev, _ in log.events] == ["vrrp.effect_failed"]


def test_decrement_waits_for_a_started_child_and_never_blocks() -> None:
    import socket as _socket

    proc = VrrpProcess(view(), log=ListLog())
    ours, theirs = _socket.socketpair()
    proc._sock = ours
    proc.set_priority_decrement({"VI_1": 20})  # not started: nothing may reach the child before Start
    theirs.setblocking(False)
    with pytest.raises(BlockingIOError):
        theirs.recv(100)
    proc._ready.set()
    ours.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF, 4096)
    while True:  # fill the link: the child is stalled
        try:
            ours.send(b"x" * 4096, _socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
    t0 = time.monotonic()
    proc.set_priority_decrement({"VI_1": 30, "VI_2": 0})
    assert time.monotonic() - t0 < 0.05 and proc._sent_decrement == {}
    while True:  # the child catches up; its next push retries
        try:
            theirs.recv(1 << 16)
        except BlockingIOError:
            break
    proc._dispatch(Snapshot({"instances": [{"instance": "VI_1", "state": "BACKUP"}], "groups": {}}))
    assert proc._sent_decrement == {"VI_1": 30}  # a zero is the default: not sent
    ours.close()
    theirs.close()


async def test_hooks_are_told_their_instance_and_group(tmp_path: Path) -> None:
    out = tmp_path / "env"
    script = f"import os; open({str(out)!r},'a').write(os.environ['HAVS_INSTANCE']+' '+os.environ['HAVS_GROUP']+'\\n')"
    runner = NotifyRunner(Notify(master=[sys.executable, "-c", script]), ListLog(), "lvs1",
                          {"HAVS_INSTANCE": "VIP6", "HAVS_GROUP": "G"})
    runner.start()
    runner.submit("MASTER", "master_down")
    await runner.stop(wait=True)
    assert out.read_text() == "VIP6 G\n"


class CountingAddresses:
    def __init__(self) -> None:
        self.there: set[str] = set()
        self.lists = 0

    async def list(self, ifname: str, family: int) -> list[tuple[Any, bool]]:
        import ipaddress

        self.lists += 1
        return [(ipaddress.ip_interface(a), True) for a in self.there]

    async def ensure(self, ifname: str, address: object) -> None:
        self.there.add(str(address))

    async def remove(self, ifname: str, address: object) -> bool:
        there = str(address) in self.there
        self.there.discard(str(address))
        return there


async def test_masters_of_several_instances_share_one_read_of_an_interface() -> None:
    from havs.core.model import FloatingAddress
    from havs.vrrp.announcer import AddressCache

    log, addrs, cache = ListLog(), CountingAddresses(), AddressCache(ttl=60.0)
    a, b = (Announcer((("eth0", FloatingAddress.model_validate({"address": ip, "interface": "c"}).address),),
                      addrs, log, RateLimitedLog(log), cache)  # type: ignore[arg-type]
            for ip in ("10.0.0.1/24", "10.0.0.2/24"))
    await a.take()
    await b.take()
    await a.reassert()
    await b.reassert()
    assert addrs.lists == 1  # one dump served both checks
    addrs.there.discard("10.0.0.1/24")  # someone removes a's address: seen once the read is due again
    await a.reassert()
    assert "10.0.0.1/24" not in addrs.there
    cache.ttl = 0.0
    await a.reassert()
    assert "10.0.0.1/24" in addrs.there and addrs.lists == 2
    assert [kw["addresses"] for ev, kw in log.events if ev == "vrrp.addresses" and kw["action"] == "readd"] == [
        ["10.0.0.1/24 dev eth0"]]
