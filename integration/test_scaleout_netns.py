"""BGP + BFD on the host kernel: a router namespace running BIRD with ECMP and three directors running
havs's BGP shell (integration/scaleout_agent.py; the host has no IPVS, so every service is taken as
servable unless the agent is told otherwise). What the router's kernel route says is the truth."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator

import pytest

from integration.scaleout import ScaleoutLab
from integration.waits import poll

pytestmark = [pytest.mark.netns,
              # under CI a missing bird is a failure: scripts/setup installs it
              pytest.mark.skipif(shutil.which("bird") is None and not os.environ.get("CI"),
                                 reason="bird2 not installed (scripts/setup)")]
THREE = ("d1", "d2", "d3")


@pytest.fixture
def lab() -> Iterator[ScaleoutLab]:
    with ScaleoutLab() as lab:
        lab.start_router(THREE)
        configs = lab.write_config(THREE)
        for d in THREE:
            lab.start_agent(d, configs[d])
        assert lab.wait_nexthops(THREE, 30) is not None, lab.router_cli("show protocols")
        yield lab


def _events(lab: ScaleoutLab, name: str) -> list[str]:
    return [e["event"] for e in lab.events(name)]


def test_ecmp_over_every_director_and_kill_9_withdraws_at_once(lab: ScaleoutLab) -> None:
    route = lab.exec("r", ["ip", "route", "show", "10.99.0.1"]).stdout
    assert route.count("nexthop via") == 3, route
    bird = lab.bird_pid("d1")
    assert bird is not None
    t0 = time.monotonic()
    os.kill(lab.procs["d1"].pid, signal.SIGKILL)  # havs dies: its BIRD must die with it
    took = lab.wait_nexthops(("d2", "d3"), 5)
    assert took is not None, lab.nexthops()
    assert time.monotonic() - t0 < 0.5  # the BGP session closes with BIRD: no hold time, no BFD needed
    assert poll(lambda: not os.path.exists(f"/proc/{bird}"), 2, 0.01) is not None, "BIRD outlived havs"


def test_bfd_drops_a_frozen_director_within_three_intervals(lab: ScaleoutLab) -> None:
    bird = lab.bird_pid("d2")
    assert bird is not None
    os.kill(lab.procs["d2"].pid, signal.SIGSTOP)
    os.kill(bird, signal.SIGSTOP)  # a director that hangs whole: no FIN, no BGP notification, only BFD
    t0 = time.monotonic()
    try:
        took = lab.wait_nexthops(("d1", "d3"), 5, step=0.002)
        assert took is not None
        detect = time.monotonic() - t0
        # BFD 100 ms x 3: 0.3 s after the last packet; plus up to one route poll and the router's FIB write
        assert detect <= 0.45, detect
        assert "BFD session down" in lab.router_cli("show protocols all d2")
    finally:
        os.kill(bird, signal.SIGCONT)
        os.kill(lab.procs["d2"].pid, signal.SIGCONT)
    assert lab.wait_nexthops(THREE, 30) is not None  # back once it runs again


def test_a_director_that_cannot_serve_withdraws_and_comes_back(lab: ScaleoutLab) -> None:
    lab.procs["d3"].send_signal(signal.SIGUSR1)  # the agent's "IPVS service missing"
    assert lab.wait_nexthops(("d1", "d2"), 5) is not None
    assert "bgp.withdraw" in _events(lab, "d3")
    lab.procs["d3"].send_signal(signal.SIGUSR1)
    assert lab.wait_nexthops(THREE, 5) is not None


def test_graceful_drain_withdraws_before_bird_stops(lab: ScaleoutLab) -> None:
    bird = lab.bird_pid("d1")
    lab.procs["d1"].send_signal(signal.SIGTERM)
    assert lab.procs["d1"].wait(15) == 0, lab.log("d1")
    events = _events(lab, "d1")
    assert events.index("bgp.withdraw") < events.index("bgp.drained") < events.index("bgp.bird_stopped")
    assert lab.nexthops() == ["10.20.0.12", "10.20.0.13"]
    assert bird is not None and poll(lambda: not os.path.exists(f"/proc/{bird}"), 2, 0.01) is not None


def test_a_bird_that_dies_alone_is_restarted_and_announces_again(lab: ScaleoutLab) -> None:
    bird = lab.bird_pid("d1")
    assert bird is not None
    os.kill(bird, signal.SIGKILL)
    assert lab.wait_nexthops(("d2", "d3"), 5) is not None
    assert lab.wait_nexthops(THREE, 30) is not None
    assert lab.bird_pid("d1") not in (None, bird)
    assert "bgp.bird_exited" in _events(lab, "d1")
