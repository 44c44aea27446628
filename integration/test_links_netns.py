"""Link loss from rtnetlink events (root, host kernel): the edge itself in a namespace of its own, and a
VRRP MASTER whose link goes down, timed. Reaction times are printed (run with -s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from integration.test_vrrp_netns import Pair, elect, fresh, lab  # noqa: F401 - fixtures
from integration.topology import SeedLab

pytestmark = pytest.mark.netns

if os.geteuid() != 0:
    pytest.skip("needs root for network namespaces", allow_module_level=True)

REPO = Path(__file__).resolve().parent.parent

WATCH = """
import asyncio, json, time
from havs.edge.links import LinkWatcher

async def main():
    seen = []
    w = LinkWatcher(lambda e: seen.append((time.monotonic(), e)))
    w.open()
    async def ip(*a):
        proc = await asyncio.create_subprocess_exec("ip", *a)
        assert await proc.wait() == 0
        return time.monotonic()
    await ip("link", "add", "d0", "type", "veth", "peer", "name", "d1")
    await ip("link", "set", "d1", "up")
    steps = [("up", await ip("link", "set", "d0", "up")), ("down", await ip("link", "set", "d0", "down")),
             ("deleted", await ip("link", "del", "d0"))]
    await asyncio.sleep(0.2)
    w.close()
    out = [{"at": t, "ifname": e.ifname, "up": e.up, "deleted": e.deleted} for t, e in seen if e]
    print(json.dumps({"steps": steps, "events": out}))

asyncio.run(main())
"""


def test_the_watcher_sees_up_down_and_delete_at_once() -> None:
    # a network namespace of its own: the veth pair never exists on the host
    out = subprocess.run(["unshare", "--net", sys.executable, "-c", WATCH], capture_output=True, text=True,
                         timeout=30, cwd=REPO, check=True)
    result = json.loads(out.stdout)
    events = [e for e in result["events"] if e["ifname"] == "d0"]
    assert events[-1]["deleted"] and not events[-1]["up"]
    down_at = dict(result["steps"])["down"]
    down = next(e for e in events if not e["up"] and not e["deleted"] and e["at"] >= down_at - 0.5)
    assert any(e["up"] for e in events)
    print(f"\nlink down event at {1000 * (down['at'] - down_at):+.1f} ms from `ip link set down` returning "
          "(negative: before ip had exited)")


def stamp(event: dict[str, object]) -> float:
    return datetime.strptime(str(event["timestamp"]), "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=UTC).timestamp()


def test_a_master_reacts_to_its_link_going_down_within_milliseconds(fresh: SeedLab) -> None:  # noqa: F811
    # 1 s adverts: a poll once per advert would see the loss 0-1000 ms late (500 ms on average)
    pair = elect(fresh, 1.0)
    try:
        reactions = []
        for _ in range(3):
            before = len(pair.events("lvs1", "vrrp.track"))
            t0 = time.time()
            subprocess.run(["ip", "-n", fresh.ns("lvs1"), "link", "set", "eth0", "down"], check=True)
            deadline = time.monotonic() + 5
            while len(pair.events("lvs1", "vrrp.track")) == before and time.monotonic() < deadline:
                time.sleep(0.005)
            track = pair.events("lvs1", "vrrp.track")[before]
            assert track["interface"] == "eth0" and track["up"] is False and track["source"] == "event"
            reactions.append(stamp(track) - t0)
            fault = [e for e in pair.events("lvs1", "vrrp.state") if e["to"] == "FAULT"]
            assert fault and stamp(fault[-1]) - t0 < 0.25
            subprocess.run(["ip", "-n", fresh.ns("lvs1"), "link", "set", "eth0", "up"], check=True)
            time.sleep(4.0)  # back to BACKUP, then MASTER again (preempt)
        print(f"\nlink down → vrrp.track (FAULT): {', '.join(f'{1000 * r:.0f} ms' for r in reactions)} "
              "(advert interval 1 s; ip's own start-up included)")
        assert max(reactions) < 0.25, reactions
    finally:
        pair.stop_all()
