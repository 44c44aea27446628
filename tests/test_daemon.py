"""The daemon's own logic without sockets: maintenance drains persist, control requests are answered."""

from __future__ import annotations

from pathlib import Path

import pytest

from havs.daemon import Daemon
from havs.log import setup_logging

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "havs.yaml"
    path.write_text((REPO / "etc/havs.yaml").read_text().replace("/var/lib/havs", str(tmp_path / "state")))
    return path


def daemon(config: Path) -> Daemon:
    return Daemon(str(config), "lvs1", setup_logging("json"))


async def test_drain_is_kept_across_restarts(config: Path) -> None:
    first = daemon(config)
    reply = await first.handle_request({"command": "drain", "server": "192.168.72.128"})
    assert reply == {"ok": True, "servers": ["TCP 192.168.0.108:80 192.168.72.128:80"]}
    second = daemon(config)
    second._load_drained()
    assert second.drained == {("TCP 192.168.0.108:80", "192.168.72.128:80")}
    await second.handle_request({"command": "enable", "server": "192.168.72.128:80"})
    third = daemon(config)
    third._load_drained()
    assert third.drained == set()


async def test_control_requests_name_what_is_wrong(config: Path) -> None:
    d = daemon(config)
    assert await d.handle_request({"command": "drain", "server": "10.9.9.9"}) == {
        "ok": False, "error": "no real server '10.9.9.9' in the config"}
    assert await d.handle_request({"command": "explode"}) == {"ok": False, "error": "unknown command 'explode'"}
    status = (await d.handle_request({"command": "status"}))["status"]
    assert status["node"] == "lvs1" and status["vrrp"] is None
    assert [rs["health"] for rs in status["services"][0]["real_servers"]] == ["unchecked", "unchecked"]


def test_unreadable_drain_state_is_logged_not_fatal(config: Path, tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "drained.json").write_text("{not json")
    d = daemon(config)
    d._load_drained()
    assert d.drained == set()
