"""The daemon's side of several VRRP instances, without sockets: the controller's per-instance states,
connection sync and failback following the instance that has `connection_sync`, reload plans naming the
instances that changed, the per-instance priority decrement, status, `havs check`'s summary and the
reload guard."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeHealth, FakeIpvs, FakeVrrp, ListLog
from prometheus_client import generate_latest
from test_daemon import env, start, stop, sync_threads, until, write
from two_instances import RS_A, RS_B, RS_FWM, TWO

from havs.core.config import parse_config, select_node
from havs.core.controller import Controller, SyncAction
from havs.core.ipvs_table import SyncDaemon
from havs.core.model import NodeView
from havs.core.reload_guard import judge
from havs.core.status import StatusSnapshot, VrrpStatus, render_status
from havs.core.summary import config_summary

__all__ = ["env"]  # the daemon tests' fixture: fake IPVS, health checks and VRRP process


def view(text: str = TWO, node: str = "lvs1") -> NodeView:
    return select_node(parse_config(text), node, node)


def push(*instances: dict[str, Any], groups: dict[str, str] | None = None) -> dict[str, Any]:
    """As the VRRP process pushes its snapshot: one entry per instance, in config order, and the groups."""
    return {"instances": list(instances), "groups": groups or {}}


def entry(instance: str, state: str, group: str | None = None, **kw: Any) -> dict[str, Any]:
    return {"instance": instance, "group": group, "state": state, "since": 90.0, "priority": 150, "router_id": 51,
            "version": 3, "mode": "multicast", "interface": "eth1", **kw}


def test_two_instances_end_to_end_through_the_controller() -> None:
    c = Controller(view())
    health = FakeHealth(c.config.virtual_services)
    # every instance starts as a backup; the sync threads follow VI_A, the one with connection_sync
    assert c.vrrp_states == {"VI_A": "BACKUP", "VI_B": "BACKUP", "GW": "BACKUP"}
    assert c.sync_instance is not None and c.sync_instance.name == "VI_A" and c.syncs_connections
    assert c.sync_actions([]) == [SyncAction("start", "backup", "eth1", 7)]
    # VI_B becoming MASTER (active/active: lvs2's VIP came here) moves no sync thread
    c.vrrp_changed("VI_B", "MASTER")
    assert c.sync_state == "BACKUP" and c.sync_actions([SyncDaemon("backup", "eth1", 7)]) == []
    c.vrrp_changed("VI_A", "MASTER")
    assert c.sync_actions([SyncDaemon("backup", "eth1", 7)]) == [
        SyncAction("start", "master", "eth1", 7), SyncAction("stop", "backup", "eth1", 7)]
    assert c.vrrp_states == {"VI_A": "MASTER", "VI_B": "MASTER", "GW": "BACKUP"}
    # quorum: VIP B's only server fails → only VI_B gives way; the fwmark service → every instance
    health.up[RS_B] = False
    assert c.plan(health.states(), 10.0).priority_decrement == {"VI_A": 0, "VI_B": 30, "GW": 0}
    health.up[RS_FWM] = False
    assert c.plan(health.states(), 11.0).priority_decrement == {"VI_A": 20, "VI_B": 50, "GW": 20}
    health.up[RS_A] = False
    assert c.plan(health.states(), 12.0).priority_decrement == {"VI_A": 70, "VI_B": 50, "GW": 20}
    # status: every instance in config order, with its group; the group's state as pushed
    snap = c.status(now=100.0, version="1", pid=1, started=0.0, config_file="havs.yaml", health=health.snapshot(),
                    vrrp=push(entry("VI_A", "MASTER", "G_A", held=["192.168.0.108/24 dev eth0"],
                                    addresses=["192.168.0.108/24 dev eth0"], priority_decrement=70),
                              entry("VI_B", "MASTER", router_id=52, priority=100),
                              entry("GW", "MASTER", "G_A", router_id=53), groups={"G_A": "MASTER"}))
    assert [(v.instance, v.group, v.state, v.router_id) for v in snap.vrrp] == [
        ("VI_A", "G_A", "MASTER", 51), ("VI_B", None, "MASTER", 52), ("GW", "G_A", "MASTER", 53)]
    assert snap.vrrp[0].since_ago == 10.0 and snap.vrrp_groups == {"G_A": "MASTER"}
    assert StatusSnapshot.from_dict(snap.to_dict()) == snap
    lines = render_status(snap).splitlines()
    assert lines[1] == ("VRRP MASTER since 10.0s ago — VI_A in sync group G_A, router 51 v3 priority 150 "
                        "(lowered by 70: quorum lost), multicast on eth1")
    assert lines[2] == "  floating: 192.168.0.108/24 dev eth0 (held)"
    assert lines[3].startswith("VRRP MASTER since 10.0s ago — VI_B, router 52 v3 priority 100,")
    assert lines[4].startswith("VRRP MASTER since 10.0s ago — GW in sync group G_A, router 53")
    assert lines[5] == "sync group G_A: MASTER (VI_A, GW)"


def test_status_before_the_first_push_shows_every_configured_instance_as_init() -> None:
    c = Controller(view(node="lvs2"))
    snap = c.status(now=5.0, version="1", pid=1, started=0.0, config_file="havs.yaml", vrrp=push())
    assert [(v.instance, v.group, v.state, v.priority, v.router_id) for v in snap.vrrp] == [
        ("VI_A", "G_A", "INIT", 100, 51), ("VI_B", None, "INIT", 150, 52), ("GW", "G_A", "INIT", 100, 53)]
    assert snap.vrrp[1].addresses == ("192.168.0.109/24 dev eth0",) and snap.vrrp[1].held == ()
    assert snap.vrrp_groups == {"G_A": "INIT"}
    # no VRRP process at all: no instance, and the text says VRRP is off
    off = c.status(now=5.0, version="1", pid=1, started=0.0, config_file="havs.yaml", vrrp=None)
    assert off.vrrp == [] and "VRRP off" in render_status(off).splitlines()


def test_a_vrrp_process_that_does_not_answer_says_so_once_for_all_its_instances() -> None:
    c = Controller(view())
    error = "the VRRP process does not answer"
    pushed = {**push(*(entry(n, "UNKNOWN", error=error) for n in ("VI_A", "VI_B", "GW")), groups={"G_A": "UNKNOWN"}),
              "restarts": 2, "error": error}  # as havs.vrrp.VrrpProcess.snapshot() says it
    snap = c.status(now=100.0, version="1", pid=1, started=0.0, config_file="havs.yaml", vrrp=pushed)
    assert [v.state for v in snap.vrrp] == ["UNKNOWN"] * 3 and snap.vrrp_process == {"restarts": 2, "error": error}
    assert StatusSnapshot.from_dict(snap.to_dict()) == snap
    lines = render_status(snap).splitlines()
    assert lines[4:7] == ["sync group G_A: UNKNOWN (VI_A, GW)", f"VRRP process: {error}",
                          "VRRP process restarted 2 time(s) (died unasked)"]


def test_a_push_from_a_child_before_several_instances_is_its_first_instance() -> None:
    c = Controller(view())
    snap = c.status(now=5.0, version="1", pid=1, started=0.0, config_file="havs.yaml",
                    vrrp={"state": "BACKUP", "since": 1.0, "priority": 150})
    assert [(v.instance, v.group, v.state) for v in snap.vrrp] == [
        ("VI_A", "G_A", "BACKUP"), ("VI_B", None, "INIT"), ("GW", "G_A", "INIT")]
    assert snap.vrrp_groups == {"G_A": "INIT"}  # its members disagree: no state of its own yet


def test_status_from_an_older_daemon_reads_its_one_vrrp_mapping() -> None:
    old = {"version": "0.9", "node": "lvs1", "pid": 7, "uptime": 3.0, "config_file": "havs.yaml",
           "vrrp": {"state": "MASTER", "priority": 150, "router_id": 51, "held": ["192.168.0.108/24 dev eth0"]},
           "services": []}
    snap = StatusSnapshot.from_dict(old)
    assert snap.vrrp == [VrrpStatus(instance="VI_1", state="MASTER", priority=150, router_id=51,
                                    held=("192.168.0.108/24 dev eth0",))]
    assert render_status(old).splitlines()[1].startswith("VRRP MASTER since ? ago — VI_1, router 51")
    assert StatusSnapshot.from_dict({**old, "vrrp": None}).vrrp == []


def test_reload_plan_names_the_instances_that_changed() -> None:
    c = Controller(view())
    assert c.reload(view(), {}).vrrp_changed is False
    plan = c.reload(view(TWO.replace("router_id: 52", "router_id: 62")), {})
    assert plan.vrrp_changed and plan.vrrp_instances == ("VI_B",)
    c.vrrp_view = c.view  # applied
    # VI_B removed, VI_C added; the sync group's notify changes its members
    text = TWO.replace("  - name: VI_B\n    router_id: 52", "  - name: VI_C\n    router_id: 62").replace(
        "{name: G_A, instances: [VI_A, GW]}", "{name: G_A, instances: [VI_A, GW], notify: {master: [/bin/true]}}")
    plan = c.reload(view(text), {})
    assert plan.vrrp_instances == ("VI_A", "VI_C", "GW", "VI_B")
    c.vrrp_changed("VI_A", "MASTER")
    c.vrrp_updated(view(text))  # taken in place: VI_A keeps its state, VI_C starts as a backup, VI_B is gone
    assert c.vrrp_states == {"VI_A": "MASTER", "VI_C": "BACKUP", "GW": "BACKUP"}
    # VI_B hands over after the process answered the update: its last reports do not bring it back
    c.vrrp_changed("VI_B", "RESIGNING")
    c.vrrp_changed("VI_B", "INIT")
    assert c.vrrp_states == {"VI_A": "MASTER", "VI_C": "BACKUP", "GW": "BACKUP"}
    c.vrrp_updated(view())  # a later reload brings VI_B back: its reports count again, VI_C's last ones do not
    c.vrrp_changed("VI_B", "MASTER")
    c.vrrp_changed("VI_C", "INIT")
    assert c.vrrp_states == {"VI_A": "MASTER", "VI_B": "MASTER", "GW": "BACKUP"}
    c.vrrp_updated(view(text))
    # another node's view (its priorities, its interfaces): every instance
    c.vrrp_view = c.view
    assert c.reload(view(text, "lvs2"), {}).vrrp_instances == ("VI_A", "VI_C", "GW")
    # no VRRP at all: every running instance goes
    c.vrrp_view = c.view
    bare = TWO.split("vrrp:")[0] + "virtual_services:" + TWO.split("virtual_services:")[1]
    plan = c.reload(view(bare), {})
    assert plan.vrrp_changed and plan.vrrp_instances == ("VI_A", "VI_C", "GW") and not plan.resync
    assert c.vrrp_interfaces(view()) == ["eth1"] and c.vrrp_interfaces(view(bare)) == []


def test_a_restarted_vrrp_process_starts_every_instance_as_a_backup() -> None:
    c = Controller(view())
    c.vrrp_changed("VI_A", "MASTER")
    c.vrrp_changed("GW", "FAULT")
    c.vrrp_restarted(view())
    assert c.vrrp_states == {"VI_A": "BACKUP", "VI_B": "BACKUP", "GW": "BACKUP"}


def test_summary_lists_every_instance_and_sync_group() -> None:
    lines = config_summary(view(node="lvs2"), "havs.yaml").splitlines()
    at = lines.index("VRRP VI_A in sync group G_A: v3 router_id 51 priority 100 advert 0.1s preempt on "
                     "heartbeat eth1 multicast 224.0.0.18")
    assert lines[at + 1:at + 4] == ["  interfaces: client=eth0, server=eth1",
                                    "  floating 192.168.0.108/24 on eth0 (client)",
                                    "  connection_sync on eth1 sync_id 7, mode follow"]
    assert ("VRRP VI_B: v3 router_id 52 priority 150 advert 0.1s preempt on heartbeat eth1 multicast 224.0.0.18"
            in lines)
    assert "  interfaces: server=eth1" in lines  # GW uses the server side only
    assert "sync group G_A: VI_A, GW" in lines


def test_reload_guard_looks_at_every_instance() -> None:
    two = parse_config(TWO)
    assert judge(two, two, max_removed=0.5) == []
    no_b = parse_config(TWO.replace("""  - name: VI_B
    router_id: 52
    priority: {lvs1: 100, lvs2: 150}
    advert_interval: 0.1
    interface: server
    addresses: [{address: 192.168.0.109/24, interface: client}]
