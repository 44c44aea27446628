"""The desired table: config + health + maintenance + removals → what IPVS should hold."""

from __future__ import annotations

from dataclasses import replace

from two_instances import RS_A, RS_B, RS_FWM, TWO

from havs.core.config import parse_config
from havs.core.desired import RealServerKey, Removals, ServerState, build_desired
from havs.core.ipvs_table import Destination, DestinationKey, DestinationStats, IpvsTable, ServiceKey

CONFIG = """\
nodes:
  lvs1: {interfaces: {client: eth0}}
virtual_services:
  - address: 192.168.0.108
    port: 80
    scheduler: wrr
    persistence: {timeout: 300, netmask: 255.255.255.0}
    slow_start: 10
    real_servers:
      - {address: 192.168.72.128, weight: 5}
      - {address: 192.168.72.129, port: 8080, weight: 3, forwarding: dr}
"""
RS2_LINE = "      - {address: 192.168.72.129, port: 8080, weight: 3, forwarding: dr}\n"
VIP = ServiceKey.tcp("192.168.0.108", 80)
RS1, RS2 = ("TCP 192.168.0.108:80", "192.168.72.128:80"), ("TCP 192.168.0.108:80", "192.168.72.129:8080")


def dests(table: IpvsTable) -> dict[str, tuple[str, int]]:
    return {str(d.key): (d.forwarding, d.weight) for d in table.destinations(VIP)}


def test_all_up_without_health_gives_the_configured_table() -> None:
    desired = build_desired(parse_config(CONFIG))
    svc = desired.table[VIP].service
    assert (svc.scheduler, svc.persistent, svc.timeout, svc.netmask) == ("wrr", True, 300, "255.255.255.0")
    assert dests(desired.table) == {"192.168.72.128:80": ("masq", 5), "192.168.72.129:8080": ("route", 3)}
    assert desired.managed == {VIP} and desired.next_change is None


def test_down_server_is_removed_and_recovered_one_ramps_up() -> None:
    config = parse_config(CONFIG)
    health = {RS1: ServerState(up=False), RS2: ServerState(up=True, since_up=100.0)}
    desired = build_desired(config, health, now=105.0)
    assert dests(desired.table) == {"192.168.72.129:8080": ("route", 2)}  # 1 + (3-1)*5/10
    assert desired.next_change is not None and 105.0 < desired.next_change <= 110.0
    assert dests(build_desired(config, health, now=111.0).table) == {"192.168.72.129:8080": ("route", 3)}


def test_inhibit_keeps_the_server_at_weight_zero_and_drain_zeroes_it() -> None:
    config = parse_config(CONFIG.replace("    slow_start: 10\n", "    on_down: inhibit\n"))
    desired = build_desired(config, {RS1: ServerState(up=False)}, drained=frozenset({RS2}))
    assert dests(desired.table) == {"192.168.72.128:80": ("masq", 0), "192.168.72.129:8080": ("route", 0)}


def test_quorum_lost_brings_in_the_sorry_server_and_lowers_priority() -> None:
    config = parse_config(CONFIG.replace(
        "    slow_start: 10\n",
        "    quorum: {min_weight: 4, sorry_server: {address: 192.168.72.200, port: 80}, priority_decrement: 60}\n",
    ))
    desired = build_desired(config, {RS1: ServerState(up=False)})
    assert desired.quorum_lost == ("TCP 192.168.0.108:80",) and desired.priority_decrement == {}  # no VRRP
    assert dests(desired.table) == {"192.168.72.129:8080": ("route", 3), "192.168.72.200:80": ("masq", 1)}
    assert build_desired(config, {}).quorum_lost == ()
    # its one instance floats another address: the service counts against it
    quorum = CONFIG.replace("    slow_start: 10\n", "    quorum: {min_weight: 4, priority_decrement: 60}\n")
    with_vrrp = parse_config(quorum + VRRP)
    assert build_desired(with_vrrp, {RS1: ServerState(up=False)}).priority_decrement == {"VI_1": 60}
    assert build_desired(with_vrrp, {}).priority_decrement == {"VI_1": 0}


VRRP = """\
vrrp:
  router_id: 51
  interface: client
  addresses: [{address: 192.168.0.200/24, interface: client}]
"""


def test_a_lost_quorum_lowers_the_instance_floating_the_service_or_every_instance() -> None:
    config = parse_config(TWO)
    up = {RS_A: ServerState(up=True), RS_B: ServerState(up=True), RS_FWM: ServerState(up=True)}
    assert build_desired(config, up).priority_decrement == {"VI_A": 0, "VI_B": 0, "GW": 0}
    # VIP A's only server down: only VI_A (which floats 192.168.0.108) gives way
    a_down = {**up, RS_A: ServerState(up=False)}
    assert build_desired(config, a_down).priority_decrement == {"VI_A": 50, "VI_B": 0, "GW": 0}
    b_down = {**up, RS_B: ServerState(up=False)}
    assert build_desired(config, b_down).priority_decrement == {"VI_A": 0, "VI_B": 30, "GW": 0}
    # a fwmark service floats in no instance: every instance gives way, added to what each has lost
    all_down = {k: ServerState(up=False) for k in up}
    assert build_desired(config, all_down).priority_decrement == {"VI_A": 70, "VI_B": 50, "GW": 20}
    # capped at 254 per instance
    big = parse_config(TWO.replace("priority_decrement: 50", "priority_decrement: 250"))
    assert build_desired(big, all_down).priority_decrement == {"VI_A": 254, "VI_B": 50, "GW": 20}
    # an address no instance floats counts against every instance, as a fwmark does
    elsewhere = parse_config(TWO.replace("  - address: 192.168.0.109\n", "  - address: 192.168.0.110\n"))
    assert build_desired(elsewhere, b_down | {(RS_B[0].replace(".109", ".110"), RS_B[1]): ServerState(up=False)}
                         ).priority_decrement == {"VI_A": 30, "VI_B": 30, "GW": 30}


