"""The seed topology on the host kernel: namespaces, bridges, addresses, routing,
neighbour tables and the client loop (no IPVS here: see test_lab_seed.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from havs.edge.ipvs import IpvsSocket
from havs.edge.netns import run_in_netns
from havs.errors import IpvsUnavailable
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
    ipvs_available,
    list_netns,
    wait_until,
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
    wait_until("the client's ARP entry for the VIP shows lvs2",
               lambda: lab.neigh("client", VIP) == lab.mac("lvs2", "eth0"), 5)
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


def _netns_inode(path: str) -> int:
    return os.stat(path).st_ino


def test_netns_helper_runs_in_the_namespace_and_never_creates_one(lab: SeedLab) -> None:
    """havs.edge.netns, the one helper the daemon's IPVS socket and the lab both use."""
    ns = lab.ns("rs1")
    want = _netns_inode(f"/run/netns/{ns}")
    assert _netns_inode("/proc/self/ns/net") != want
    assert run_in_netns(ns, lambda: _netns_inode("/proc/thread-self/ns/net")) == want
    assert run_in_netns(f"/run/netns/{ns}", lambda: _netns_inode("/proc/thread-self/ns/net")) == want  # a path
    # a thread the function starts inherits the namespace
    box: list[int] = []

    def spawn() -> None:
        t = threading.Thread(target=lambda: box.append(_netns_inode("/proc/thread-self/ns/net")))
        t.start()
        t.join()

    run_in_netns(ns, spawn)
    assert box == [want]
    # the caller's thread never moved, and errors come back to it
    assert _netns_inode("/proc/thread-self/ns/net") == _netns_inode("/proc/self/ns/net") != want
    with pytest.raises(ZeroDivisionError):
        run_in_netns(ns, lambda: 1 // 0)
    missing = f"{lab.prefix}no-such-ns"
    with pytest.raises(FileNotFoundError):
        run_in_netns(missing, lambda: None)
    assert missing not in list_netns()


def test_ipvs_socket_opens_inside_a_namespace(lab: SeedLab) -> None:
    """The socket is made in the namespace's thread; a missing namespace is an error, never created."""
    missing = f"{lab.prefix}no-such-ns"
    with pytest.raises(FileNotFoundError):
        IpvsSocket(missing).open_now()
    assert missing not in list_netns()
    sock = IpvsSocket(lab.ns("lvs1"))
    if ipvs_available():
        with sock:
            assert sock.family > 0
    else:  # the host kernel has no IPVS (the UML lab has): said plainly
        with pytest.raises(IpvsUnavailable, match=r"this kernel has no IPVS"):
            sock.open_now()


def _exchange(lab: SeedLab, node: str, address: str, request: bytes) -> bytes:
    """Send ``request`` on one connection from ``node``; everything the server says until it closes."""
    def talk() -> bytes:
        with socket.create_connection((address, 80), timeout=5) as s:
            s.sendall(request)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks)
    return run_in_netns(lab.ns(node), talk)


def test_web_server_module_speaks_like_the_seed_httpd(lab: SeedLab) -> None:
    """integration/webserver.py as the lab runs it: keep-alive for HTTP/1.1, close for 1.0 and on request,
    404 outside the docroot, HEAD without a body, one log line per request."""
    ip = REAL_SERVERS["rs1"]
    # pipelined: the first keeps the connection, the second asks to close it
    two = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    data = _exchange(lab, "rs2", ip, two)
    first, _, second = data.partition(b"lvs-web1\n")
    assert first.startswith(b"HTTP/1.1 200 OK") and b"Connection: keep-alive" in first
    assert second.startswith(b"HTTP/1.1 404 Not Found") and b"Connection: close" in second
    data = _exchange(lab, "rs2", ip, b"HEAD / HTTP/1.0\r\n\r\n")
    assert data.startswith(b"HTTP/1.0 200 OK") and b"Connection: close" in data and data.endswith(b"\r\n\r\n")
    data = _exchange(lab, "rs2", ip, b"GET /../../etc/passwd HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 404")
    log = lab.web_log("rs1")
    assert "GET / HTTP/1.1 200" in log and "GET /nope HTTP/1.1 404" in log and "HEAD / HTTP/1.0 200" in log
    # keep_alive=False: every response closes the connection, as some servers do
    lab.start_web("rs1", keep_alive=False)
    data = _exchange(lab, "rs2", ip, two)
    assert data.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in data and b"404" not in data
