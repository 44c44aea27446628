"""The seed topology on the host kernel: namespaces, bridges, addresses, routing,
neighbour tables and the client loop (no IPVS here: see test_lab_seed.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from integration.topology import (
    BODIES,
    DIRECTORS,
    GATEWAY,
    LINKS,
    NODES,
    REAL_SERVERS,
    SWITCH,
    VIP,
    VIP_URL,
    ClientLoop,
    SeedLab,
    list_netns,
)

pytestmark = pytest.mark.netns


def _bridge_ports(lab: SeedLab, lan: str) -> set[str]:
    return {e["ifname"] for e in lab.ip_json(SWITCH, "link", "show", "master", lan)}


def test_addresses_bridges_and_routes(lab: SeedLab) -> None:
    for lk in LINKS:
        assert lab.addresses(lk.node, lk.ifname) == [lk.address], lk
    assert _bridge_ports(lab, "lan0") == {"client-eth0", "lvs1-eth0", "lvs2-eth0"}
    assert _bridge_ports(lab, "lan1") == {"lvs1-eth1", "lvs2-eth1", "rs1-eth0", "rs2-eth0"}
    for rs in REAL_SERVERS:
        (route,) = lab.ip_json(rs, "route", "show", "default")
        assert (route["gateway"], route["dev"]) == (GATEWAY, "eth0")
    for node in DIRECTORS:
        assert lab.exec(node, ["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "1"
    assert lab.exec("client", ["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "0"
    # Nothing of ours in the namespace we run in.
    ours = {f"{lk.node}-{lk.ifname}" for lk in LINKS} | {"lan0", "lan1"}
    here = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True).stdout)
    assert not ours & {e["ifname"] for e in here}


def test_real_servers_serve_seed_bodies(lab: SeedLab) -> None:
    for rs, ip in REAL_SERVERS.items():
        # From the real server's own namespace: no routing involved.
        assert lab.http_get(rs, f"http://{ip}/") == BODIES[rs] + "\n"
    lab.kill_web("rs1")
    assert not lab.web_running("rs1")
    with pytest.raises(ConnectionRefusedError):
        lab.http_get("rs1", "http://192.168.72.128/", timeout=2)
    assert lab.http_get("rs2", "http://192.168.72.129/") == "lvs-web2\n"


def test_client_reaches_real_servers_through_director(lab: SeedLab) -> None:
    # Plain routing (no IPVS on the host): lvs1 holds the VIP and the servers' gateway.
    lab.add_address("lvs1", "eth0", f"{VIP}/24")
    lab.add_address("lvs1", "eth1", f"{GATEWAY}/24")
    lab.exec("client", ["ip", "route", "add", "192.168.72.0/24", "via", VIP])
    for rs, ip in REAL_SERVERS.items():
        assert lab.http_get("client", f"http://{ip}/").strip() == BODIES[rs]
        # Replies went back through lvs1's gateway address.
        assert lab.neigh(rs, GATEWAY) == lab.mac("lvs1", "eth1")
    assert lab.neigh("client", VIP) == lab.mac("lvs1", "eth0")
    assert "GET / HTTP/1.0 200" in lab.web_log("rs1")
    # Without the gateway (and once rs1 forgets its MAC) the replies have nowhere to go.
    lab.del_address("lvs1", "eth1", f"{GATEWAY}/24")
    lab.exec("rs1", ["ip", "neigh", "flush", "all"])
    with pytest.raises(OSError):
        lab.http_get("client", "http://192.168.72.128/", timeout=1)


def test_neighbour_follows_gratuitous_arp(lab: SeedLab) -> None:
    if shutil.which("arping") is None:
        pytest.skip("arping (iputils-arping) not installed; scripts/setup installs it")
    lab.add_address("lvs1", "eth0", f"{VIP}/24")
    lab.start_web("lvs1", bind=VIP, body="lvs1")
    assert lab.http_get("client", VIP_URL) == "lvs1\n"
    assert lab.neigh("client", VIP) == lab.mac("lvs1", "eth0")
    # Move the VIP; the kernel ignores ARP updates within locktime (1 s) of the last one.
    lab.del_address("lvs1", "eth0", f"{VIP}/24")
    lab.add_address("lvs2", "eth0", f"{VIP}/24")
    lab.start_web("lvs2", bind=VIP, body="lvs2")
    time.sleep(1.2)
    lab.exec("lvs2", ["arping", "-q", "-U", "-c", "1", "-I", "eth0", "-s", VIP, VIP], check=False)
    deadline = time.monotonic() + 5
    while lab.neigh("client", VIP) != lab.mac("lvs2", "eth0") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lab.neigh("client", VIP) == lab.mac("lvs2", "eth0")
    assert lab.http_get("client", VIP_URL) == "lvs2\n"


def test_client_loop_counts_successes_and_outage(lab: SeedLab) -> None:
    lab.add_address("lvs1", "eth0", f"{VIP}/24")
    lab.start_web("lvs1", bind=VIP, body="director")
    with ClientLoop(lab, period=0.02, timeout=0.5) as loop:
        loop.wait_for(lambda s: s.successes >= 10, timeout=10)
        assert loop.stats().failures == 0
        cut = loop.now()
        lab.kill_web("lvs1")  # connection refused from now on
        loop.wait_for(lambda s: s.failures >= 5, timeout=10, since=cut)
        lab.start_web("lvs1")
        back = loop.wait_for(lambda s: s.successes >= 5, timeout=10, since=cut)
    stats = loop.stats()
    assert stats.per_backend == {"director": stats.successes}
    assert stats.failures >= 5
    assert 5 * 0.02 < stats.longest_outage < 10
    assert 0 < back.longest_outage <= stats.longest_outage
    assert all(s.start <= s.end for s in loop.samples)


def test_crash_takes_links_down_and_recover_resets(lab: SeedLab) -> None:
    lab.add_address("lvs1", "eth0", f"{VIP}/24")
    lab.start_web("lvs1", bind=VIP, body="director")
    assert lab.http_get("client", VIP_URL) == "director\n"
    # A stand-in daemon: crash() must kill -9 it.
    fake = lab.start_daemon("lvs1", ["sleep", "600"])
    lab.crash("lvs1")
    for lk in lab.links_of("lvs1"):
        (link,) = lab.ip_json("lvs1", "link", "show", "dev", lk.ifname)
        assert "UP" not in link["flags"]
    with pytest.raises(OSError):
        lab.http_get("client", VIP_URL, timeout=1)
    assert fake.poll() == -signal.SIGKILL
    assert lab.havs_proc("lvs1") is None
    lab.recover("lvs1")
    assert lab.addresses("lvs1", "eth0") == ["192.168.0.111/24"]
    (link,) = lab.ip_json("lvs1", "link", "show", "dev", "eth0")
    assert "UP" in link["flags"]


def test_teardown_removes_namespaces_and_processes(fresh_lab: SeedLab) -> None:
    names = [fresh_lab.ns(n) for n in (*NODES, SWITCH)]
    assert set(names) <= set(list_netns())
    assert fresh_lab.ns("client") != fresh_lab.ns("lvs1")
    procs = [fresh_lab.popen(n, ["sleep", "600"]) for n in NODES]
    fresh_lab.down()
    assert not set(names) & set(list_netns())
    assert all(p.poll() is not None for p in procs)
    assert not any(Path(f"/proc/{p.pid}").exists() and p.poll() is None for p in procs)
    fresh_lab.down()  # idempotent
    assert os.path.isdir(fresh_lab.workdir)  # caller-owned workdir is left alone