def test_removed_server_drains_then_is_deleted() -> None:
    old = build_desired(parse_config(CONFIG))
    new = build_desired(parse_config(CONFIG.replace(RS2_LINE, "")))
    removals = Removals()
    gone = DestinationKey("192.168.72.129", 8080)
    busy = {(VIP, gone): DestinationStats(active_conns=2)}
    actual = IpvsTable([(old.table[VIP].service, old.table.destinations(VIP))], destination_stats=busy)
    step1 = removals.apply(new, actual, now=0.0, drain_timeout=30)
    assert dests(step1.table)["192.168.72.129:8080"] == ("route", 0)  # weight 0 first
    zeroed = [replace(d, weight=0) if d.key == gone else d for d in old.table.destinations(VIP)]
    actual = IpvsTable([(old.table[VIP].service, zeroed)], destination_stats=busy)
    assert "192.168.72.129:8080" in dests(removals.apply(new, actual, now=10.0, drain_timeout=30).table)
    assert "192.168.72.129:8080" not in dests(removals.apply(new, actual, now=30.0, drain_timeout=30).table)


def test_removed_server_without_connections_goes_once_at_weight_zero() -> None:
    old = build_desired(parse_config(CONFIG))
    new = build_desired(parse_config(CONFIG.replace(RS2_LINE, "")))
    removals = Removals()
    actual = IpvsTable([(old.table[VIP].service, old.table.destinations(VIP))])
    assert dests(removals.apply(new, actual, 0.0, 300).table)["192.168.72.129:8080"] == ("route", 0)
    zeroed = [replace(d, weight=0) for d in old.table.destinations(VIP)]
    actual = IpvsTable([(old.table[VIP].service, zeroed)])
    assert "192.168.72.129:8080" not in dests(removals.apply(new, actual, 1.0, 300).table)


def test_health_removed_server_is_not_drained() -> None:
    desired = build_desired(parse_config(CONFIG), {RS1: ServerState(up=False)})
    actual = IpvsTable([(desired.table[VIP].service, [Destination.at("192.168.72.128", 80, weight=5)])])
    assert "192.168.72.128:80" not in dests(Removals().apply(desired, actual, 0.0, 300).table)


def test_service_removed_by_reload_drains_then_goes() -> None:
    old = build_desired(parse_config(CONFIG))
    new = build_desired(parse_config(CONFIG.split("virtual_services:")[0] + "virtual_services: []\n"))
    removals = Removals()
    removals.retire(old, new)
    actual = old.table
    step = removals.apply(new, actual, 0.0, 300)
    assert VIP in step.managed and {d.weight for d in step.table.destinations(VIP)} == {0}
    zeroed = IpvsTable([(old.table[VIP].service, step.table.destinations(VIP))])
    step = removals.apply(new, zeroed, 1.0, 300)
    assert VIP in step.managed and VIP not in step.table  # empty: the diff deletes the service
    assert VIP not in removals.apply(new, IpvsTable(), 2.0, 300).managed


def test_a_bgp_announced_service_lowers_no_vrrp_instance() -> None:
    # its VIP is on every director and its failover is the BGP withdrawal (core/bgp.servable): a lost quorum
    # must not move the VRRP instances' addresses (a NAT VIP, the gateway) to the peer
    text = """\
nodes:
  d1: {priority: 150, interfaces: {up: eth0}, router_id: 10.1.0.11}
  d2: {priority: 100, interfaces: {up: eth0}, router_id: 10.1.0.12}
bgp:
  asn: 65001
  neighbors: [{address: 10.1.0.1, asn: 65000}]
vrrp:
  router_id: 51
  interface: up
  addresses: [{address: 10.1.0.100/24, interface: up}]
virtual_services:
  - address: 203.0.113.10
    port: 80
    scheduler: mh
    forwarding: dr
    on_down: inhibit
    announce: bgp
    quorum: {min_weight: 1, priority_decrement: 50}
    real_servers: [{address: 10.2.0.21}]
  - address: 10.1.0.100
    port: 80
    scheduler: rr
    quorum: {min_weight: 1, priority_decrement: 30}
    real_servers: [{address: 10.2.0.22}]
"""
    config = parse_config(text)
    bgp_rs, vrrp_rs = (RealServerKey.of(vs, vs.real_servers[0]) for vs in config.virtual_services)
    down = build_desired(config, {bgp_rs: ServerState(up=False), vrrp_rs: ServerState(up=True)})
    assert down.quorum_lost == ("TCP 203.0.113.10:80",) and down.priority_decrement == {"VI_1": 0}
    both = build_desired(config, {bgp_rs: ServerState(up=False), vrrp_rs: ServerState(up=False)})
    assert both.priority_decrement == {"VI_1": 30}
