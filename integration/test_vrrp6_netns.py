"""VRRPv3 over IPv6 (RFC 9568) between two directors in network namespaces on the host kernel (root).

The seed topology (SeedLab) with IPv6 added here, nothing changed for its IPv4 users: lvs1 (150) and lvs2
(100) float the VIP fd00::108/64 on eth0 (client LAN) and the gateway fd72::130/64 on eth1 (server LAN),
heartbeat on eth1 from its link-local address to ff02::12 (or unicast between fd72::131 and fd72::132).
The client and the real server must follow a takeover through unsolicited neighbour advertisements.
Times are printed (run with -s), never asserted tightly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from integration.test_vrrp_netns import KEEPALIVED, PRIORITY, Pair, block_vrrp, unblock_vrrp, wait_until
from integration.topology import DIRECTORS, SeedLab

pytestmark = pytest.mark.netns

if os.geteuid() != 0:
    pytest.skip("needs root for network namespaces", allow_module_level=True)

VIP6, GW6 = "fd00::108", "fd72::130"
VIP6_CIDR, GW6_CIDR = f"{VIP6}/64", f"{GW6}/64"
STATIC6 = {  # node → (interface, address): the hosts' own IPv6 addresses
    "client": [("eth0", "fd00::100/64")],
    "rs1": [("eth0", "fd72::1/64")],
    "lvs1": [("eth1", "fd72::131/64")],
    "lvs2": [("eth1", "fd72::132/64")],
}
SRC6 = {"lvs1": "fd72::131", "lvs2": "fd72::132"}


def config6(interval: float, notify_dir: Path, *, unicast: bool = False, preempt: bool = True,
            link_local_peers: tuple[str, ...] = ()) -> str:
    """unicast: between the directors' global addresses (unicast_src set); link_local_peers: unicast to
    these, each director sending from its link-local address (no unicast_src)."""
    peers = f"[{SRC6['lvs1']}, {SRC6['lvs2']}]" if unicast else f"[{', '.join(link_local_peers)}]"
    nodes = "\n".join(
        f"  {n}:\n    priority: {PRIORITY[n]}\n    interfaces: {{client: eth0, server: eth1}}"
        + (f"\n    unicast_src: {SRC6[n]}" if unicast else "")
        for n in DIRECTORS
    )
    hook = f'echo "$HAVS_STATE $HAVS_PREVIOUS $HAVS_REASON" >> {notify_dir}/$HAVS_NODE'
    return f"""
settings: {{control_socket: CONTROL, state_dir: {notify_dir}/state}}
nodes:
{nodes}
vrrp:
  router_id: 51
  advert_interval: {interval}
  preempt: {str(preempt).lower()}
  interface: server
  unicast_peers: {peers}
  addresses:
    - {{address: {VIP6_CIDR}, interface: client}}
    - {{address: {GW6_CIDR}, interface: server}}
  track_interfaces: [client, server]
  garp: {{burst: 3, burst_interval: 0.01, refresh: 10}}
  notify:
    master: [/bin/sh, -c, '{hook}']
    backup: [/bin/sh, -c, '{hook}']
"""


class Pair6(Pair):
    def __init__(self, lab: SeedLab, interval: float, **cfg: Any) -> None:
        super().__init__(lab, interval)
        self.config.write_text(config6(interval, self.notify_dir, **cfg))

    def holds(self, node: str) -> tuple[bool, bool]:
        return (VIP6_CIDR in self.lab.addresses(node, "eth0", 6), GW6_CIDR in self.lab.addresses(node, "eth1", 6))


def _ip6(lab: SeedLab, node: str, *args: str, check: bool = True) -> None:
    subprocess.run(["ip", "-6", "-n", lab.ns(node), *args], check=check, capture_output=True)


def _tentative(lab: SeedLab, node: str) -> bool:
    return any("tentative" in a.get("flags", []) or a.get("tentative")
               for i in lab.ip_json(node, "-6", "addr", "show") for a in i.get("addr_info", []))


def setup_ipv6(lab: SeedLab) -> None:
    """Static IPv6 addresses (nodad), no DAD on the lab's links, directors forward IPv6 (as they route)."""
    for node in ("client", "rs1", *DIRECTORS):
        for key in ("all", "default", "eth0", "eth1"):
            if node in ("client", "rs1") and key == "eth1":
                continue
            lab.sysctl(node, f"net.ipv6.conf.{key}.accept_dad", "0")
        if node in DIRECTORS:
            lab.sysctl(node, "net.ipv6.conf.all.forwarding", "1")
        for ifname, cidr in STATIC6[node]:
            _ip6(lab, node, "addr", "replace", cidr, "dev", ifname, "nodad")
    for node in ("client", "rs1", *DIRECTORS):
        wait_until(f"{node}: link-local addresses past DAD", lambda n=node: not _tentative(lab, n), 5)


