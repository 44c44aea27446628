"""The heartbeat cannot be silenced from outside (netns, root): a third host on the heartbeat segment floods
10,000 lower-priority adverts in ~0.2 s and then answers each of the master's adverts with forged
priority-0 adverts (from the master's address and from its own). No takeover, no flap, and the master's
adverts keep their rhythm: the worst gap stays within one interval + 20 ms. (integration/bench_flood.py
prints the same figures beside keepalived's.)"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from integration.bench_flood import FLOOD, INTERVAL, drill
from integration.test_vrrp_netns import elect, unblock_vrrp
from integration.topology import SeedLab

pytestmark = pytest.mark.netns

if os.geteuid() != 0:
    pytest.skip("needs root for network namespaces", allow_module_level=True)


@pytest.fixture(scope="module")
def lab() -> Iterator[SeedLab]:
    with SeedLab() as lab:
        unblock_vrrp(lab)
        yield lab


def test_forged_flood_and_priority_zero_rhythm_neither_silence_nor_flap_the_pair(lab: SeedLab) -> None:
    pair = elect(lab, INTERVAL)
    try:
        hooks_before = {n: len(pair.hooks(n)) for n in ("lvs1", "lvs2")}
        figures = drill(lab, pair, lambda: {n: len(pair.events(n, "vrrp.state")) for n in ("lvs1", "lvs2")})
        print(f"\nflood drill (havs): {figures}")
        assert figures["flood_sent"] == FLOOD and figures["flood_seconds"] < 0.5
        assert figures["p0_sent"] >= 40  # the rhythm really ran (two forgeries per heard advert)
        assert figures["transitions"] == {"lvs1": 0, "lvs2": 0}, "a takeover or a flap"
        assert figures["holders_vip"] == ["lvs1"] and figures["holders_gw"] == ["lvs1"]
        assert figures["adverts"] >= 40
        assert figures["worst_gap"] <= INTERVAL + 0.020, f"worst advert gap {figures['worst_gap'] * 1000:.0f} ms"
        assert {n: len(pair.hooks(n)) for n in ("lvs1", "lvs2")} == hooks_before  # no notify ran
        # the forgeries were seen and counted, not obeyed
        dropped = pair.events("lvs2", "vrrp.advert_dropped")
        assert {e["reason"] for e in dropped} >= {"priority0_not_master"}
    finally:
        pair.stop_all()
