"""The control socket: root-only permissions, JSON in and out, bad requests answered, not fatal."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from havs.core.status import render_status
from havs.edge.control import ControlPathInUse, ControlServer, request


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
    assert text[1].startswith("VRRP MASTER since 12.5s ago — VI_1, router 51 v3 priority 150")
    assert "TCP  192.168.0.108:80      rr" in text
    assert "  -> 192.168.72.128:80            Masq    1      0          7         up     ok           1.2ms" in text
    assert "  -> 192.168.72.129:80            Masq    -/1    -          -         down   refused" in text


# ------------------------------------------------------------------ bounds (issue 11, item 6)


def raw_exchange(path: str, data: bytes, *, shut: bool = False) -> dict[str, Any]:
    """Send raw bytes, optionally end our side, and read the one-line reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        reply: dict[str, Any] = json.loads(s.makefile("rb").readline())
        return reply


async def test_request_bounds_each_get_a_clear_reply(tmp_path: Path) -> None:
    path = str(tmp_path / "control.sock")
    server = ControlServer(path, handler, timeout=0.3, max_request=1024, max_depth=4)
    await server.start()
    try:
        big = b'{"command": "' + b"x" * 2000 + b'"}\n'
        reply = await asyncio.to_thread(raw_exchange, path, big)
        assert reply == {"ok": False, "error": "bad request: larger than 1024 bytes"}
        deep = b'{"a": ' + b"[" * 5 + b"]" * 5 + b"}\n"
        reply = await asyncio.to_thread(raw_exchange, path, deep)
        assert reply == {"ok": False, "error": "bad request: JSON nested deeper than 4 levels"}
        # brackets inside strings are not nesting
        flat = json.dumps({"command": "status", "note": "[[[[[[{{{{\\\"]"}).encode() + b"\n"
        assert (await asyncio.to_thread(raw_exchange, path, flat))["ok"] is True
        reply = await asyncio.to_thread(raw_exchange, path, b'{"command": "status"}', shut=True)
        assert reply == {"ok": False, "error": "bad request: the connection ended after 21 bytes, before a "
                                               "complete line"}
        reply = await asyncio.to_thread(raw_exchange, path, b'{"command": ')  # and then nothing: the deadline
        assert reply == {"ok": False, "error": "bad request: no complete request line within 0.3 s"}
        reply = await asyncio.to_thread(raw_exchange, path, b"[1, 2]\n")
        assert reply == {"ok": False, "error": "bad request: a request is a JSON object"}
        assert server.refused == {"too_large": 1, "too_deep": 1, "incomplete": 1, "timeout": 1, "bad_json": 1}
        for _ in range(100):  # the last connection's close completes just after its reply was read
            if server.active == 0:
                break
            await asyncio.sleep(0.01)
        assert server.active == 0
    finally:
        await server.stop()


async def test_deep_json_within_the_size_cap_never_reaches_the_parser(tmp_path: Path) -> None:
    path = str(tmp_path / "control.sock")
    server = ControlServer(path, handler)
    await server.start()
    try:
        bomb = b"[" * 60000 + b"]" * 4000 + b"\n"  # json.loads would recurse 60,000 deep
        reply = await asyncio.to_thread(raw_exchange, path, bomb)
        assert reply["error"].startswith("bad request: JSON nested deeper than")
        assert (await asyncio.to_thread(request, path, {"command": "status"}))["ok"] is True
    finally:
        await server.stop()


async def test_connections_are_bounded_and_idle_ones_time_out(tmp_path: Path) -> None:
    path = str(tmp_path / "control.sock")
    server = ControlServer(path, handler, max_connections=3, timeout=1.0)
    await server.start()
    idle = []
    try:
        for _ in range(3):  # three idle clients fill every slot
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            idle.append(s)
        for _ in range(50):
            await asyncio.sleep(0.01)
            if server.active == 3:
                break
        assert server.active == 3
        reply = await asyncio.to_thread(request, path, {"command": "status"})
        assert reply == {"ok": False, "error": "busy: 3 control connections are open (at most 3); try again"}
        assert server.refused["busy"] == 1
        # the idle ones are answered and closed at their deadline, and the slots come back
        for s in idle:
            s.settimeout(5)
            line = await asyncio.to_thread(s.makefile("rb").readline)
            assert json.loads(line)["error"] == "bad request: no complete request line within 1 s"
        assert (await asyncio.to_thread(request, path, {"command": "status"}))["ok"] is True
    finally:
        for s in idle:
            s.close()
        await server.stop()


async def test_handler_errors_are_replies(tmp_path: Path) -> None:
    async def broken(req: dict[str, Any]) -> dict[str, Any]:
        if req.get("command") == "raise":
            raise KeyError("boom")
        return {"ok": True, "value": object()}  # not JSON: rendered with str()

    path = str(tmp_path / "control.sock")
    server = ControlServer(path, broken)
    await server.start()
    try:
        reply = await asyncio.to_thread(request, path, {"command": "raise"})
        assert reply == {"ok": False, "error": "internal error: KeyError: 'boom'"}
        assert (await asyncio.to_thread(request, path, {"command": "x"}))["value"].startswith("<object object")
    finally:
        await server.stop()


async def test_path_rules(tmp_path: Path) -> None:
    with pytest.raises(ControlPathInUse, match="must be absolute"):
        await ControlServer("run/control.sock", handler).start()
    with pytest.raises(ControlPathInUse, match="longer than the 107 bytes"):
        await ControlServer("/" + "x" * 120, handler).start()
    # a regular file is never deleted
    precious = tmp_path / "havs.yaml"
    precious.write_text("keep me")
    with pytest.raises(ControlPathInUse, match=r"havs\.yaml: exists and is not a socket; refusing to replace it"):
        await ControlServer(str(precious), handler).start()
    assert precious.read_text() == "keep me"
    # nor a symlink, even to a socket
    (tmp_path / "link.sock").symlink_to(precious)
    with pytest.raises(ControlPathInUse, match="is not a socket"):
        await ControlServer(str(tmp_path / "link.sock"), handler).start()
    assert precious.read_text() == "keep me"
    # an existing directory keeps its mode
    (tmp_path / "shared").mkdir(mode=0o755)
    server = ControlServer(str(tmp_path / "shared" / "c.sock"), handler)
    await server.start()
    await server.stop()
    assert stat.S_IMODE(os.stat(tmp_path / "shared").st_mode) == 0o755


async def test_stale_socket_replaced_live_one_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "control.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)  # bound, never listening: what a kill -9 leaves behind
    stale.close()
    first = ControlServer(path, handler)
    await first.start()  # the stale socket is replaced
    try:
        second = ControlServer(path, handler)
        with pytest.raises(ControlPathInUse, match="another process is listening on this control socket"):
            await second.start()
        await second.stop()  # never started: removes nothing
        assert (await asyncio.to_thread(request, path, {"command": "status"}))["ok"] is True
    finally:
        await first.stop()
    assert not os.path.exists(path)


async def test_stop_removes_only_its_own_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "control.sock")
    first = ControlServer(path, handler)
    await first.start()
    os.unlink(path)  # someone replaced it under us: another daemon's socket now lives at the path
    other = ControlServer(path, handler)
    await other.start()
    await first.stop()
    assert os.path.exists(path)
    assert (await asyncio.to_thread(request, path, {"command": "status"}))["ok"] is True
    await other.stop()
    assert not os.path.exists(path)