def learn6(lab: SeedLab) -> None:
    """The client gets a neighbour entry for the VIP and the real server one for the gateway."""
    lab.exec("client", ["ping", "-6", "-c1", "-W1", VIP6])
    lab.exec("rs1", ["ping", "-6", "-c1", "-W1", GW6])


@pytest.fixture(scope="module")
def lab6() -> Iterator[SeedLab]:
    with SeedLab() as lab:
        setup_ipv6(lab)
        yield lab


@pytest.fixture
def fresh6(lab6: SeedLab) -> Iterator[SeedLab]:
    unblock_vrrp(lab6)
    for node in DIRECTORS:
        lab6.recover(node)  # IPv4 baseline, links up (IPv6 addresses went with the links)
        _ip6(lab6, node, "addr", "del", VIP6_CIDR, "dev", "eth0", check=False)
        _ip6(lab6, node, "addr", "del", GW6_CIDR, "dev", "eth1", check=False)
    setup_ipv6(lab6)
    for node in ("client", "rs1"):
        _ip6(lab6, node, "neigh", "flush", "all", check=False)
    yield lab6


def elect6(lab: SeedLab, interval: float, **cfg: Any) -> Pair6:
    pair = Pair6(lab, interval, **cfg)
    pair.start("lvs1")
    wait_until("lvs1 holds VIP and gateway", lambda: pair.holds("lvs1") == (True, True), 3 * interval + 5)
    pair.start("lvs2")
    wait_until("lvs2 started", lambda: bool(pair.events("lvs2", "vrrp.state")), 5)
    time.sleep(3 * interval + 0.2)
    assert pair.holds("lvs2") == (False, False)
    assert [e["to"] for e in pair.events("lvs2", "vrrp.state")] == ["BACKUP"]
    assert not pair.events("lvs2", "vrrp.advert_dropped")
    return pair


def _na_follow(lab: SeedLab, pair: Pair6, node: str, within: float) -> float:
    return wait_until(
        f"client and real server follow {node}'s MAC",
        lambda: lab.neigh("client", VIP6) == pair.mac(node, "eth0") and lab.neigh("rs1", GW6) == pair.mac(node, "eth1"),
        within,
    )


def link_local(lab: SeedLab, node: str) -> str:
    return next(str(a["local"]) for i in lab.ip_json(node, "-6", "addr", "show", "dev", "eth1")
                for a in i.get("addr_info", []) if str(a["local"]).startswith("fe80:"))


