"""The control socket: root-only permissions, JSON in and out, bad requests answered, not fatal."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

from havs.core.status import render_status
from havs.edge.control import ControlServer, request


async def handler(req: dict[str, Any]) -> dict[str, Any]:
    if req.get("command") == "status":
        return {"ok": True, "node": "lvs1"}
    return {"ok": False, "error": f"unknown command {req.get('command')!r}"}


async def test_status_round_trip_and_permissions(tmp_path: Path) -> None:
    path = str(tmp_path / "run" / "control.sock")
    server = ControlServer(path, handler)
    await server.start()
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(tmp_path / "run").st_mode) == 0o700
        reply = await asyncio.to_thread(request, path, {"command": "status"})
        assert reply == {"ok": True, "node": "lvs1"}
        reply = await asyncio.to_thread(request, path, {"command": "explode"})
        assert reply == {"ok": False, "error": "unknown command 'explode'"}
    finally:
        await server.stop()
    assert not os.path.exists(path)


async def test_garbage_request_gets_an_error_and_server_survives(tmp_path: Path) -> None:
    path = str(tmp_path / "control.sock")
    server = ControlServer(path, handler)
    await server.start()
    try:
        def garbage() -> dict[str, Any]:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(path)
                s.sendall(b"[not json\n")
                data: dict[str, Any] = json.loads(s.makefile().readline())
                return data

        reply = await asyncio.to_thread(garbage)
        assert reply["ok"] is False and reply["error"].startswith("bad request")
        assert (await asyncio.to_thread(request, path, {"command": "status"}))["ok"] is True
    finally:
        await server.stop()


def test_status_reads_like_ipvsadm() -> None:
    snap = {
        "version": "0.1.0", "node": "lvs1", "pid": 42, "uptime": 75.0, "config_file": "/etc/havs/havs.yaml",
        "vrrp": {"state": "MASTER", "since_ago": 12.5, "router_id": 51, "version": 3, "priority": 150,
                 "mode": "multicast", "interface": "eth1",
                 "addresses": ["192.168.0.108/24 dev eth0", "192.168.72.130/24 dev eth1"]},
        "reconciler": {"passes": 3, "ops_applied": 3, "failures": 0, "drift_repairs": 1},
        "services": [{"name": "TCP 192.168.0.108:80", "scheduler": "rr", "flags": [], "quorum": True,
                      "real_servers": [
                          {"server": "192.168.72.128:80", "forwarding": "masq", "effective_weight": 1,
                           "configured_weight": 1, "active_conns": 0, "inactive_conns": 7, "health": "up",
                           "last_result": "ok", "latency_ms": 1.25},
                          {"server": "192.168.72.129:80", "forwarding": "masq", "effective_weight": None,
                           "configured_weight": 1, "health": "down", "last_result": "refused"}]}],
    }
    text = render_status(snap).splitlines()
    assert text[1].startswith("VRRP MASTER since 12.5s ago — router 51 v3 priority 150")
    assert "TCP  192.168.0.108:80      rr" in text
    assert "  -> 192.168.72.128:80            Masq    1      0          7         up     ok           1.2ms" in text
    assert "  -> 192.168.72.129:80            Masq    -/1    -          -         down   refused" in text
