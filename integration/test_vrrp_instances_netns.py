"""Several VRRP instances in one VRRP child, two directors in network namespaces on the host kernel (root).

Each director runs the daemon's handle on its VRRP child (`integration.vrrp_parent`: `havs.vrrp.VrrpProcess`,
the real child process, real raw sockets, rtnetlink, GARP and NA) in its namespace of the dual-stack seed
topology, without IPVS:
- active/active: instance A (VIP and gateway) prefers lvs1, instance B (a second VIP) prefers lvs2 by
  per-node priorities; a crash of lvs1 (kill -9: its VRRP child dies with it) leaves both on lvs2;
- a reload removing B on lvs1 (lvs2 down): B's address is released, A runs on untouched;
- a sync group of an IPv4 instance (heartbeat and VIP on the client LAN) and an IPv6 instance (heartbeat
  and gateway on the server LAN): the IPv6 instance's link going down on lvs1 moves both to lvs2, though
  the IPv4 instance's own link is fine, and both come back together when it is up again.
Takeover times are printed (run with -s), never asserted tightly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.logs import log_events
from integration.test_vrrp_netns import wait_until
from integration.topology import SeedLab

pytestmark = pytest.mark.netns

if os.geteuid() != 0:
    pytest.skip("needs root for network namespaces", allow_module_level=True)

REPO = Path(__file__).resolve().parent.parent
INTERVAL = 0.1

NODES = """\
nodes:
  lvs1: {priority: 150, interfaces: {client: eth0, server: eth1}}
  lvs2: {priority: 100, interfaces: {client: eth0, server: eth1}}
"""

ACTIVE_ACTIVE = NODES + f"""\
vrrp:
  - name: A
    router_id: 51
    priority: {{lvs1: 200, lvs2: 100}}
    advert_interval: {INTERVAL}
    interface: server
    addresses:
      - {{address: 192.168.0.108/24, interface: client}}
      - {{address: 192.168.72.130/24, interface: server}}
    garp: {{burst: 2, burst_interval: 0.01, refresh: 10}}
  - name: B
    router_id: 52
    priority: {{lvs1: 100, lvs2: 200}}
    advert_interval: {INTERVAL}
    interface: server
    addresses:
      - {{address: 192.168.0.109/24, interface: client}}
    garp: {{burst: 2, burst_interval: 0.01, refresh: 10}}
"""

DUAL_STACK = NODES + f"""\
vrrp:
  - name: V4
    router_id: 51
    advert_interval: {INTERVAL}
    interface: client
    addresses: [{{address: 192.168.0.108/24, interface: client}}]
  - name: V6
    router_id: 61
    advert_interval: {INTERVAL}
    interface: server
    addresses: [{{address: 'fd72::130/64', interface: server}}]
vrrp_sync_groups:
  - name: G
    instances: [V4, V6]
