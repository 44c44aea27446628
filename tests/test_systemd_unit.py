"""The shipped unit is valid for systemd (systemd-analyze verify) and asks for what havs does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = (REPO / "systemd/havs.service").read_text()


def test_unit_is_notify_with_check_reload_and_bounded_capabilities() -> None:
    lines = set(UNIT.splitlines())
    assert "Type=notify" in lines
    assert "ExecStartPre=/usr/local/bin/havs check -c ${HAVS_CONFIG}" in lines
    assert "ExecReload=/bin/kill -HUP $MAINPID" in lines
    assert "Restart=on-failure" in lines
    assert "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW" in lines
    assert "NoNewPrivileges=yes" in lines and "ProtectSystem=strict" in lines


# CI installs systemd (scripts/setup): there a missing systemd-analyze is a failure, not a skip.
@pytest.mark.skipif(shutil.which("systemd-analyze") is None and not os.environ.get("CI"),
                    reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # Point the unit at this checkout's havs (the installed path is /usr/local/bin/havs).
    havs = Path(sys.executable).parent / "havs"
    unit = tmp_path / "havs.service"
    unit.write_text(UNIT.replace("/usr/local/bin/havs", str(havs)))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in done.stderr.splitlines() if "havs.service" in line]
    assert done.returncode == 0 and problems == [], done.stderr