@pytest.mark.parametrize("mode", ["multicast", "unicast", "unicast-link-local"])
def test_v6_crash_failover_neighbours_follow_by_na(fresh6: SeedLab, mode: str) -> None:
    interval = 0.1
    unicast = mode == "unicast"
    lls = tuple(link_local(fresh6, n) for n in DIRECTORS) if mode == "unicast-link-local" else ()
    pair = elect6(fresh6, interval, unicast=unicast, link_local_peers=lls)
    try:
        source = str(pair.events("lvs1", "vrrp.started")[0]["source"])
        assert pair.events("lvs1", "vrrp.started")[0]["mode"] == ("multicast" if mode == "multicast" else "unicast")
        if unicast:
            assert source == SRC6["lvs1"]
        else:
            assert source.startswith("fe80:"), "multicast adverts go from the link-local address (RFC 9568)"
        learn6(fresh6)
        assert fresh6.neigh("client", VIP6) == pair.mac("lvs1", "eth0")
        assert fresh6.neigh("rs1", GW6) == pair.mac("lvs1", "eth1")
        os.killpg(pair.procs["lvs1"].pid, signal.SIGKILL)  # power loss: daemon and VRRP child together
        fresh6.links_down("lvs1")
        took = wait_until("lvs2 takes over", lambda: pair.holds("lvs2") == (True, True), 3 * interval + 3)
        na = _na_follow(fresh6, pair, "lvs2", 2.0)  # no neighbour probe could do this so fast: NA did
        print(f"\nIPv6 kill -9 at {interval}s {mode}: addresses on lvs2 after {took * 1000:.0f} ms, "
              f"neighbours +{na * 1000:.0f} ms")
        assert pair.events("lvs2", "vrrp.state")[-1]["to"] == "MASTER"
        wait_until("lvs2 logs its NA burst", lambda: bool(pair.events("lvs2", "vrrp.unsolicited_na")), 2)
        flags = {(a.get("flags", ()) and "nodad" in a["flags"]) or a.get("nodad")
                 for i in fresh6.ip_json("lvs2", "-6", "addr", "show", "dev", "eth0")
                 for a in i.get("addr_info", []) if a.get("local") == VIP6}
        assert flags == {True}, "the VIP was not added nodad"
        assert took >= 3 * interval - interval
    finally:
        pair.stop_all()


def test_v6_graceful_handover_before_master_down(fresh6: SeedLab) -> None:
    interval = 1.0
    pair = elect6(fresh6, interval)
    try:
        learn6(fresh6)
        assert fresh6.neigh("client", VIP6) == pair.mac("lvs1", "eth0")
        pair.signal("lvs1", signal.SIGTERM)
        took = wait_until("lvs2 takes over after priority 0", lambda: pair.holds("lvs2") == (True, True), 5)
        na = _na_follow(fresh6, pair, "lvs2", 2.0)
        print(f"\nIPv6 SIGTERM at {interval}s: lvs2 holds the addresses after {took * 1000:.0f} ms, "
              f"neighbours +{na * 1000:.0f} ms")
        assert took < 3 * interval  # the priority-0 advert was heard: no master_down wait
        assert pair.procs["lvs1"].wait(5) == 0
        assert pair.holds("lvs1") == (False, False)
    finally:
        pair.stop_all()


def test_v6_split_brain_heals_and_na_moves_every_cache_back(fresh6: SeedLab) -> None:
    interval = 0.1
    pair = elect6(fresh6, interval)
    try:
        learn6(fresh6)
        block_vrrp(fresh6)  # the directors no longer hear each other; both LANs still reach both
        wait_until("split brain: lvs2 becomes MASTER too", lambda: pair.holds("lvs2") == (True, True), 3)
        assert pair.holds("lvs1") == (True, True)
        # lvs2's takeover NA moved the client and the real server to lvs2: the heal must move them back
        _na_follow(fresh6, pair, "lvs2", 2.0)
        time.sleep(0.3)
        unblock_vrrp(fresh6)
        healed = wait_until("lvs2 steps down", lambda: pair.holds("lvs2") == (False, False), 2)
        na = _na_follow(fresh6, pair, "lvs1", 2.0)  # lvs1 heard a lower priority master: NA again
        print(f"\nIPv6 split brain heal at {interval}s: lvs2 released after {healed * 1000:.0f} ms, "
              f"neighbours on lvs1 +{na * 1000:.0f} ms")
        assert pair.events("lvs2", "vrrp.state")[-1]["to"] == "BACKUP"
        assert any(e.get("reason") != "master_down" for e in pair.events("lvs1", "vrrp.unsolicited_na"))
        time.sleep(0.3)
        assert pair.holds("lvs2") == (False, False) and pair.holds("lvs1") == (True, True)
    finally:
        pair.stop_all()