"""

HOLDS = {  # what each instance floats: (interface, CIDR, family)
    "A": [("eth0", "192.168.0.108/24", 4), ("eth1", "192.168.72.130/24", 4)],
    "B": [("eth0", "192.168.0.109/24", 4)],
    "V4": [("eth0", "192.168.0.108/24", 4)],
    "V6": [("eth1", "fd72::130/64", 6)],
}


class Directors:
    def __init__(self, lab: SeedLab, config: str) -> None:
        self.lab = lab
        self.config = lab.workdir / f"instances-{time.time_ns()}.yaml"
        self.config.write_text(config)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    def start(self, node: str) -> None:
        self.logs[node] = self.lab.workdir / f"instances-{node}-{time.time_ns()}.log"
        self.procs[node] = self.lab.popen(node, [sys.executable, "-m", "integration.vrrp_parent", str(self.config),
                                                 node], self.logs[node], cwd=str(REPO))

    def crash(self, node: str) -> float:
        """kill -9 of the director's process group: the daemon's stand-in and its VRRP child."""
        t = time.monotonic()
        os.killpg(self.procs[node].pid, signal.SIGKILL)
        self.procs[node].wait(5)
        return t

    def holds(self, node: str, instance: str) -> bool:
        return all(cidr in self.lab.addresses(node, ifname, family) for ifname, cidr, family in HOLDS[instance])

    def holds_none(self, node: str, instance: str) -> bool:
        return not any(cidr in self.lab.addresses(node, ifname, family) for ifname, cidr, family in HOLDS[instance])

    def states(self, node: str) -> list[tuple[str, str, str, str | None]]:
        return [(str(e["instance"]), str(e["to"]), str(e["reason"]), e.get("group"))  # type: ignore[misc]
                for e in log_events(self.logs[node], "vrrp.state")]

    def reload(self, node: str, config: str) -> None:
        self.config.write_text(config)
        self.procs[node].send_signal(signal.SIGHUP)  # the parent re-reads the file and updates its child
        wait_until(f"{node} updated", lambda: "UPDATED True" in self.logs[node].read_text(), 10)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        for node, path in self.logs.items():  # pytest shows this only when the test failed
            print(f"--- {node} log ---\n{path.read_text()[-5000:]}")


def test_instances_reload_removes_one_and_leaves_the_other_untouched(fresh: SeedLab) -> None:
    d = Directors(fresh, ACTIVE_ACTIVE)
    try:
        d.start("lvs1")  # alone: MASTER of both
        wait_until("lvs1 holds A and B", lambda: d.holds("lvs1", "A") and d.holds("lvs1", "B"), 10)
        before = d.states("lvs1")
        d.reload("lvs1", ACTIVE_ACTIVE[:ACTIVE_ACTIVE.index("  - name: B")])
        wait_until("B released", lambda: d.holds_none("lvs1", "B"), 5)
        time.sleep(5 * INTERVAL)
        assert d.holds("lvs1", "A")
        after = d.states("lvs1")[len(before):]
        # B resigned (no peer: it waited for one, then let go); A never moved
        assert after == [("B", "RESIGNING", "shutdown", None), ("B", "INIT", "shutdown", None)]
        handover = log_events(d.logs["lvs1"], "vrrp.handover")
        assert [(e["instance"], e["outcome"]) for e in handover] == [("B", "no peer heard")]
    finally:
        d.stop_all()


@pytest.fixture(scope="module")
def lab() -> Iterator[SeedLab]:
    with SeedLab(ipv6=True) as lab:
        yield lab


@pytest.fixture
def fresh(lab: SeedLab) -> Iterator[SeedLab]:
    for node in ("lvs1", "lvs2"):
        lab.recover(node)  # baseline addresses (both families), links up
    yield lab


def test_instances_active_active_then_a_crash_leaves_both_on_the_survivor(fresh: SeedLab) -> None:
    d = Directors(fresh, ACTIVE_ACTIVE)
    try:
        d.start("lvs1")  # alone, it takes both; lvs2 then preempts B only (started together, either may win
        # the first election by start-up jitter and be preempted a moment later: a varying starting point)
        wait_until("lvs1 holds A and B", lambda: d.holds("lvs1", "A") and d.holds("lvs1", "B"), 10)
        d.start("lvs2")
        wait_until("A on lvs1, B on lvs2", lambda: d.holds("lvs1", "A") and d.holds_none("lvs1", "B")
                   and d.holds("lvs2", "B") and d.holds_none("lvs2", "A"), 10)
        time.sleep(5 * INTERVAL)  # stable: nothing moves
        assert d.holds("lvs1", "A") and d.holds("lvs2", "B") and d.holds_none("lvs2", "A")
        assert [s for s in d.states("lvs1") if s[0] == "B"] == [
            ("B", "BACKUP", "start", None), ("B", "MASTER", "master_down", None),
            ("B", "BACKUP", "higher_priority", None)]
        # one socket per director carries both router ids: lvs2 follows lvs1's A and never flaps
        assert [s for s in d.states("lvs2") if s[0] == "A"] == [("A", "BACKUP", "start", None)]
        assert ("B", "MASTER", "master_down", None) in d.states("lvs2")
        t0 = d.crash("lvs1")
        wait_until("lvs2 holds A and B", lambda: d.holds("lvs2", "A") and d.holds("lvs2", "B"), 5)
        print(f"\nactive/active: lvs1 crashed, lvs2 holds both instances after {time.monotonic() - t0:.3f} s")
        assert ("A", "MASTER", "master_down", None) in d.states("lvs2")
    finally:
        d.stop_all()


def test_instances_sync_group_moves_ipv4_and_ipv6_together_on_one_members_fault(fresh: SeedLab) -> None:
    d = Directors(fresh, DUAL_STACK)
    try:
        d.start("lvs1")
        wait_until("lvs1 holds both families", lambda: d.holds("lvs1", "V4") and d.holds("lvs1", "V6"), 10)
        d.start("lvs2")
        wait_until("lvs2 started", lambda: len(d.states("lvs2")) >= 2, 10)
        time.sleep(5 * INTERVAL)
        assert d.holds_none("lvs2", "V4") and d.holds_none("lvs2", "V6")
        assert sorted(d.states("lvs2")) == [("V4", "BACKUP", "start", "G"), ("V6", "BACKUP", "start", "G")]
        t0 = time.monotonic()
        fresh.exec("lvs1", ["ip", "link", "set", "eth1", "down"])  # the IPv6 member's link only
        wait_until("lvs2 holds both families", lambda: d.holds("lvs2", "V4") and d.holds("lvs2", "V6"), 5)
        print(f"\nsync group: lvs1's IPv6 link down, lvs2 holds both families after {time.monotonic() - t0:.3f} s")
        assert d.holds_none("lvs1", "V4")  # its own link is up: it left with the group
        faults = {s[0]: s[2] for s in d.states("lvs1") if s[1] == "FAULT"}
        assert faults == {"V6": "interface_down", "V4": "sync_group"}
        groups = [(e["to"], e["reason"]) for e in log_events(d.logs["lvs1"], "vrrp.group")]
        assert groups[-1] == ("FAULT", "interface_down")
        fresh.exec("lvs1", ["ip", "link", "set", "eth1", "up"])
        fresh.recover("lvs1")  # the IPv6 addresses a downed link loses
        wait_until("lvs1 preempts with both", lambda: d.holds("lvs1", "V4") and d.holds("lvs1", "V6")
                   and d.holds_none("lvs2", "V4") and d.holds_none("lvs2", "V6"), 10)
        ups = [s for s in d.states("lvs1") if s[1] == "MASTER"]
        assert {s[0] for s in ups[-2:]} == {"V4", "V6"}
    finally:
        d.stop_all()
