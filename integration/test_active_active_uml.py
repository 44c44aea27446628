"""Active/active LVS-NAT with real IPVS (inside the UML lab): two VRRP instances with per-node priorities,
VI_A (VIP-A 192.168.0.108, gateway-A 192.168.72.130) MASTER on lvs1 and VI_B (VIP-B 192.168.0.109,
gateway-B 192.168.72.140) MASTER on lvs2, so both directors carry traffic. Then lvs1 crashes and lvs2 holds
both.

In NAT mode a reply must return through the director that forwarded the request, so each instance floats
its own gateway: the real servers serve VIP-B's service on a second address (rs1 .138, rs2 .139) whose
replies a source rule routes via gateway-B, VIP-A's on their seed address via gateway-A (the seed's default
route), the textbook active/active LVS-NAT set-up.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.dualstack import (
    DIRECTORS,
    Instance,
    Pair,
    first_success_per_backend,
    outage_line,
    service,
    write_configs,
)
from integration.seed import GATEWAY, REAL_SERVERS, VIP, VIP_URL
from integration.topology import ClientLoop, SeedLab, wait_until
from integration.waits import poll

pytestmark = pytest.mark.uml

VIP_B, GATEWAY_B = "192.168.0.109", "192.168.72.140"
REAL_B = {"rs1": "192.168.72.138", "rs2": "192.168.72.139"}
TABLE_B = "100"
INSTANCE_A = Instance("VI_A", 51, [(f"{VIP}/24", "client"), (f"{GATEWAY}/24", "server")],
                      priority={"lvs1": 150, "lvs2": 100})
INSTANCE_B = Instance("VI_B", 52, [(f"{VIP_B}/24", "client"), (f"{GATEWAY_B}/24", "server")],
                      priority={"lvs1": 100, "lvs2": 150})


@pytest.fixture
def two_gateways(lab: SeedLab) -> Iterator[SeedLab]:
    """Each real server: a second address for VIP-B's service, its replies routed via gateway-B."""
    for rs, ip in REAL_B.items():
        lab.add_address(rs, "eth0", f"{ip}/24")
        lab.exec(rs, ["ip", "rule", "add", "from", ip, "lookup", TABLE_B])
        lab.exec(rs, ["ip", "route", "replace", "default", "via", GATEWAY_B, "dev", "eth0", "table", TABLE_B])
        lab.start_web(rs, bind=f"{REAL_SERVERS[rs]},{ip}")
    try:
        yield lab
    finally:  # before the lab's reset, which knows nothing of rules and binds
        for rs, ip in REAL_B.items():
            lab.exec(rs, ["ip", "rule", "del", "from", ip, "lookup", TABLE_B], check=False)
            lab.exec(rs, ["ip", "route", "flush", "table", TABLE_B], check=False)
            lab.start_web(rs, bind=REAL_SERVERS[rs])


def conns(pair: Pair, node: str, vip: str) -> int:
    """Connections IPVS on ``node`` has forwarded for ``vip``:80 (ipvsadm --stats)."""
    m = re.search(rf"^TCP\s+{re.escape(vip)}:80\s+(\d+)", pair.lab.exec(
        node, ["ipvsadm", "-Ln", "--stats", "--exact"]).stdout, re.M)
    assert m, f"no service {vip}:80 on {node}"
    return int(m.group(1))


def test_active_active_both_directors_serve_then_one_holds_both(
    two_gateways: SeedLab, tmp_path: Path
) -> None:
    lab = two_gateways
    pair = Pair(lab, write_configs(tmp_path, [INSTANCE_A, INSTANCE_B], [
        service(VIP, list(REAL_SERVERS.values())), service(VIP_B, list(REAL_B.values()))]))
    pair.start()
    pair.settle({"VI_A": "lvs1", "VI_B": "lvs2"}, [INSTANCE_A, INSTANCE_B], ["192.168.72.129:80", "192.168.72.139:80"])
    before = {(n, v): conns(pair, n, v) for n in DIRECTORS for v in (VIP, VIP_B)}
    with ClientLoop(lab, VIP_URL, period=0.05, timeout=0.25) as ca, \
            ClientLoop(lab, f"http://{VIP_B}/", period=0.05, timeout=1.0) as cb:
        first_success_per_backend(ca, 3)
        first_success_per_backend(cb, 3)
        # Both directors serve: VIP-A's connections went through lvs1 only, VIP-B's through lvs2 only.
        served: dict[tuple[str, str], int] = {}

        def counted() -> bool:  # the kernel sums its per-CPU counters every 2 s
            served.update({(n, v): conns(pair, n, v) - before[(n, v)] for n in DIRECTORS for v in (VIP, VIP_B)})
            return served[("lvs1", VIP)] >= 6 and served[("lvs2", VIP_B)] >= 6

        assert poll(counted, 5, 0.5) is not None, served
        assert served[("lvs2", VIP)] == 0 and served[("lvs1", VIP_B)] == 0, served
        states_before = pair.events("lvs2", "vrrp.state")
        crash = ca.now()
        lab.crash("lvs1")
        took = wait_until("lvs2 holds VI_A too", lambda: pair.holds("lvs2", INSTANCE_A), 10, 0.01)
        after = ca.now()
        for loop in (ca, cb):
            loop.wait_for(lambda s: min(s.per_backend.get(b, 0) for b in ("lvs-web1", "lvs-web2")) >= 3, 20,
                          since=after)
        st_a, st_b = ca.stats(since=crash), cb.stats()
    print(f"\nactive/active: lvs1 served {served[('lvs1', VIP)]}, lvs2 {served[('lvs2', VIP_B)]} connections; "
          f"lvs1 crash: VI_A on lvs2 after {took:.2f}s; {outage_line('VIP-A', st_a)}; {outage_line('VIP-B', st_b)}")
    # VIP-A: the seed crash drill's bound; VIP-B never moved: not one of its requests may fail, crash or not.
    assert st_a.longest_outage < 2.0 and st_a.failures <= 20, st_a
    assert st_b.failures == 0, st_b
    assert pair.holds("lvs2", INSTANCE_B)
    assert pair.state("lvs2", "VI_A") == pair.state("lvs2", "VI_B") == "MASTER"
    moved = pair.events("lvs2", "vrrp.state")[len(states_before):]
    assert [(e.get("instance"), e["to"]) for e in moved] == [("VI_A", "MASTER")], moved  # VI_B untouched
    wait_until("lvs2 counts VIP-A's connections", lambda: conns(pair, "lvs2", VIP) > 0, 5, 0.5)
    wait_until("the client's and the real servers' caches on lvs2", lambda: lab.neigh("client", VIP) == lab.mac(
        "lvs2", "eth0") and all(lab.neigh(rs, GATEWAY) == lab.mac("lvs2", "eth1") for rs in REAL_SERVERS), 3)

