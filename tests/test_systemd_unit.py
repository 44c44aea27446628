"""The shipped unit is valid for systemd (systemd-analyze verify) and asks for what havs does, nothing more."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = (REPO / "systemd/havs.service").read_text()
HAVS = "/opt/havs/bin/havs"  # scripts/install's venv


def test_unit_is_notify_with_check_reload_and_bounded_capabilities() -> None:
    lines = set(UNIT.splitlines())
    assert "Type=notify" in lines
    assert f"ExecStartPre={HAVS} check -c ${{HAVS_CONFIG}}" in lines
    assert f"ExecStart={HAVS} run -c ${{HAVS_CONFIG}} --log-format json" in lines
    # a bad or refused file fails `systemctl reload`: `havs reload` waits for the daemon's verdict (exit 1)
    reloads = [line for line in UNIT.splitlines() if line.startswith("ExecReload=")]
    assert reloads == [f"ExecReload={HAVS} reload"]
    assert "Restart=on-failure" in lines
    assert "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW" in lines
    assert "NoNewPrivileges=yes" in lines and "ProtectSystem=strict" in lines


def test_unit_drops_what_nothing_needs() -> None:
    lines = set(UNIT.splitlines())
    # ip_forward comes from /etc/sysctl.d/60-havs.conf; IPVS is programmed over netlink: /proc/sys stays
    # read-only but for IPVS's own knobs (BGP services set sloppy_tcp/sloppy_sctp)
    assert "ProtectKernelTunables=yes" in lines
    assert [line for line in lines if line.startswith("ReadWritePaths=")] == ["ReadWritePaths=-/proc/sys/net/ipv4/vs"]
    # realtime for the VRRP child (vrrp.rt_priority 1) and nice -10 by rlimits, not by CAP_SYS_NICE
    assert {"RestrictRealtime=no", "LimitRTPRIO=1", "LimitNICE=-10"} <= lines
    assert not any(line.startswith(("CapabilityBoundingSet=", "AmbientCapabilities=")) and "CAP_SYS_NICE" in line
               for line in lines)
    assert "/usr/local/bin/havs" not in UNIT


def verify(unit_text: str, tmp_path: Path, manpath: Path) -> subprocess.CompletedProcess[str]:
    unit = tmp_path / "havs.service"
    unit.write_text(unit_text)
    # Documentation=man:havs(8) is verified by running man: point it at the generated pages
    env = {**os.environ, "MANPATH": str(manpath)}
    return subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60,
                          env=env)


# CI installs systemd (scripts/setup): there a missing systemd-analyze is a failure, not a skip.
@pytest.mark.skipif(shutil.which("systemd-analyze") is None and not os.environ.get("CI"),
                    reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    man = tmp_path / "man"
    subprocess.run([sys.executable, str(REPO / "scripts/manpages"), str(man)], check=True, capture_output=True)
    # Point the unit at this checkout's havs (the installed one is tested by tests/test_install.py).
    done = verify(UNIT.replace(HAVS, str(Path(sys.executable).parent / "havs")), tmp_path, man)
    problems = [line for line in done.stderr.splitlines() if "havs.service" in line]
    assert done.returncode == 0 and problems == [], done.stderr
    # and the check can fail: a unit naming a program that is not there is reported
    done = verify(UNIT.replace(HAVS, str(tmp_path / "nothing-here")), tmp_path, man)
    assert done.returncode != 0 and "nothing-here" in done.stderr
