"""The VRRP child's start: it holds its priority from the moment it is spawned, before its imports."""

from __future__ import annotations

import os
import resource
import subprocess
import time
from pathlib import Path

import pytest

from havs.configfile import load_view
from havs.vrrp.child import NICE
from havs.vrrp.process import VrrpProcess, prioritise

SEED_CONFIG = Path(__file__).resolve().parents[1] / "etc" / "havs.yaml"


def can_lower_nice() -> bool:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NICE)
    return os.geteuid() == 0 or soft >= 20 - NICE


class NoLog:
    def info(self, *_args: object, **_kw: object) -> None:
        pass

    error = warning = info


needs_nice = pytest.mark.skipif(not can_lower_nice(), reason="needs root or RLIMIT_NICE to lower a nice value")


@needs_nice
def test_the_child_imports_at_its_own_priority_before_start() -> None:
    proc = VrrpProcess(load_view(str(SEED_CONFIG), "lvs1"), log=NoLog())
    proc.spawn()  # no Start yet: the child is importing, then waits
    try:
        assert proc._proc is not None
        assert os.getpriority(os.PRIO_PROCESS, proc._proc.pid) == NICE
    finally:
        proc.stop(graceful=False)


@needs_nice
def test_prioritise_only_raises_a_priority() -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        prioritise(sleeper.pid)
        assert os.getpriority(os.PRIO_PROCESS, sleeper.pid) == NICE
        os.setpriority(os.PRIO_PROCESS, sleeper.pid, NICE - 5)  # already higher: left alone
        prioritise(sleeper.pid)
        assert os.getpriority(os.PRIO_PROCESS, sleeper.pid) == NICE - 5
    finally:
        sleeper.kill()
        sleeper.wait()


def test_prioritise_never_raises() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    time.sleep(0.01)
    prioritise(gone.pid)  # ESRCH (or EPERM/EACCES when not allowed): the child tries again itself