""", ""))
    assert judge(two, no_b, max_removed=0.5) == [
        "removes VRRP instance VI_B: its floating addresses would be released (192.168.0.109/24 on client)"]
    assert judge(no_b, two, max_removed=0.5) == []  # adding an instance releases nothing
    # an address moved to another instance goes where that one is MASTER: maybe the other director
    moved = parse_config(TWO.replace("addresses: [{address: 192.168.0.109/24, interface: client}]",
                                     "addresses: [{address: 192.168.0.110/24, interface: client}]").replace(
        "addresses: [{address: 192.168.72.130/24, interface: server}]",
        "addresses: [{address: 192.168.72.130/24, interface: server}, {address: 192.168.0.109/24, "
        "interface: client}]"))
    assert judge(two, moved, max_removed=0.5) == [
        "moves floating address 192.168.0.109/24 on client from VRRP instance VI_B to GW"]
    # an instance renamed: its addresses move to the new name (both directors would restart it as a backup)
    renamed = parse_config(TWO.replace("name: VI_B", "name: VI_X"))
    assert judge(two, renamed, max_removed=0.5) == [
        "moves floating address 192.168.0.109/24 on client from VRRP instance VI_B to VI_X"]
    bare = parse_config(TWO.split("vrrp:")[0] + "virtual_services:" + TWO.split("virtual_services:")[1])
    assert judge(two, bare, max_removed=0.5) == [
        "removes the vrrp section: VRRP would stop and the floating addresses be released"]



# ---------------------------------------------------------------------------------------------- the daemon, faked edges

async def test_the_daemon_with_two_instances_and_a_group(env: Path) -> None:
    from havs.metrics import Metrics

    log = ListLog()
    d, task = start(write(env, TWO), log)
    await until(lambda: log.named("daemon.ready"))
    assert log.named("config.loaded")[0]["vrrp"] == ["VI_A", "VI_B", "GW"]
    [vrrp] = FakeVrrp.made
    ipvs = FakeIpvs.instances[0]
    assert sync_threads(ipvs) == {"backup": ("eth1", 7)}
    d.metrics = Metrics(d.snapshot, lambda: None)  # as serve_metrics would make it (without the HTTP server)
    told: list[str] = []
    d.notifier.notify = lambda *lines: told.extend(lines)  # type: ignore[method-assign]
    # lvs2's VIP comes here (VI_B MASTER): the sync threads follow VI_A only, so nothing moves
    await asyncio.to_thread(vrrp.on_state, "VI_B", "BACKUP", "MASTER", "master_down")
    await until(lambda: d.controller.vrrp_states["VI_B"] == "MASTER")
    await asyncio.sleep(0.05)
    assert sync_threads(ipvs) == {"backup": ("eth1", 7)}
    await asyncio.to_thread(vrrp.on_state, "VI_A", "BACKUP", "MASTER", "master_down")
    await until(lambda: sync_threads(ipvs) == {"master": ("eth1", 7)})
    await asyncio.to_thread(vrrp.on_state, "GW", "BACKUP", "MASTER", "sync_group")
    await until(lambda: told and told[-1] == "STATUS=VRRP VI_A MASTER, VI_B MASTER, GW MASTER")  # systemctl status
    text = generate_latest(d.metrics.registry).decode()
    assert 'havs_vrrp_transitions_total{group="",instance="VI_B",to="MASTER"} 1.0' in text
    assert 'havs_vrrp_transitions_total{group="G_A",instance="GW",to="MASTER"} 1.0' in text
    # a lost quorum lowers the instance floating the service, and only that one
    health = d.health
    assert isinstance(health, FakeHealth)
    health.up[RS_B] = False
    d.wake.set()
    await until(lambda: vrrp.decrement == {"VI_B": 30})
    assert vrrp.calls[-1] == "decrement VI_B=30"
    status = (await d.control.handle({"command": "status"}))["status"]
    assert [(v["instance"], v["group"]) for v in status["vrrp"]] == [("VI_A", "G_A"), ("VI_B", None), ("GW", "G_A")]
    # a tunable of VI_A is taken in place: every instance keeps its state
    tuned = TWO.replace("advert_interval: 0.1", "advert_interval: 0.2", 1)
    write(env, tuned)
    await d.control.handle({"command": "reload"})
    await until(lambda: log.named("config.reloaded"))
    assert [(e["vrrp"], e["vrrp_instances"]) for e in log.named("config.reloaded")] == [("updated", ["VI_A"])]
    assert d.controller.vrrp_states == {"VI_A": "MASTER", "VI_B": "MASTER", "GW": "MASTER"}
    assert vrrp.calls[-1] == "update"
    # a new identity for VI_B is taken in place too (the process hands VI_B over and restarts it alone)
    write(env, tuned.replace("router_id: 52", "router_id: 62"))
    await d.control.handle({"command": "reload"})
    await until(lambda: len(log.named("config.reloaded")) == 2)
    assert [(e["vrrp"], e["vrrp_instances"]) for e in log.named("config.reloaded")][1] == ("updated", ["VI_B"])
    assert d.vrrp.process is vrrp and not log.named("config.vrrp_changed")
    # a process that refuses an instance it cannot start keeps running: no instance hands its addresses over
    # for a new process that would refuse the same; the next reload tries again
    FakeVrrp.refuses = True
    write(env, tuned.replace("router_id: 52", "router_id: 72"))
    await d.control.handle({"command": "reload"})
    await until(lambda: len(log.named("config.reloaded")) == 3)
    assert log.named("config.reloaded")[2]["vrrp"] == "kept running instance"
    assert log.named("config.vrrp_not_applied")[0]["kept"] == "running VRRP instances"
    assert d.vrrp.process is vrrp and FakeVrrp.made == [vrrp] and not any(c.startswith("stop") for c in vrrp.calls)
    assert d.controller.vrrp_view.config.instance("VI_B").router_id == 62  # behind: the next reload retries
    # one that does not answer is restarted: the log names the instances that changed
    FakeVrrp.refuses, FakeVrrp.answers = False, False
    await d.control.handle({"command": "reload"})
    await until(lambda: len(log.named("config.reloaded")) == 4)
    assert log.named("config.vrrp_changed") == [{"action": "restart", "instances": ["VI_B"]}]
    assert log.named("config.reloaded")[3]["vrrp"] == "restarted"
    assert log.named("config.reloaded")[3]["vrrp_instances"] == ["VI_B"]
    FakeVrrp.answers = True
    # the new process starts every instance as a backup: so do the sync threads
    assert d.controller.vrrp_states == {"VI_A": "BACKUP", "VI_B": "BACKUP", "GW": "BACKUP"}
    await until(lambda: sync_threads(ipvs) == {"backup": ("eth1", 7)})
    new = FakeVrrp.made[-1]
    assert new is not vrrp and new.calls[:2] == ["start", "decrement VI_B=30"]
    assert await stop(d, task) == 0


class CatchUpSock:
    def __init__(self) -> None:
        self.pair = socket.socketpair()
        self.requests: list[bytes] = []

    def open(self) -> None: ...

    def fileno(self) -> int:
        return self.pair[0].fileno()

    def receive(self) -> list[Any]:
        return []

    def request(self, data: bytes) -> None:
        self.requests.append(data)

    def close(self) -> None:
        for s in self.pair:
            s.close()


async def test_failback_follows_the_connection_sync_instance_only() -> None:
    from havs.core import ipvs_sync_wire as wire
    from havs.failback import Failback

    c = Controller(view())
    holds: list[str] = []
    sock = CatchUpSock()
    log = ListLog()
    fb = Failback(c, log, holds.append, read_table=lambda: "", open_socket=lambda _ifname, _port: sock)
    fb.start()
    assert holds == ["catching up on connections"]
    assert log.named("sync.catchup_started")[0]["instance"] == "VI_A"
    await asyncio.sleep(0.01)
    assert len(sock.requests) == 1 and wire.decode_channel(sock.requests[0]).syncid == 7  # type: ignore[union-attr]
    fb.state_changed("VI_B", "MASTER")  # another instance's takeover: the table still has to catch up
    assert holds == ["catching up on connections"]
    # only the sync instance's master answers a returning director
    fb._requested(wire.Request(1, 7), ("192.168.72.132", 8850))
    assert not fb._replaying
    c.vrrp_changed("VI_A", "MASTER")
    fb.state_changed("VI_A", "MASTER")
    assert holds == ["catching up on connections", ""]
    fb._requested(wire.Request(2, 7), ("192.168.72.132", 8850))
    assert len(fb._replaying) == 1
    await asyncio.gather(*fb._replaying)
    await fb.stop()


async def test_an_added_instance_on_a_missing_heartbeat_interface_keeps_every_running_instance(
        env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the VRRP process refuses to add an instance whose heartbeat interface does not exist (a tracked one
    # missing: that instance runs in FAULT): restarting it would release every instance's addresses for nothing
    import havs.vrrp_supervisor

    log = ListLog()
    d, task = start(write(env, TWO), log)
    await until(lambda: log.named("daemon.ready"))
    [vrrp] = FakeVrrp.made
    monkeypatch.setattr(havs.vrrp_supervisor, "interface_exists", lambda name: name != "eth9")
    nodes = "{client: eth0, server: eth1}"
    added = TWO.replace(nodes, "{client: eth0, server: eth1, uplink: eth9}").replace("vrrp_sync_groups:", """\
  - name: VI_C
    router_id: 54
    interface: uplink
    addresses: [{address: 192.168.0.110/24, interface: client}]
vrrp_sync_groups:""")
    write(env, added)
    await d.control.handle({"command": "reload"})
    await until(lambda: log.named("config.reloaded"))
    assert log.named("config.reloaded")[0]["vrrp"] == "kept running instance"
    assert log.named("config.vrrp_not_applied")[0]["interfaces"] == ["eth9"]
    assert d.vrrp.process is vrrp and FakeVrrp.made == [vrrp] and not any(c.startswith("stop") for c in vrrp.calls)
    assert await stop(d, task) == 0
