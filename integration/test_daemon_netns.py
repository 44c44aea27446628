"""The daemon on a kernel without IPVS (this host's): one clear message, a non-zero exit, nothing half-done."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.topology import ipvs_available

pytestmark = pytest.mark.netns
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"havs{os.getpid()}-d"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.mark.skipif(ipvs_available(), reason="this kernel has IPVS: the point is a kernel without it")
def test_no_ipvs_is_one_clear_error_and_exit_1(netns: str, tmp_path: Path) -> None:
    config = tmp_path / "havs.yaml"
    config.write_text((REPO / "etc/havs.yaml").read_text().replace("/var/lib/havs", str(tmp_path / "state"))
                      .replace("/run/havs/control.sock", str(tmp_path / "control.sock")))
    done = subprocess.run(["ip", "netns", "exec", netns, str(Path(sys.executable).parent / "havs"), "run",
                           "-c", str(config), "--node", "lvs1", "--log-format", "json"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events] == ["config.loaded", "ipvs.unavailable"]
    assert events[1]["error"] == "this kernel has no IPVS (modprobe ip_vs?)"
    assert not (tmp_path / "control.sock").exists()
