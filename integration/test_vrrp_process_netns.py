"""The VRRP child process: it starts or says why not, it dies with the daemon (a crash is a crash), and a
killed child is noticed at once and restarted, releasing the addresses it left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parent.parent
CONFIG = """\
nodes:
  d1: {interfaces: {side: d0}}
vrrp:
  router_id: 9
  advert_interval: 0.1
  interface: side
  addresses: [{address: 10.99.0.100/24, interface: side}]
"""
PARENT = textwrap.dedent("""\
    import sys, time
    from havs.core.config import parse_config, select_node
    from havs.log import setup_logging
    from havs.vrrp import VrrpProcess
    view = select_node(parse_config(sys.argv[1]), "d1", "")
    vrrp = VrrpProcess(view, log=setup_logging("json", node="d1"))
    try:
        vrrp.start()
    except RuntimeError as e:
        print("START FAILED:", e, flush=True)
        sys.exit(3)
    print("CHILD", vrrp._proc.pid, flush=True)
    time.sleep(60)
""")


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"havs{os.getpid()}-vp"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in ("link add d0 type veth peer name d1", "link set d0 up", "link set d1 up",
                    "addr add 10.99.0.1/24 dev d0", "link set lo up"):
            subprocess.run(["ip", "-n", name, *cmd.split()], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "pids", name], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], check=False)


def run_parent(netns: str, config: str) -> subprocess.Popen[str]:
    return subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", PARENT, config],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)


def child_pid(parent: subprocess.Popen[str]) -> int:
    """The VRRP child's pid, as the test parent prints it once VRRP has started."""
    assert parent.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = parent.stdout.readline()
        assert line, "the parent exited before starting VRRP"
        if line.startswith("CHILD "):
            return int(line.split()[1])
    raise AssertionError("no CHILD line from the parent within 60 s")


def test_child_dies_with_a_crashed_daemon(netns: str) -> None:
    parent = run_parent(netns, CONFIG)
    try:
        child = child_pid(parent)
        os.kill(child, 0)  # running
        parent.kill()  # kill -9: no goodbye to the child
        parent.wait(5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            os.kill(child, signal.SIGKILL)
            pytest.fail("the VRRP process outlived its daemon")
    finally:
        if parent.poll() is None:
            parent.kill()


def test_a_child_that_cannot_start_says_why(netns: str) -> None:
    parent = run_parent(netns, CONFIG.replace("side: d0", "side: nosuch0"))
    out, _ = parent.communicate(timeout=60)
    assert parent.returncode == 3, out
    assert "START FAILED: VRRP did not start:" in out and "nosuch0" in out


def test_a_killed_child_is_noticed_at_once_and_restarted_releasing_stale_addresses(netns: str) -> None:
    parent = run_parent(netns, CONFIG)
    events: list[dict[str, object]] = []
    try:
        child = child_pid(parent)

        def held() -> bool:
            out = subprocess.run(["ip", "-n", netns, "-o", "addr", "show", "dev", "d0"], capture_output=True,
                                 text=True, check=True).stdout
            return "10.99.0.100/24" in out

        wait = time.monotonic() + 10
        while not held() and time.monotonic() < wait:  # alone on the link: MASTER after its down interval
            time.sleep(0.05)
        assert held()
        killed = time.time()
        os.kill(child, signal.SIGKILL)  # the address stays behind, as after an OOM kill
        restarted = False
        wait = time.monotonic() + 60
        while time.monotonic() < wait:
            line = parent.stdout.readline()
            assert line, "the parent exited"
            if line.startswith("{"):
                event = json.loads(line)
                events.append(event)
                if event["event"] == "vrrp.process_restarted":
                    restarted = True
                if restarted and event["event"] == "vrrp.addresses":
                    break
        names = [e["event"] for e in events]
        assert "vrrp.process_exited" in names and "vrrp.process_restarted" in names
        exited = next(e for e in events if e["event"] == "vrrp.process_exited")
        assert exited["level"] == "error"
        noticed = datetime.fromisoformat(str(exited["timestamp"]).replace("Z", "+00:00")).timestamp() - killed
        assert noticed < 0.1 + 0.01  # within one advert interval (plus the log's millisecond rounding)
        # the new child started BACKUP and removed the address its predecessor left
        after = events[names.index("vrrp.process_exited"):]
        stale = [e for e in after if e["event"] == "vrrp.addresses" and e.get("reason") == "stale"]
        states = [e["to"] for e in after if e["event"] == "vrrp.state"]
        assert stale and stale[0]["addresses"] == ["10.99.0.100/24 dev d0"], events
        assert states[:1] == ["BACKUP"]
        assert "vrrp.track_failed" not in names, events
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(5)
