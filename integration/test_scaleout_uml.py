"""Active-active directors in the UML lab (real IPVS): a BIRD router with ECMP (L4 hash) in front of three
directors running havs (IPVS mh + DR, BGP + BFD through the BIRD havs starts), real servers in DR mode.

One lab, one story, in order: flows spread over the directors and every director holds the same table;
a 4th director joins and no long-lived connection breaks; a director dies whole and BFD drops it within
0.35 s (+ the route-monitor's margin) while the connections it carried continue on the others; a graceful
stop withdraws first and fails no request; kill -9 of havs takes BIRD and the routes with it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import time

import pytest

from integration.bench_scaleout import FIRST, lab_with_directors, route_change
from integration.ipmonitor import IpMonitor
from integration.scaleout import VIP, VIP_TUN, ScaleoutLab
from integration.scaleout_traffic import LongLivedPool, short_loops

pytestmark = [pytest.mark.uml, pytest.mark.skipif(shutil.which("bird") is None and not os.environ.get("CI"),
                                                  reason="bird2 not installed (scripts/setup)")]


def table(lab: ScaleoutLab, director: str) -> str:
    """The director's IPVS table without counters: what must be identical everywhere."""
    return re.sub(r"\s+\d+\s+\d+\s*$", "", lab.exec(director, ["ipvsadm", "-Ln"]).stdout, flags=re.M)


def failures(loops: list, since: float, mon: IpMonitor) -> list[str]:  # type: ignore[type-arg]
    """Failed requests since `since`, with the router's route changes around them (for the message)."""
    out = [f"{s.start - since:.3f} {s.body}" for loop in loops for s in loop.samples if s.start >= since and not s.ok]
    return out and out + [f"route {t - since:.3f} {line.strip()[:120]}" for t, line in mon.lines if t >= since - 1]


def test_scaleout_story() -> None:
    with lab_with_directors() as lab:
        mon = IpMonitor(lab.ns("r"), "route")
        loops = short_loops(lab, VIP, n=2, period=0.05)
        pool: LongLivedPool | None = None
        try:
            # identical tables, sloppy TCP, the VIP local on every director
            tables = {d: table(lab, d) for d in FIRST}
            assert len(set(tables.values())) == 1 and "mh (mh-fallback,mh-port)" in tables["d1"], tables
            assert tables["d1"].count("Route") == 3, tables["d1"]
            for d in FIRST:
                assert lab.exec(d, ["cat", "/proc/sys/net/ipv4/vs/sloppy_tcp"]).stdout.strip() == "1"
                assert f"{VIP}/32" in lab.exec(d, ["ip", "-4", "addr", "show", "dev", "lo"]).stdout
            time.sleep(3)
            stats = [loop.stats() for loop in loops]
            assert sum(s.failures for s in stats) == 0, stats
            served = set().union(*(s.per_backend for s in stats))
            assert served == {"rs1", "rs2", "rs3"}, stats
            # the TUN service: the same real servers through IP-in-IP
            assert lab.tun, "the ipip module could not be loaded in the lab"
            assert tables["d1"].count("Tunnel") == 3
            tun = short_loops(lab, VIP_TUN, n=1, period=0.05)
            time.sleep(2)
            tun_stats = tun[0].stop()
            assert tun_stats.failures == 0 and set(tun_stats.per_backend) == {"rs1", "rs2", "rs3"}, tun_stats
            assert lab.exec("r", ["ip", "route", "show", f"{VIP_TUN}/32"]).stdout.count("nexthop") == 3

            pool = LongLivedPool(lab.ns("cl"), VIP, 16, period=0.25).start()
            time.sleep(1)
            assert pool.broken() == []

            # a 4th director joins: ECMP re-hashes, moved flows land on the same real server (mh, sloppy)
            t = time.monotonic()
            lab.start_havs("d4", lab.configs["d4"])  # type: ignore[attr-defined]
            assert lab.wait_nexthops((*FIRST, "d4"), 90, step=0.2) is not None
            assert table(lab, "d4") == tables["d1"]
            time.sleep(2)
            assert [c.broken for c in pool.broken()] == []
            assert failures(loops, t, mon) == []

            # d1 dies whole: BFD
            carriers = lab.carrier([c.local_port for c in pool.conns])
            t = time.monotonic()
            lab.crash("d1")
            assert lab.wait_nexthops(("d2", "d3", "d4"), 10, step=0.05) is not None
            detect = route_change(mon, t)
            assert detect is not None and detect <= 0.45, detect  # BFD 100 ms x 3, + poll and FIB write
            time.sleep(2)
            survivors = [c for c in pool.broken() if carriers[c.local_port] != "d1"]
            assert survivors == []
            failed = sum(loop.stats(t).failures for loop in loops)
            assert failed <= 2, failures(loops, t, mon)  # only requests in flight through d1 before BFD

            # graceful stop of d2: withdraw, converge, stop; nothing fails
            t = time.monotonic()
            lab.procs["d2"].send_signal(signal.SIGTERM)
            assert lab.procs["d2"].wait(30) == 0
            assert lab.nexthops() == ["10.20.0.13", "10.20.0.14"]
            events = [e["event"] for e in lab.events("d2")]
            assert events.index("bgp.drained") < events.index("bgp.bird_stopped")
            time.sleep(1)
            assert failures(loops, t, mon) == []
            assert [c.broken for c in pool.broken() if carriers[c.local_port] != "d1"] == []

            # kill -9 of d3's havs: its BIRD dies with it, the router withdraws at once
            bird = lab.bird_pid("d3")
            t = time.monotonic()
            os.kill(lab.procs["d3"].pid, signal.SIGKILL)
            assert lab.wait_nexthops(("d4",), 5, step=0.05) is not None
            withdraw = route_change(mon, t)
            assert withdraw is not None and withdraw < 1.0, withdraw
            assert bird is not None and not os.path.exists(f"/proc/{bird}")
        finally:
            if pool is not None:
                pool.stop()
            for loop in loops:
                loop.stop()
            mon.close()
