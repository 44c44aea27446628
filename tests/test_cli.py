from __future__ import annotations

from pathlib import Path

import pytest

from havs import __version__
from havs.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_check_summarises_the_node(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", str(REPO / "etc/havs.yaml"), "--node", "lvs2"]) == 0
    out = capsys.readouterr().out
    assert "node lvs2" in out and "priority 100" in out
    assert "floating 192.168.0.108/24 on eth0" in out and "floating 192.168.72.130/24 on eth1" in out
    assert "-> 192.168.72.128:80            Masq    1" in out


def test_check_lists_every_error_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes:\n  lvs1:\n    interfaces: {a: eth0}\n    priority: 0\n    prio: 1\n")
    assert main(["check", "-c", str(bad), "--node", "lvs1"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{bad}:4: nodes.lvs1.priority: must be 1..254, got 0",
        f"{bad}:5: nodes.lvs1.prio: unknown key",
        "havs: 2 problems in the config",
    ]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"havs {__version__}"


def test_world_writable_config_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "havs.yaml"
    path.write_text((REPO / "etc/havs.yaml").read_text())
    path.chmod(0o666)
    assert main(["check", "-c", str(path), "--node", "lvs1"]) == 1
    assert f"{path}: is world-writable (mode 0666); refusing to use it: chmod o-w" in capsys.readouterr().err
    path.chmod(0o644)
    assert main(["check", "-c", str(path), "--node", "lvs1"]) == 0


async def test_reload_force_asks_the_daemon_for_a_forced_reload(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio
    from typing import Any

    from havs.edge.control import ControlServer

    seen: list[dict[str, Any]] = []

    async def handler(req: dict[str, Any]) -> dict[str, Any]:
        seen.append(req)
        return {"ok": True}

    path = str(tmp_path / "run" / "control.sock")
    server = ControlServer(path, handler)
    await server.start()
    try:
        assert await asyncio.to_thread(main, ["reload", "--socket", path]) == 0
        assert await asyncio.to_thread(main, ["reload", "--force", "--socket", path]) == 0
    finally:
        await server.stop()
    assert seen == [{"command": "reload"}, {"command": "reload", "force": True}]
    assert "(forced)" in capsys.readouterr().out.splitlines()[-1]


AUTH_ANCHOR = "  unicast_peers: []            # empty: multicast 224.0.0.18; else the peers' addresses\n"
SECRET_HEX = "c0ffee" * 10 + "abcd"  # 32 bytes


def test_check_shows_auth_hmac_mode_and_key_ids_never_a_key(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    seed = (REPO / "etc/havs.yaml").read_text()
    assert AUTH_ANCHOR in seed
    path = tmp_path / "havs.yaml"
    path.write_text(seed.replace(AUTH_ANCHOR, AUTH_ANCHOR + (
        f'  auth_hmac:\n    keys: {{1: "hex:{SECRET_HEX}", 7: "{"k" * 40}"}}\n    active_key: 7\n'
        "    anti_replay: time\n    mode: permissive\n")))
    assert main(["check", "-c", str(path), "--node", "lvs2", "--offline"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    # right under the VRRP block's interfaces; the seed's 0.1 s adverts give the default 5 s window
    at = lines.index("  interfaces: client=eth0, server=eth1")
    assert lines[at + 1] == ("  auth_hmac: permissive, anti_replay time window 5s, keys 1=**********, 7=**********, "
                             "signing with 7")
    assert SECRET_HEX not in out and "c0ffee" not in out and "k" * 40 not in out
    path.write_text(path.read_text().replace("anti_replay: time", "anti_replay: monotonic"))
    assert main(["check", "-c", str(path), "--node", "lvs2", "--offline"]) == 0
    assert "  auth_hmac: permissive, anti_replay monotonic, keys 1=**********" in capsys.readouterr().out


def test_check_shows_what_bgp_announces(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bgp.yaml"
    path.write_text("nodes:\n  d1: {interfaces: {up: eth0}, router_id: 10.1.0.11}\n"
                    "bgp:\n  asn: 65001\n  neighbors:\n    - {address: 10.1.0.1, asn: 65000, password: s3cr3t-pw}\n"
                    "virtual_services:\n  - {address: 203.0.113.10, port: 80, scheduler: mh, forwarding: dr,\n"
                    "     on_down: inhibit, announce: bgp, real_servers: [{address: 10.2.0.21}]}\n")
    assert main(["check", "-c", str(path), "--node", "d1", "--offline"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "VRRP: off (this director owns no floating addresses)"
    assert lines[2] == "bgp: AS 65001, router id 10.1.0.11, BFD 100 ms x 3, hold 9 s; neighbors 10.1.0.1 AS 65000"
    assert lines[3].startswith("bgp: announces 203.0.113.10/32 while each service")
    assert lines[4] == "1 virtual service(s):"
    assert not [line for line in lines if "s3cr3t" in line]


def test_check_names_the_ipv6_vrrp_group(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "v6.yaml"
    path.write_text((REPO / "etc/havs.yaml").read_text().replace("192.168.0.108/24 ", "'2001:db8::10/64' ", 1)
                    .replace("192.168.72.130/24 ", "'fd00::1/64' ", 1))
    assert main(["check", "-c", str(path), "--node", "lvs2", "--offline"]) == 0
    assert capsys.readouterr().out.splitlines()[1].endswith(" heartbeat eth1 multicast ff02::12")


def test_run_uses_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    """`havs run` runs the daemon on uvloop (a dependency): its health checks cost much less CPU there."""
    import asyncio
    import signal

    import uvloop

    import havs.daemon
    import havs.log
    import havs.startup

    seen: list[object] = []

    class FakeDaemon:
        def __init__(self, *_args: object) -> None:
            pass

        async def run(self) -> int:
            seen.append(asyncio.get_running_loop())
            return 0

    monkeypatch.setattr(havs.daemon, "Daemon", FakeDaemon)
    monkeypatch.setattr(havs.startup, "raise_open_files_limit", lambda: None)
    monkeypatch.setattr(havs.log, "setup_logging", lambda *_a, **_k: None)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
    try:
        assert main(["run", "-c", str(REPO / "etc/havs.yaml"), "--node", "lvs1"]) == 0
    finally:
        asyncio.set_event_loop_policy(None)
        for s, h in handlers.items():
            signal.signal(s, h)
    assert len(seen) == 1 and isinstance(seen[0], uvloop.Loop)
