"""The seed topology dual-stack with real IPVS (inside the UML lab): havs on both directors with two VRRP
instances in one sync group (RFC 9568 wants one instance per family, as keepalived does): VI_4 floats the
IPv4 VIP and gateway, VI_6 the IPv6 ones (fd00::108 on the client LAN, fd72::130 on the server LAN), and
IPVS serves both VIPs on port 80 in NAT mode to the real servers' IPv4 and IPv6 addresses. The master is
crashed hard under a client loop on each family; both families end on the backup, with every neighbour
cache (the client's for both VIPs, each real server's for both gateways) on the backup's MACs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.dualstack import (
    DIRECTORS,
    FAMILY4,
    FAMILY6,
    SERVICE4,
    SERVICE6,
    Pair,
    first_success_per_backend,
    outage_line,
    write_configs,
)
from integration.seed import GATEWAY, GATEWAY6, REAL_SERVERS, VIP, VIP6, VIP6_URL, VIP_URL
from integration.topology import ClientLoop, SeedLab, wait_until

pytestmark = pytest.mark.uml


@pytest.fixture(scope="module")
def dual_stack(seed_lab: SeedLab) -> Iterator[SeedLab]:
    """The session's lab dual-stack for this module only."""
    seed_lab.enable_ipv6()
    try:
        yield seed_lab
    finally:
        seed_lab.disable_ipv6()


def test_dual_stack_crash_moves_both_families_and_every_neighbour_cache(
    dual_stack: SeedLab, lab: SeedLab, tmp_path: Path
) -> None:
    configs = write_configs(tmp_path, [FAMILY4, FAMILY6], [SERVICE4, SERVICE6], {"SG_1": ["VI_4", "VI_6"]})
    pair = Pair(lab, configs)
    pair.start()
    masters = {"VI_4": "lvs1", "VI_6": "lvs1"}
    pair.settle(masters, [FAMILY4, FAMILY6], ["192.168.72.129:80", "[fd72::129]:80"])
    assert "TCP  [fd00::108]:80 rr\n  -> [fd72::128]:80               Masq    1" in pair.ipvs("lvs2")
    macs = {n: {i: lab.mac(n, i) for i in ("eth0", "eth1")} for n in DIRECTORS}
    with ClientLoop(lab, VIP_URL, period=0.05, timeout=0.25) as c4, \
            ClientLoop(lab, VIP6_URL, period=0.05, timeout=0.25) as c6:
        first_success_per_backend(c4, 1)
        first_success_per_backend(c6, 1)
        # The traffic taught every cache lvs1's MACs: the drill checks they all move.
        for rs in REAL_SERVERS:
            assert lab.neigh(rs, GATEWAY) == lab.neigh(rs, GATEWAY6) == macs["lvs1"]["eth1"], rs
        assert lab.neigh("client", VIP) == lab.neigh("client", VIP6) == macs["lvs1"]["eth0"]
        crash = c4.now()
        lab.crash("lvs1")
        took: dict[str, float] = {}

        def taken() -> bool:
            at = c4.now() - crash
            took.update({name: at for name in pair.holding("lvs2", [FAMILY4, FAMILY6]) if name not in took})
            return len(took) == 2

        wait_until("lvs2 holds VI_4 and VI_6", taken, 10, 0.01)
        after = c4.now()
        stats = {}
        for name, loop in (("IPv4", c4), ("IPv6", c6)):
            loop.wait_for(lambda s: min(s.per_backend.get(b, 0) for b in ("lvs-web1", "lvs-web2")) >= 3, 20,
                          since=after)
            stats[name] = loop.stats(since=crash)

    def caches_on_lvs2() -> bool:
        return (lab.neigh("client", VIP) == lab.neigh("client", VIP6) == macs["lvs2"]["eth0"]
                and all(lab.neigh(rs, gw) == macs["lvs2"]["eth1"] for rs in REAL_SERVERS for gw in (GATEWAY, GATEWAY6)))

    wait_until("every neighbour cache on lvs2's MACs", caches_on_lvs2, 3)
    print(f"\ndual-stack crash: VI_4 on lvs2 after {took['VI_4']:.2f}s, VI_6 after {took['VI_6']:.2f}s; "
          + "; ".join(outage_line(k, v) for k, v in stats.items()))
    for name, st in stats.items():
        assert st.longest_outage < 2.0 and st.failures <= 20, (name, st)
    assert pair.state("lvs2", "VI_4") == pair.state("lvs2", "VI_6") == "MASTER"
    assert [(e["group"], e["to"]) for e in pair.events("lvs2", "vrrp.group")][-1] == ("SG_1", "MASTER")
    assert not pair.events("lvs2", "vrrp.advert_dropped")
    table = pair.ipvs("lvs2")
    assert "[fd72::128]:80" in table and "192.168.72.128:80" in table
