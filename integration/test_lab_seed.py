"""The seed's LVS-NAT setup, programmed by hand with ipvsadm, inside the UML lab.

Proves the lab itself: real IPVS in the director's namespace, masquerading to
both real servers, round robin as seen from the client."""

from __future__ import annotations

import itertools
import re

import pytest

from integration.topology import BODIES, GATEWAY, REAL_SERVERS, VIP, VIP_URL, ClientLoop, SeedLab

pytestmark = pytest.mark.uml

SERVICE = f"{VIP}:80"


def _program_seed(lab: SeedLab, node: str = "lvs1") -> None:
    lab.add_address(node, "eth0", f"{VIP}/24")
    lab.add_address(node, "eth1", f"{GATEWAY}/24")
    lab.exec(node, ["ipvsadm", "-A", "-t", SERVICE, "-s", "rr"])
    for ip in REAL_SERVERS.values():
        lab.exec(node, ["ipvsadm", "-a", "-t", SERVICE, "-r", f"{ip}:80", "-m"])


def test_seed_round_robin_through_vip(lab: SeedLab) -> None:
    _program_seed(lab)
    table = lab.exec("lvs1", ["ipvsadm", "-Ln"]).stdout
    assert re.search(rf"^TCP\s+{re.escape(SERVICE)}\s+rr\s*$", table, re.M), table
    for ip in REAL_SERVERS.values():
        assert re.search(rf"->\s+{re.escape(ip)}:80\s+Masq\s+1\s", table), table
    # IPVS state is per namespace: the other director has none.
    assert VIP not in lab.exec("lvs2", ["ipvsadm", "-Ln"]).stdout

    bodies = [lab.http_get("client", VIP_URL, timeout=10).strip() for _ in range(6)]
    assert sorted(set(bodies)) == [BODIES["rs1"], BODIES["rs2"]], bodies
    assert all(a != b for a, b in itertools.pairwise(bodies)), f"not alternating: {bodies}"


def test_client_loop_through_ipvs_sees_dead_backend(lab: SeedLab) -> None:
    _program_seed(lab)
    with ClientLoop(lab, period=0.05, timeout=2.0) as loop:
        loop.wait_for(lambda s: s.successes >= 10, timeout=30)
        healthy = loop.stats()
        assert healthy.failures == 0
        assert set(healthy.per_backend) == {BODIES["rs1"], BODIES["rs2"]}
        cut = loop.now()
        # Nothing takes rs1 out of the table, so rr keeps sending half the requests there.
        lab.kill_web("rs1")
        after = loop.wait_for(lambda s: s.failures >= 3 and s.successes >= 3, timeout=30, since=cut)
    assert set(after.per_backend) == {BODIES["rs2"]}


def test_reset_clears_ipvs_and_addresses(lab: SeedLab) -> None:
    _program_seed(lab)
    lab.reset()
    assert VIP not in lab.exec("lvs1", ["ipvsadm", "-Ln"]).stdout
    assert lab.addresses("lvs1", "eth0") == ["192.168.0.111/24"]
    assert lab.addresses("lvs1", "eth1") == ["192.168.72.131/24"]
    assert lab.web_running("rs1") and lab.web_running("rs2")
