"""The journal's priorities against a real journald: a private one, started in a mount namespace of its own
(tmpfs over /run and /var/log/journal: nothing of the host's journal is touched), the logging child's stdout
connected to it exactly as systemd connects a service's (the stream protocol's header, JOURNAL_STREAM), and
the stored entries read back with journalctl. Needs root, unshare and systemd-journald (scripts/setup installs
systemd); elsewhere tests/test_log.py checks the same lines against the protocol's parsing rules."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

JOURNALD = Path("/lib/systemd/systemd-journald")
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not JOURNALD.exists() or shutil.which("unshare") is None
    or shutil.which("journalctl") is None, reason="needs root, unshare and systemd-journald")

# Runs inside the private mount namespace: journald, one service stream, the havs logger as the service.
SCRIPT = r"""
set -eu
mount -t tmpfs tmpfs /run
if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi
{journald} &
jd=$!
trap 'kill $jd 2>/dev/null' EXIT
for i in $(seq 100); do [ -S /run/systemd/journal/stdout ] && break; sleep 0.05; done
{python} {service}
for i in $(seq 100); do
    n=$(journalctl -D /run/log/journal -t havs-test -o cat 2>/dev/null | wc -l)
    [ -d /var/log/journal ] && n=$((n + $(journalctl -D /var/log/journal -t havs-test -o cat 2>/dev/null | wc -l)))
    [ "$n" -ge 4 ] && break
    sleep 0.05
done
journalctl -D /run/log/journal -t havs-test -o json --no-pager 2>/dev/null || true
if [ -d /var/log/journal ]; then journalctl -D /var/log/journal -t havs-test -o json --no-pager 2>/dev/null || true; fi
"""

# What systemd does for StandardOutput=journal: connect to journald's stdout socket, send the stream header
# (identifier, unit, default priority 6, level prefix on, no forwarding), hand the socket over as stdout and
# name it in JOURNAL_STREAM.
SERVICE = r"""
import os, socket, subprocess, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect("/run/systemd/journal/stdout")
s.shutdown(socket.SHUT_RD)
s.sendall(b"havs-test\n\n6\n1\n0\n0\n0\n")
st = os.fstat(s.fileno())
env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
code = '''
from havs import log
l = log.setup_logging("auto", node="lvs1", level="debug")
l.info("vrrp.state", from_="BACKUP", to="MASTER")
l.warning("vrrp.fault", reason="link down")
l.error("vrrp.notify_failed", rc=1)
l.debug("vrrp.advert_in", priority=100)
'''
subprocess.run([sys.executable, "-c", code], stdout=s.fileno(), env=env, check=True, timeout=30)
s.close()
"""


def test_a_real_journald_stores_each_event_at_its_priority(tmp_path: Path) -> None:
    service = tmp_path / "service.py"
    service.write_text(SERVICE)
    script = SCRIPT.format(journald=JOURNALD, python=sys.executable, service=service)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True,
                          text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    entries = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    stored = [(int(e["PRIORITY"]), json.loads(e["MESSAGE"])["event"]) for e in entries]
    assert stored == [(6, "vrrp.state"), (4, "vrrp.fault"), (3, "vrrp.notify_failed"), (7, "vrrp.advert_in")]
    # journald removed the prefix: the stored message is the JSON line itself (journalctl -o cat shows it)
    assert all(e["MESSAGE"].startswith("{") for e in entries)
