"""The daemon's own logic without sockets: maintenance drains persist, control requests are answered."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeHealth, FakeIpvs, FakeVrrp, ListLog

import havs.daemon
import havs.vrrp_supervisor
from havs.cli import main
from havs.configfile import load_view
from havs.core.desired import build_desired
from havs.core.ipvs_table import IpvsTable
from havs.core.status import StatusSnapshot
from havs.daemon import Daemon
from havs.edge.pidlock import acquire
from havs.log import setup_logging
from havs.startup import EarlySignals

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


# ---------------------------------------------------------------------------------------------- fault injection
# The whole daemon runs with fake edges (tests/fakes.py): an IPVS table that applies ops, a VRRP process
# that records calls, health checks that send nothing. Assertions are on behaviour, not timing.

SVC = "TCP 192.168.0.108:80"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    FakeIpvs.instances.clear()
    FakeVrrp.made.clear()
    FakeVrrp.start_error = None
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setattr(havs.daemon, "IpvsSocket", FakeIpvs)
    monkeypatch.setattr(havs.daemon, "HealthService", FakeHealth)
    monkeypatch.setattr(havs.vrrp_supervisor, "interface_exists", lambda _name: True)
    return tmp_path


def write(tmp_path: Path, text: str | None = None) -> Path:
    path = tmp_path / "havs.yaml"
    text = text if text is not None else (REPO / "etc/havs.yaml").read_text()
    path.write_text(text.replace("/var/lib/havs", str(tmp_path / "state"))
                    .replace("/run/havs/control.sock", str(tmp_path / "run" / "control.sock")))
    return path


def without_services(text: str) -> str:
    return text.split("virtual_services:")[0]


def start(path: Path, log: ListLog, early: EarlySignals | None = None) -> tuple[Daemon, asyncio.Task[int]]:
    d = Daemon(str(path), "lvs1", log, early=early)  # type: ignore[arg-type]
    d.vrrp.factory = FakeVrrp  # type: ignore[assignment]
    return d, asyncio.create_task(d.run())


async def until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met"
        await asyncio.sleep(0.005)


async def stop(d: Daemon, task: asyncio.Task[int]) -> int:
    d._on_signal(signal.SIGTERM)
    return await asyncio.wait_for(task, 5)


def seed_table(path: Path) -> IpvsTable:
    return build_desired(load_view(str(path), "lvs1").config).table


async def test_socket_errors_in_passes_never_end_the_daemon_and_the_next_pass_repairs(env: Path) -> None:
    ipvs = FakeIpvs()
    ipvs.fail_dump = [OSError(errno.ENOBUFS, "No buffer space available")]
    ipvs.fail_apply = [RuntimeError("anything at all")]
    havs.daemon.IpvsSocket = lambda: ipvs  # type: ignore[assignment,misc]  (undone by monkeypatch)
    log = ListLog()
    d, task = start(write(env), log)
    await until(lambda: log.named("daemon.ready"))
    assert ipvs.table == IpvsTable([]) and not task.done()  # the first pass failed; the daemon is up anyway
    d.wake.set()
    await until(lambda: len(log.named("ipvs.pass_failed")) == 2)
    d.wake.set()
    await until(lambda: ipvs.table == seed_table(write(env)))
    assert [f["stage"] for f in log.named("ipvs.pass_failed")] == ["dump", "apply"]
    assert await stop(d, task) == 0
    [vrrp] = FakeVrrp.made
    assert vrrp.calls == ["spawn", "start", "stop graceful=True"]


async def test_sighup_during_start_is_queued_and_sigterm_during_start_is_honoured(env: Path) -> None:
    early, log = EarlySignals(), ListLog()
    early.received = [signal.SIGHUP]
    d, task = start(write(env), log, early)
    await until(lambda: log.named("config.reloaded"))
    assert await stop(d, task) == 0
    early.received, log2 = [signal.SIGTERM], ListLog()
    _d2, task2 = start(write(env), log2, early)
    assert await asyncio.wait_for(task2, 5) == 0
    assert FakeVrrp.made[-1].calls == ["spawn", "stop graceful=True"]  # never announced, still stopped cleanly


async def test_a_dangerous_reload_is_refused_unless_forced(env: Path) -> None:
    log = ListLog()
    path = write(env)
    d, task = start(path, log)
    await until(lambda: log.named("daemon.ready"))
    write(env, without_services((REPO / "etc/havs.yaml").read_text()))  # a file caught mid-copy
    assert await d.handle_request({"command": "reload"}) == {"ok": True, "force": False}
    await until(lambda: log.named("config.reload_refused"))
    assert log.named("config.reload_refused")[0]["reasons"] and d.view.config.virtual_services
    assert FakeIpvs.instances[0].table == seed_table(write(env))
    write(env, without_services((REPO / "etc/havs.yaml").read_text()))
    assert await d.handle_request({"command": "reload", "force": True}) == {"ok": True, "force": True}
    await until(lambda: log.named("config.reloaded"))
    assert log.named("config.reload_forced") and not d.view.config.virtual_services
    assert await stop(d, task) == 0


async def test_a_reload_whose_vrrp_part_cannot_start_keeps_vrrp_running(env: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    log = ListLog()
    d, task = start(write(env), log)
    await until(lambda: log.named("daemon.ready"))
    running = d.vrrp.process
    monkeypatch.setattr(havs.vrrp_supervisor, "interface_exists", lambda name: name != "eth7")
    write(env, (REPO / "etc/havs.yaml").read_text().replace("client: eth0", "client: eth7", 1))
    await d.handle_request({"command": "reload"})
    await until(lambda: log.named("config.reloaded"))
    assert log.named("config.vrrp_not_applied")[0]["interfaces"] == ["eth7"]
    assert d.vrrp.process is running and running.calls == ["spawn", "start"]  # untouched: addresses kept
    FakeVrrp.start_error = RuntimeError("cannot bind the VRRP socket")
    write(env, (REPO / "etc/havs.yaml").read_text().replace("router_id: 51", "router_id: 52"))
    await d.handle_request({"command": "reload"})
    await until(lambda: len(log.named("config.reloaded")) == 2)
    assert log.named("config.reloaded")[1]["vrrp"] == "unavailable"  # previous one restarted: it failed too
    FakeVrrp.start_error = None
    await d.handle_request({"command": "reload"})  # the same file again: VRRP is retried, not forgotten
    await until(lambda: len(log.named("config.reloaded")) == 3)
    assert log.named("config.reloaded")[2]["vrrp"] == "restarted"
    assert d.vrrp.process is not None and d.vrrp.process.view.config.vrrp.router_id == 52  # type: ignore[attr-defined]
    assert await stop(d, task) == 0


async def test_a_failed_vrrp_restart_brings_the_previous_instance_back(env: Path) -> None:
    log = ListLog()
    d, task = start(write(env), log)
    await until(lambda: log.named("daemon.ready"))

    class FailsOnce(FakeVrrp):
        def start(self) -> None:
            self.calls.append("start")
            if self.view.config.vrrp.router_id == 52:
                raise RuntimeError("interface eth1 has no IPv4 address")

    d.vrrp.factory = FailsOnce  # type: ignore[assignment]
    write(env, (REPO / "etc/havs.yaml").read_text().replace("router_id: 51", "router_id: 52"))
    await d.handle_request({"command": "reload"})
    await until(lambda: log.named("config.reloaded"))
    assert log.named("config.reloaded")[0]["vrrp"] == "kept previous config"
    assert d.vrrp.process is not None and d.vrrp.process.view.config.vrrp.router_id == 51  # type: ignore[attr-defined]
    assert await stop(d, task) == 0


async def test_services_added_by_reload_to_a_daemon_started_without_any_are_applied(env: Path) -> None:
    log = ListLog()
    seed = (REPO / "etc/havs.yaml").read_text()
    d, task = start(write(env, without_services(seed)), log)
    await until(lambda: log.named("daemon.ready"))
    assert d.reconciler is None and FakeIpvs.instances == []
    write(env, seed)
    await d.handle_request({"command": "reload"})
    await until(lambda: log.named("config.reloaded"))
    health = d.health
    assert isinstance(health, FakeHealth) and health.initial == "down"  # new servers earn their place
    ipvs = FakeIpvs.instances[0]
    await until(lambda: len(ipvs.table) == 1)
    for key in health.up:
        health.up[key] = True
    d.wake.set()
    await until(lambda: ipvs.table == seed_table(write(env)))
    assert await stop(d, task) == 0


async def test_a_second_daemon_on_the_node_says_who_holds_it_and_exits_1(env: Path) -> None:
    path = write(env)
    (env / "run").mkdir(mode=0o700)
    lock = acquire(str(env / "run" / "control.sock.lock"))
    try:
        log = ListLog()
        _d, task = start(path, log)
        assert await asyncio.wait_for(task, 5) == 1
        [event] = log.named("daemon.already_running")
        assert f"pid {os.getpid()}" in event["error"]
        assert FakeVrrp.made == [] and FakeIpvs.instances == []  # touched nothing of the running one
    finally:
        lock.release()


async def test_sigterm_sets_the_stop_flag_before_logging(env: Path) -> None:
    class BrokenLog(ListLog):
        def info(self, event: str, **kw: Any) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    d = Daemon(str(write(env)), "lvs1", BrokenLog())  # type: ignore[arg-type]
    with pytest.raises(BrokenPipeError):
        d._on_signal(signal.SIGTERM)
    assert d.stopping.is_set()


async def test_status_reaches_havs_status_through_the_control_socket(env: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    log = ListLog()
    d, task = start(write(env), log)
    await until(lambda: log.named("daemon.ready") and d.control is not None)
    sock = str(env / "run" / "control.sock")
    assert await asyncio.to_thread(main, ["status", "--socket", sock]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("VRRP BACKUP since ") and "router 51 v3 priority 150, multicast on eth1" in out[1]
    assert "IPVS: 1 passes, 3 ops applied, 0 failed, 0 drift repairs" in out
    assert "TCP  192.168.0.108:80      rr" in out
    # (the fake kernel keeps no counters: connections show as unknown)
    assert "  -> 192.168.72.128:80            Masq    1      -          -         up     ok           1.5ms" in out
    assert await asyncio.to_thread(main, ["status", "--json", "--socket", sock]) == 0
    wire = json.loads(capsys.readouterr().out)
    assert StatusSnapshot.from_dict(wire).services == d.snapshot().services
    assert wire["services"][0]["flags"] == [] and wire["vrrp"]["adverts_received"] == 4
    assert await stop(d, task) == 0
