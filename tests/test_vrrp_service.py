"""VrrpService pieces that need no root: construction from the model, notify hooks."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest

from havs.core.model import Config, NodeView, Notify
from havs.vrrp_service import VrrpService, _NotifyWorker


class ListLog:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))

    warning = error = info


def view(**vrrp: Any) -> NodeView:
    cfg = Config.model_validate(
        {
            "nodes": {"lvs1": {"priority": 150, "interfaces": {"client": "eth0", "server": "eth1", "mgmt": "eth9"}}},
            "vrrp": {
                "router_id": 51,
                "interface": "server",
                "addresses": [
                    {"address": "192.168.0.108/24", "interface": "client"},
                    {"address": "192.168.72.130/24", "interface": "server"},
                ],
                **vrrp,
            },
        }
    )
    return NodeView(name="lvs1", node=cfg.nodes["lvs1"], config=cfg)


def test_tracks_heartbeat_address_and_extra_interfaces_once() -> None:
    svc = VrrpService(view(track_interfaces=["mgmt", "client"]), log=ListLog())
    assert svc._track == ("eth1", "eth0", "eth9")


def test_priority_decrement_floors_at_one_and_shows_in_snapshot() -> None:
    svc = VrrpService(view(), log=ListLog())
    svc.set_priority_decrement(50)
    assert svc.effective_priority == 100
    svc.set_priority_decrement(500)
    assert svc.effective_priority == 1
    snap = svc.snapshot()
    assert snap["state"] == "INIT" and snap["priority"] == 1 and snap["priority_decrement"] == 500
    assert snap["addresses"] == ["192.168.0.108/24 dev eth0", "192.168.72.130/24 dev eth1"]


def test_ipv6_floating_addresses_are_refused_for_now() -> None:
    cfg = view().config.model_dump()
    cfg["vrrp"]["addresses"] = [{"address": "2001:db8::1/64", "interface": "client"}]
    c = Config.model_validate(cfg)
    with pytest.raises(ValueError, match="IPv6"):
        VrrpService(NodeView(name="lvs1", node=c.nodes["lvs1"], config=c), log=ListLog())


def test_notify_hooks_run_in_order_with_env_and_timeout(tmp_path: Path) -> None:
    out = tmp_path / "hooks"
    script = f"import os,time,sys; time.sleep(float(sys.argv[1])); open({str(out)!r},'a').write(" \
             "os.environ['HAVS_NODE']+' '+os.environ['HAVS_STATE']+' '+os.environ['HAVS_PREVIOUS']+' '+" \
             "os.environ['HAVS_REASON']+'\\n')"
    log = ListLog()
    worker = _NotifyWorker(
        Notify(master=[sys.executable, "-c", script, "0.2"], backup=[sys.executable, "-c", script, "0"],
               fault=[sys.executable, "-c", script, "5"], timeout=0.5),
        log,
        "lvs1",
    )
    worker.start()
    t0 = time.monotonic()
    worker.submit("master", "MASTER", "BACKUP", "master_down")  # slow one first: order is kept
    worker.submit("backup", "BACKUP", "MASTER", "higher_priority")
    worker.submit("fault", "FAULT", "BACKUP", "interface_down")  # killed at the timeout
    worker.submit("stop", "INIT", "BACKUP", "shutdown")  # no hook configured: nothing runs
    assert time.monotonic() - t0 < 0.1  # submitting never waits for a hook
    worker.stop(wait=True)
    assert out.read_text().splitlines() == ["lvs1 MASTER BACKUP master_down", "lvs1 BACKUP MASTER higher_priority"]
    notes = [kw for ev, kw in log.events if ev == "vrrp.notify"]
    assert [n["state"] for n in notes] == ["MASTER", "BACKUP", "FAULT"]
    assert notes[0]["rc"] == 0 and notes[2]["rc"] is None and "timed out" in notes[2]["error"]
