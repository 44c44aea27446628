"""`havs status` says why: the reason for each effective weight, and which floating addresses are held."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from havs.core.config import parse_config, select_node
from havs.core.controller import Controller
from havs.core.health import HealthChanged
from havs.core.status import StatusSnapshot, render_status

REPO = Path(__file__).resolve().parents[1]
SVC = "TCP 192.168.0.108:80"
RS1, RS2 = "192.168.72.128:80", "192.168.72.129:80"
TEXT = (REPO / "etc/havs.yaml").read_text().replace("    slow_start: 0 ", "    slow_start: 100 ").replace(
    "        weight: 1", "        weight: 10")


class Health:
    def __init__(self, up: dict[str, bool], agent: dict[str, float] | None = None) -> None:
        self.up, self.agent = up, agent or {}

    def states(self) -> dict[tuple[str, str], Any]:
        class H:
            def __init__(self, up: bool, agent: float | None) -> None:
                self.is_up, self.agent_weight = up, agent

        return {(SVC, s): H(u, self.agent.get(s)) for s, u in self.up.items()}

    def snapshot(self) -> dict[str, dict[str, dict[str, Any]]]:
        return {SVC: {s: {"state": "up" if u else "down", "up": u, "agent_weight": self.agent.get(s)}
                      for s, u in self.up.items()}}


def status(c: Controller, health: Health, now: float, **kw: Any) -> StatusSnapshot:
    c.plan(health.states(), now)
    return c.status(now=now, version="1", pid=1, started=0.0, config_file="havs.yaml", health=health.snapshot(),
                    **kw)


def reasons(snap: StatusSnapshot) -> dict[str, tuple[int | None, str]]:
    return {rs.server: (rs.effective_weight, rs.weight_reason) for rs in snap.services[0].real_servers}


def test_each_effective_weight_says_why() -> None:
    c = Controller(select_node(parse_config(TEXT), "lvs1", "lvs1"))
    assert reasons(status(c, Health({RS1: True, RS2: True}), 1000.0)) == {RS1: (10, ""), RS2: (10, "")}
    c.health_changed(HealthChanged(RS2, "down", "up", "ok", 2, 0.001, SVC, at=1000.0))  # back: ramps up over 100 s
    snap = status(c, Health({RS1: True, RS2: True}, agent={RS1: 0.5}), 1035.0)
    assert reasons(snap) == {RS1: (5, "agent 50%"), RS2: (4, "slow start 35%")}
    line = next(x for x in render_status(snap).splitlines() if RS2 in x)
    assert line.startswith(f"  -> {RS2}") and line.endswith("slow start 35%") and " 4/10 " in line
    c.drained.add(c.match(RS1)[0])
    assert reasons(status(c, Health({RS1: True, RS2: False}), 1200.0)) == {RS1: (0, "drained"), RS2: (None, "down")}
    wire = status(c, Health({RS1: True, RS2: False}), 1200.0).to_dict()
    assert wire["services"][0]["real_servers"][1]["weight_reason"] == "down"
    assert StatusSnapshot.from_dict(wire).services[0].real_servers[1].weight_reason == "down"


def test_quorum_lost_is_a_reason() -> None:
    text = TEXT.replace("    slow_start: 100 ", "    slow_start: 0 \n    quorum: {min_weight: 15, "
                        "sorry_server: {address: 192.168.72.200, port: 80}}\n")
    c = Controller(select_node(parse_config(text), "lvs1", "lvs1"))
    snap = status(c, Health({RS1: True, RS2: False}), 10.0)
    lost = "quorum lost: sorry server in"
    assert reasons(snap) == {RS1: (10, lost), RS2: (None, f"down, {lost}")}


def test_floating_addresses_say_held_or_absent() -> None:
    c = Controller(select_node(parse_config(TEXT), "lvs1", "lvs1"))
    vrrp = {"state": "BACKUP", "addresses": ["192.168.0.108/24 dev eth0", "192.168.72.130/24 dev eth1"],
            "held": ["192.168.72.130/24 dev eth1"]}
    snap = status(c, Health({RS1: True, RS2: True}), 5.0, vrrp=vrrp)
    assert snap.vrrp[0].held == ("192.168.72.130/24 dev eth1",)
    assert StatusSnapshot.from_dict(snap.to_dict()) == snap
    assert "  floating: 192.168.0.108/24 dev eth0 (absent), 192.168.72.130/24 dev eth1 (held)" in \
        render_status(snap).splitlines()
    assert snap.to_dict()["vrrp"][0]["held"] == ["192.168.72.130/24 dev eth1"]


def test_a_held_preemption_says_why_in_text_and_json() -> None:
    c = Controller(select_node(parse_config(TEXT), "lvs1", "lvs1"))
    # as the VRRP child pushes it: the failback catch-up holds preemption, then releases it (None)
    pushed = {"state": "BACKUP", "since": 1.0, "priority": 150, "preempt_hold": "catching up on connections",
              "addresses": ["192.168.0.108/24 dev eth0"], "held": []}
    snap = status(c, Health({RS1: True, RS2: True}), 5.0, vrrp=pushed)
    assert snap.vrrp[0].preempt_hold == "catching up on connections"
    assert "preempt_hold" not in snap.vrrp[0].extra
    lines = render_status(snap).splitlines()
    assert lines[2] == "  preemption held: catching up on connections"
    assert snap.to_dict()["vrrp"][0]["preempt_hold"] == "catching up on connections"
    assert StatusSnapshot.from_dict(snap.to_dict()) == snap
    released = status(c, Health({RS1: True, RS2: True}), 6.0, vrrp={**pushed, "preempt_hold": None})
    assert released.vrrp[0].preempt_hold is None
    assert "preemption held" not in render_status(released)
    assert released.to_dict()["vrrp"][0]["preempt_hold"] is None
