"""The VRRP child process: it starts or says why not, and it dies with the daemon (a crash is a crash)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
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
    from havs.vrrp_process import VrrpProcess
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


def test_child_dies_with_a_crashed_daemon(netns: str) -> None:
    parent = run_parent(netns, CONFIG)
    try:
        assert parent.stdout is not None
        child = None
        deadline = time.monotonic() + 60
        while child is None and time.monotonic() < deadline:
            line = parent.stdout.readline()
            assert line, "the parent exited before starting VRRP"
            if line.startswith("CHILD "):
                child = int(line.split()[1])
        assert child is not None
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
