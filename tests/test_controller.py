"""The controller core without sockets or clocks: requests, drains, slow-start ramps, reload plans, the
sync-daemon policy and the typed status snapshot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fakes import FakeHealth

from havs.core.config import parse_config, select_node
from havs.core.controller import (
    Controller,
    MaintenanceRequest,
    ReloadRequest,
    RequestError,
    StatusRequest,
    SyncAction,
    parse_request,
    sync_daemon_actions,
)
from havs.core.desired import RealServerKey
from havs.core.health import HealthChanged
from havs.core.ipvs_table import DestinationKey, ServiceKey, SyncDaemon
from havs.core.model import ConnectionSync, NodeView
from havs.core.status import StatusSnapshot, render_status
from havs.core.vocab import Forwarding

REPO = Path(__file__).resolve().parents[1]
SEED = (REPO / "etc/havs.yaml").read_text()
SVC = "TCP 192.168.0.108:80"
VIP = ServiceKey.tcp("192.168.0.108", 80)
RS1, RS2 = RealServerKey(SVC, "192.168.72.128:80"), RealServerKey(SVC, "192.168.72.129:80")


def view(text: str = SEED) -> NodeView:
    return select_node(parse_config(text), "lvs1", "lvs1")


def test_forwarding_has_one_vocabulary() -> None:
    for word, fwd, kernel, listing, switch in (("nat", "masq", 0, "Masq", "-m"), ("dr", "route", 3, "Route", "-g"),
                                               ("tun", "tunnel", 2, "Tunnel", "-i")):
        f = Forwarding.from_config(word)
        assert (f, f.kernel, f.ipvsadm, f.ipvsadm_switch, f.config_word) == (fwd, kernel, listing, switch, word)
        assert Forwarding.from_kernel(kernel) is f
    assert Forwarding.from_kernel(1) is Forwarding.LOCAL and Forwarding.LOCAL.config_word is None
    with pytest.raises(ValueError, match="nat, dr, tun"):
        Forwarding.from_config("masq")


def test_real_server_key_is_the_health_checks_key_and_the_tables() -> None:
    assert RS1 == (SVC, "192.168.72.128:80") and hash(RS1) == hash((SVC, "192.168.72.128:80"))
    assert RS1.destination == DestinationKey("192.168.72.128", 80) and RS1.host == "192.168.72.128"
    v6 = RealServerKey("TCP [2001:db8::1]:80", "[2001:db8::2]:8080")
    assert v6.destination == DestinationKey("2001:db8::2", 8080) and v6.host == "2001:db8::2"
    assert str(RS1) == "TCP 192.168.0.108:80 192.168.72.128:80"


@pytest.mark.parametrize(("raw", "parsed"), [
    ({"command": "status"}, StatusRequest()),
    ({"command": "reload"}, ReloadRequest(force=False)),
    ({"command": "reload", "force": True}, ReloadRequest(force=True)),
    ({"command": "drain", "server": "192.168.72.128"}, MaintenanceRequest(True, "192.168.72.128")),
    ({"command": "enable", "server": "192.168.72.128:80", "service": SVC},
     MaintenanceRequest(False, "192.168.72.128:80", SVC)),
])
def test_requests_are_parsed_into_types(raw: dict[str, Any], parsed: object) -> None:
    assert parse_request(raw) == parsed


@pytest.mark.parametrize(("raw", "error"), [
    ({"command": "explode"}, "unknown command 'explode'"),
    ({}, "unknown command None"),
    ({"command": "reload", "force": "yes"}, "force must be true or false, not 'yes'"),
])
def test_bad_requests_name_the_problem(raw: dict[str, Any], error: str) -> None:
    with pytest.raises(RequestError) as e:
        parse_request(raw)
    assert str(e.value) == error


def test_drains_match_by_address_or_address_and_port_and_take_weight_0() -> None:
    c = Controller(view())
    reply, changed = c.maintenance(MaintenanceRequest(True, "192.168.72.128"))
    assert reply == {"ok": True, "servers": [f"{SVC} 192.168.72.128:80"]} and changed == [RS1]
    assert c.match("192.168.72.129:80", "TCP 10.0.0.1:80") == []
    assert c.maintenance(MaintenanceRequest(True, "10.9.9.9"))[0] == {
        "ok": False, "error": "no real server '10.9.9.9' in the config"}
    health = FakeHealth(c.config.virtual_services).states()
    weights = {str(d.key): d.weight for d in c.plan(health, 0.0).table.destinations(VIP)}
    assert weights == {"192.168.72.128:80": 0, "192.168.72.129:80": 1}
    c.maintenance(MaintenanceRequest(False, "192.168.72.128:80"))
    assert c.drained == set()


def test_a_recovered_server_ramps_up_and_a_first_verdict_does_not() -> None:
    c = Controller(view(SEED.replace("slow_start: 0", "slow_start: 10").replace("weight: 1", "weight: 11")))
    health = FakeHealth(c.config.virtual_services)
    c.health_changed(HealthChanged("192.168.72.129:80", "unknown", "up", "ok", 2, 0.001, SVC, at=100.0))
    c.health_changed(HealthChanged("192.168.72.128:80", "down", "up", "ok", 2, 0.001, SVC, at=100.0))
    desired = c.plan(health.states(), 105.0)
    weights = {str(d.key): d.weight for d in desired.table.destinations(VIP)}
    assert weights == {"192.168.72.128:80": 6, "192.168.72.129:80": 11}  # halfway up the ramp; full
    assert desired.next_change == pytest.approx(106.0)


def test_reload_plan_names_added_and_removed_servers_and_a_vrrp_change_against_the_running_instance() -> None:
    c = Controller(view())
    new = view(SEED.replace("192.168.72.129", "192.168.72.140").replace("router_id: 51", "router_id: 52"))
    plan = c.reload(new, {})
    assert plan.added == {RealServerKey(SVC, "192.168.72.140:80")} and plan.removed == {RS2}
    assert plan.vrrp_changed and plan.needs_ipvs
    # the VRRP part was not applied (vrrp_view stays behind): the same file reloaded again still differs
    assert c.reload(new, {}).vrrp_changed
    c.vrrp_view = new
    assert not c.reload(new, {}).vrrp_changed
    assert c.vrrp_interfaces(new) == ["eth1"]  # the heartbeat: a missing tracked or address link is FAULT


def test_reload_plan_says_what_else_the_daemon_must_do() -> None:
    c = Controller(view())
    plan = c.reload(view(), {})
    assert (plan.resync, plan.restart_needed, plan.state_dir_moved) == (False, (), False)
    sync = SEED.replace("  garp:\n", "  connection_sync: {interface: server}\n  garp:\n", 1)
    moved = sync.replace("/var/lib/havs", "/srv/havs").replace("/run/havs/control.sock", "/run/h.sock").replace(
        "state_dir:", "metrics_listen: 127.0.0.1:9101\n  state_dir:")
    plan = c.reload(view(moved), {})
    # sync threads are re-checked on every reload that has them (a failed start earlier is retried)
    assert plan.resync and plan.state_dir_moved
    assert plan.restart_needed == ("control_socket", "metrics_listen")
    assert c.reload(view(moved), {}).resync and not c.reload(view(moved), {}).restart_needed
    bound = moved.replace("state_dir:", "health_max_in_flight: 32\n  state_dir:")
    assert c.reload(view(bound), {}).restart_needed == ("health_max_in_flight",)  # read at start only


def test_sync_actions_follow_the_latest_vrrp_state() -> None:
    c = Controller(view(SEED.replace("  garp:\n", "  connection_sync: {interface: server, mode: follow}\n  garp:\n")))
    assert c.syncs_connections and not Controller(view()).syncs_connections
    assert c.sync_actions([]) == [SyncAction("start", "backup", "eth1", 0)]  # every director starts as a backup
    c.vrrp_changed("VI_1", "MASTER")
    assert c.sync_actions([SyncDaemon("backup", "eth1", 0)]) == [
        SyncAction("start", "master", "eth1", 0), SyncAction("stop", "backup", "eth1", 0)]


def test_the_reload_guard_is_set_by_the_running_config() -> None:
    c = Controller(view(SEED.replace("state_dir:", "reload_max_removed: 0.25\n  state_dir:")))
    seen: list[float] = []

    def judge(old: Any, new: Any, *, max_removed: float) -> list[str]:
        seen.append(max_removed)
        return ["every real server of TCP 192.168.0.108:80 removed"] if not new.virtual_services else []

    mid_copy = view(SEED.split("virtual_services:")[0].replace("state_dir:", "reload_max_removed: 1\n  state_dir:"))
    assert c.review_reload(mid_copy, judge) == ["every real server of TCP 192.168.0.108:80 removed"]
    assert seen == [0.25]


def test_sync_daemon_policy() -> None:
    both, follow = ConnectionSync(interface="server", sync_id=7), ConnectionSync(interface="server", mode="follow")
    assert sync_daemon_actions(both, "eth1", "BACKUP", []) == [
        SyncAction("start", "master", "eth1", 7), SyncAction("start", "backup", "eth1", 7)]
    running = [SyncDaemon("backup", "eth1", 0)]
    assert sync_daemon_actions(follow, "eth1", "MASTER", running) == [
        SyncAction("start", "master", "eth1", 0), SyncAction("stop", "backup", "eth1", 0)]
    assert sync_daemon_actions(follow, "eth1", "BACKUP", running) == []
    assert sync_daemon_actions(follow, "eth1", "BACKUP", [SyncDaemon("backup", "eth9", 0)]) == [
        SyncAction("stop", "backup", "eth9", 0), SyncAction("start", "backup", "eth1", 0)]
    assert sync_daemon_actions(None, None, "MASTER", running) == []  # not configured: not ours to touch


def test_status_is_typed_carries_scheduler_flags_and_round_trips() -> None:
    text = SEED.replace("    scheduler: rr\n", "    scheduler: sh\n    scheduler_flags: [sh-port]\n"
                        "    persistence: {timeout: 300}\n")
    c = Controller(view(text))
    health = FakeHealth(c.config.virtual_services)
    health.up[tuple(RS2)] = False  # type: ignore[index]
    c.plan(health.states(), 10.0)
    snap = c.status(now=110.0, version="9.9", pid=42, started=10.0, config_file="havs.yaml",
                    health=health.snapshot(), vrrp={"state": "MASTER", "since": 98.0, "priority": 150,
                                                    "adverts_sent": 3, "faulty_interfaces": []})
    assert isinstance(snap, StatusSnapshot) and snap.uptime == 100.0
    [svc] = snap.services
    assert svc.flags == ("(sh-port)", "persistent 300") and svc.scheduler == "sh"
    assert [(rs.server, rs.forwarding, rs.effective_weight, rs.health) for rs in svc.real_servers] == [
        ("192.168.72.128:80", Forwarding.MASQ, 1, "up"), ("192.168.72.129:80", Forwarding.MASQ, None, "down")]
    [vrrp] = snap.vrrp  # a push of one instance's mapping (a child before several instances): the first instance
    assert vrrp.instance == "VI_1" and vrrp.since_ago == 12.0 and vrrp.extra == {"faulty_interfaces": []}
    wire = snap.to_dict()
    assert wire["services"][0]["flags"] == ["(sh-port)", "persistent 300"]
    assert wire["services"][0]["real_servers"][0]["forwarding"] == "masq"
    assert StatusSnapshot.from_dict(wire) == snap
    lines = render_status(snap).splitlines()
    assert "TCP  192.168.0.108:80      sh       (sh-port) persistent 300" in lines
    assert "  -> 192.168.72.129:80            Masq    -/1    -          -         down   refused" in lines
