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
