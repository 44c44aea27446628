"""Housekeeping of the lab's network namespaces and processes: list, kill, delete. Idempotent, and quiet
about what is already gone."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

# Prefixes held by live labs of this process (several may coexist).
_claimed: set[str] = set()
_claimed_lock = threading.Lock()


def claim_prefix(base: str) -> str:
    """The first of ``base``, ``<base>2-``, ``<base>3-``... that no live lab of this process holds; held
    until release_prefix()."""
    with _claimed_lock:
        candidate, n = base, 1
        while candidate in _claimed:
            n += 1
            candidate = f"{base}{n}-"
        _claimed.add(candidate)
        return candidate


def release_prefix(prefix: str) -> None:
    with _claimed_lock:
        _claimed.discard(prefix)


def list_netns() -> list[str]:
    p = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return [line.split()[0] for line in p.stdout.splitlines() if line.strip()]


def kill_netns_pids(names: Sequence[str]) -> None:
    """SIGKILL every process still running in the given namespaces."""
    for n in names:
        p = subprocess.run(["ip", "netns", "pids", n], capture_output=True, text=True)
        for pid in p.stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)


def delete_netns(names: Sequence[str]) -> None:
    if not names:
        return
    kill_netns_pids(names)
    subprocess.run(
        ["ip", "-force", "-batch", "-"],
        input="".join(f"netns del {n}\n" for n in names),
        capture_output=True,
        text=True,
    )


def delete_stale(pattern: re.Pattern[str]) -> list[str]:
    """Delete the namespaces whose name matches ``pattern`` and whose owner is gone: group 1 of the match is
    the pid of the process that made them."""
    stale = []
    for n in list_netns():
        m = pattern.match(n)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            stale.append(n)
    delete_netns(stale)
    return stale


def kill_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL, timeout: float = 5,
                 group: bool = True) -> None:
    """Signal ``proc`` (its whole process group with ``group``: each lab process leads its own session) and
    wait; SIGKILL after ``timeout``. Children that outlive the leader are killed too."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if group:
        # The leader may be gone while children linger.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