def keepalived6_conf(interval: float, priority: int) -> str:
    return f"""global_defs {{
    router_id havs_interop6
}}
vrrp_instance VI_6 {{
    state BACKUP
    interface eth1
    virtual_router_id 51
    version 3
    priority {priority}
    advert_int {interval:g}
    virtual_ipaddress {{
        {VIP6_CIDR} dev eth0
        {GW6_CIDR} dev eth1
    }}
}}
"""


def start_keepalived6(lab: SeedLab, node: str, interval: float, priority: int, pair: Pair) -> subprocess.Popen[bytes]:
    tag = f"{node}-{time.time_ns()}"
    conf = lab.workdir / f"keepalived6-{tag}.conf"
    conf.write_text(keepalived6_conf(interval, priority))
    argv = [str(KEEPALIVED), "-n", "-l", "-D", "-G", "-P", "-f", str(conf),
            "-p", str(lab.workdir / f"ka-{tag}.pid"), "-r", str(lab.workdir / f"ka-vrrp-{tag}.pid")]
    log = lab.workdir / f"keepalived6-{tag}.log"
    proc = lab.popen(node, argv, log)
    pair.procs[f"keepalived-{node}"] = proc
    pair.logs[f"keepalived-{node}"] = log
    return proc


@pytest.mark.skipif(KEEPALIVED is None, reason="keepalived not installed")
def test_v6_interop_with_keepalived(fresh6: SeedLab) -> None:
    """VRRPv3 over IPv6 both ways: keepalived obeys our adverts and we obey its (the kernel computes its
    checksum with the IPv6 pseudo-header; ours must match), and its NA moves the client as ours do."""
    interval = 1.0
    mdi = 3 * interval + 1
    pair = Pair6(fresh6, interval)
    try:
        pair.start("lvs1")
        wait_until("havs lvs1 MASTER", lambda: pair.holds("lvs1") == (True, True), mdi + 5)
        ka = start_keepalived6(fresh6, "lvs2", interval, 100, pair)
        time.sleep(mdi + 1)
        assert ka.poll() is None, "keepalived exited"
        assert pair.holds("lvs2") == (False, False), "keepalived did not accept havs's IPv6 adverts"
        learn6(fresh6)
        pair.signal("lvs1", signal.SIGTERM)
        took = wait_until("keepalived takes over", lambda: pair.holds("lvs2") == (True, True), mdi + 2)
        print(f"\nIPv6 v3: keepalived took over {took * 1000:.0f} ms after havs SIGTERM")
        assert pair.procs["lvs1"].wait(5) == 0 and pair.holds("lvs1") == (False, False)

        pair2 = Pair6(fresh6, interval, preempt=False)
        pair2.procs.update(pair.procs)
        pair2.logs.update(pair.logs)
        pair = pair2
        pair.start("lvs1")
        wait_until("havs started", lambda: bool(pair.events("lvs1", "vrrp.state")), 5)
        time.sleep(mdi + 1)
        assert pair.holds("lvs1") == (False, False), "havs did not accept keepalived's IPv6 adverts"
        assert [e["to"] for e in pair.events("lvs1", "vrrp.state")] == ["BACKUP"]
        assert not pair.events("lvs1", "vrrp.advert_dropped")
        fresh6.exec("client", ["ping", "-6", "-c1", "-W1", VIP6])
        assert fresh6.neigh("client", VIP6) == pair.mac("lvs2", "eth0")
        os.kill(ka.pid, signal.SIGTERM)
        took = wait_until("havs takes over", lambda: pair.holds("lvs1") == (True, True), mdi + 2)
        na = _na_follow(fresh6, pair, "lvs1", 2.0)
        print(f"IPv6 v3: havs took over {took * 1000:.0f} ms after keepalived SIGTERM, neighbours +{na * 1000:.0f} ms")
        assert took < 3 * interval, "havs waited for master_down: keepalived's priority 0 was not seen"
    finally:
        pair.stop_all()
