"""`vrrp.rt_priority` (keepalived's vrrp_rt_priority): the VRRP child asks for SCHED_RR at that priority, or
for nothing realtime at 0; refused, it falls back to nice -10. Run in a subprocess: scheduling is per process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from havs.core.model import Vrrp

VRRP = {"router_id": 51, "interface": "hb", "addresses": [{"address": "10.0.0.1/24", "interface": "client"}]}


def _child_policy(rt_priority: int) -> tuple[str, int, int]:
    code = ("import os; from havs.vrrp.child import _raise_priority as r; "
            f"p = r({rt_priority}); print(p, os.sched_getscheduler(0), os.sched_getparam(0).sched_priority, sep='|')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30)
    policy, sched, prio = out.stdout.strip().split("|")
    return policy, int(sched), int(prio)


def test_rt_priority_setting() -> None:
    assert Vrrp.model_validate(VRRP).rt_priority == 1
    assert Vrrp.model_validate({**VRRP, "rt_priority": 0}).rt_priority == 0
    for bad in (-1, 100):
        with pytest.raises(ValidationError, match="rt_priority"):
            Vrrp.model_validate({**VRRP, "rt_priority": bad})


def test_zero_asks_for_no_realtime() -> None:
    policy, sched, _ = _child_policy(0)
    assert sched == os.SCHED_OTHER and policy.startswith("nice ")


def test_the_configured_priority_is_the_one_asked_for() -> None:
    policy, sched, prio = _child_policy(7)
    if policy.startswith("SCHED_RR"):
        assert (policy, sched, prio) == ("SCHED_RR 7", os.SCHED_RR, 7)
    else:  # not permitted here (no CAP_SYS_NICE, or an RT budget of 0): nice -10 or unchanged, logged as such
        assert sched == os.SCHED_OTHER and policy.startswith("nice ")
