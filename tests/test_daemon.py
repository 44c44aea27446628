"""The daemon's own logic without sockets: maintenance drains persist, control requests are answered."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
import threading
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
    reply = await first.control.handle({"command": "drain", "server": "192.168.72.128"})
    assert reply == {"ok": True, "servers": ["TCP 192.168.0.108:80 192.168.72.128:80"]}
    second = daemon(config)
    second.control.load_drained()
    assert second.controller.drained == {("TCP 192.168.0.108:80", "192.168.72.128:80")}
    await second.control.handle({"command": "enable", "server": "192.168.72.128:80"})
    third = daemon(config)
    third.control.load_drained()
    assert third.controller.drained == set()


async def test_control_requests_name_what_is_wrong(config: Path) -> None:
    d = daemon(config)
    assert await d.control.handle({"command": "drain", "server": "10.9.9.9"}) == {
        "ok": False, "error": "no real server '10.9.9.9' in the config"}
    assert await d.control.handle({"command": "explode"}) == {"ok": False, "error": "unknown command 'explode'"}
    status = (await d.control.handle({"command": "status"}))["status"]
    assert status["node"] == "lvs1" and status["vrrp"] == []  # not started: no VRRP process yet
    assert [rs["health"] for rs in status["services"][0]["real_servers"]] == ["unchecked", "unchecked"]


def test_unreadable_drain_state_is_logged_not_fatal(config: Path, tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "drained.json").write_text("{not json")
    d = daemon(config)
    d.control.load_drained()
    assert d.controller.drained == set()


# ---------------------------------------------------------------------------------------------- fault injection
# The whole daemon runs with fake edges (tests/fakes.py): an IPVS table that applies ops, a VRRP process
# that records calls, health checks that send nothing. Assertions are on behaviour, not timing.

SVC = "TCP 192.168.0.108:80"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    FakeIpvs.instances.clear()
    FakeVrrp.made.clear()
    FakeVrrp.start_error = None
    FakeVrrp.refuses, FakeVrrp.answers = False, True
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
    reply = await d.control.handle({"command": "reload"})  # answered once the reload is over
    reasons = log.named("config.reload_refused")[0]["reasons"]
    assert reasons and d.view.config.virtual_services
    assert reply == {"ok": False, "outcome": "refused", "force": False, "problems": reasons,
                     "error": "reload refused (havs reload --force applies it); the running config is kept"}
    assert FakeIpvs.instances[0].table == seed_table(write(env))
    write(env, without_services((REPO / "etc/havs.yaml").read_text()))
    reply = await d.control.handle({"command": "reload", "force": True})
    assert log.named("config.reloaded") and not d.view.config.virtual_services
    assert reply == {"ok": True, "outcome": "forced", "force": True,
                     "warnings": log.named("config.reload_forced")[0]["reasons"]}
    assert d.controller.reloads == {"refused": 1, "forced": 1}
    assert await stop(d, task) == 0


async def test_havs_reload_exits_non_zero_with_the_files_problems(env: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    log = ListLog()
    path = write(env)
    d, task = start(path, log)
    await until(lambda: log.named("daemon.ready"))
    sock = str(env / "run" / "control.sock")
    write(env, SEED.replace("priority: 150", "priority: 300"))
    assert await asyncio.to_thread(main, ["reload", "--socket", sock]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{path}:") and "priority" in err[0] and "300" in err[0], err
    assert err[-1] == "havs: the config has problems; the running config is kept"
    write(env)
    assert await asyncio.to_thread(main, ["reload", "--socket", sock]) == 0
    assert capsys.readouterr().out == "reloaded (applied)\n"
    assert d.controller.reloads == {"failed": 1, "applied": 1}
    assert await stop(d, task) == 0


async def test_a_reload_whose_vrrp_part_cannot_start_keeps_vrrp_running(env: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    log = ListLog()
    d, task = start(write(env), log)
    await until(lambda: log.named("daemon.ready"))
    running = d.vrrp.process
    monkeypatch.setattr(havs.vrrp_supervisor, "interface_exists", lambda name: name != "eth7")
    write(env, (REPO / "etc/havs.yaml").read_text().replace("server: eth1", "server: eth7", 1))  # the heartbeat link
    await d.control.handle({"command": "reload"})
    await until(lambda: log.named("config.reloaded"))
    assert log.named("config.vrrp_not_applied")[0]["interfaces"] == ["eth7"]
    assert d.vrrp.process is running and running.calls == ["spawn", "start"]  # untouched: addresses kept
    # a process that does not answer is restarted; here no new one starts
    FakeVrrp.answers = False
    FakeVrrp.start_error = RuntimeError("cannot bind the VRRP socket")
    write(env, (REPO / "etc/havs.yaml").read_text().replace("router_id: 51", "router_id: 52"))
    await d.control.handle({"command": "reload"})
    await until(lambda: len(log.named("config.reloaded")) == 2)
    assert log.named("config.reloaded")[1]["vrrp"] == "unavailable"  # previous one restarted: it failed too
    FakeVrrp.start_error, FakeVrrp.answers = None, True
    await d.control.handle({"command": "reload"})  # the same file again: VRRP is retried, not forgotten
    await until(lambda: len(log.named("config.reloaded")) == 3)
    assert log.named("config.reloaded")[2]["vrrp"] == "restarted"
    assert d.vrrp.process is not None and d.vrrp.process.view.config.vrrp[0].router_id == 52  # type: ignore[attr-defined]
    assert await stop(d, task) == 0


async def test_a_failed_vrrp_restart_brings_the_previous_instance_back(env: Path) -> None:
    log = ListLog()
    d, task = start(write(env), log)
    await until(lambda: log.named("daemon.ready"))

    class FailsOnce(FakeVrrp):
        def start(self) -> None:
            self.calls.append("start")
            if self.view.config.vrrp[0].router_id == 52:
                raise RuntimeError("interface eth1 has no IPv4 address")

    d.vrrp.factory = FailsOnce  # type: ignore[assignment]
    FakeVrrp.answers = False  # the running process does not answer the update: it is restarted
    write(env, (REPO / "etc/havs.yaml").read_text().replace("router_id: 51", "router_id: 52"))
    await d.control.handle({"command": "reload"})
    await until(lambda: log.named("config.reloaded"))
    assert log.named("config.reloaded")[0]["vrrp"] == "kept previous config"
    assert d.vrrp.process is not None and d.vrrp.process.view.config.vrrp[0].router_id == 51  # type: ignore[attr-defined]
    assert await stop(d, task) == 0


async def test_the_health_checks_get_their_concurrency_bound_from_the_settings(env: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[dict[str, Any]] = []

    class Health(FakeHealth):
        def __init__(self, services: Any, **kw: Any) -> None:
            made.append(kw)
            super().__init__(services, **kw)

    monkeypatch.setattr(havs.daemon, "HealthService", Health)
    log = ListLog()
    d, task = start(write(env, SEED.replace("  state_dir:", "  health_max_in_flight: 40\n  state_dir:")), log)
    await until(lambda: log.named("daemon.ready"))
    assert [kw["max_in_flight"] for kw in made] == [40]
    assert await stop(d, task) == 0


async def test_services_added_by_reload_to_a_daemon_started_without_any_are_applied(env: Path) -> None:
    log = ListLog()
    seed = (REPO / "etc/havs.yaml").read_text()
    d, task = start(write(env, without_services(seed)), log)
    await until(lambda: log.named("daemon.ready"))
    assert d.ipvs.reconciler is None and FakeIpvs.instances == []
    write(env, seed)
    await d.control.handle({"command": "reload"})
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
    assert wire["services"][0]["flags"] == [] and wire["vrrp"][0]["adverts_received"] == 4
    assert wire["vrrp"][0]["instance"] == "VI_1" and out[1].startswith("VRRP BACKUP since ") and "— VI_1, " in out[1]
    assert await stop(d, task) == 0


# ---------------------------------------------------------------------------------------------- review fixes

SEED = (REPO / "etc/havs.yaml").read_text()
SYNC = SEED.replace("  garp:\n", "  connection_sync: {interface: server, sync_id: 7, mode: follow}\n  garp:\n", 1)
QUORUM = SEED.replace("    scheduler: rr\n", "    scheduler: rr\n    quorum: {min_weight: 1, priority_decrement: 50}\n",
                      1)


def sync_threads(ipvs: FakeIpvs) -> dict[str, tuple[str, int]]:
    return {state: (d.ifname, d.syncid) for state, d in ipvs.sync.items()}


async def test_sync_threads_end_in_the_latest_vrrp_state_when_changes_come_in_quick_succession(env: Path) -> None:
    log = ListLog()
    d, task = start(write(env, SYNC), log)
    await until(lambda: log.named("daemon.ready"))
    ipvs = FakeIpvs.instances[0]
    assert sync_threads(ipvs) == {"backup": ("eth1", 7)}
    ipvs.netlink_delay = 0.02  # each netlink call takes a while: the two runs would interleave
    [vrrp] = FakeVrrp.made
    await asyncio.to_thread(vrrp.on_state, "VI_1", "BACKUP", "MASTER", "master_down")  # from the link's thread
    await asyncio.to_thread(vrrp.on_state, "VI_1", "MASTER", "BACKUP", "higher_priority")
    await asyncio.sleep(0.3)
    assert sync_threads(ipvs) == {"backup": ("eth1", 7)}
    assert log.named("ipvs.sync_daemon_failed") == []
    await asyncio.to_thread(vrrp.on_state, "VI_1", "BACKUP", "MASTER", "master_down")
    await until(lambda: sync_threads(ipvs) == {"master": ("eth1", 7)})
    assert await stop(d, task) == 0


async def test_a_reload_brings_the_sync_threads_to_the_new_config(env: Path) -> None:
    log = ListLog()
    d, task = start(write(env, SYNC), log)
    await until(lambda: log.named("daemon.ready"))
    ipvs = FakeIpvs.instances[0]
    write(env, SYNC.replace("sync_id: 7", "sync_id: 9"))
    await d.control.handle({"command": "reload"})
    await until(lambda: log.named("config.reloaded"))
    await until(lambda: sync_threads(ipvs) == {"backup": ("eth1", 9)})
    assert await stop(d, task) == 0


async def test_a_reload_that_fails_half_way_still_tells_systemd_it_is_over(env: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(str(env / "notify"))
    manager.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(env / "notify"))
    log = ListLog()
    d, task = start(write(env), log)
    await until(lambda: log.named("daemon.ready"))

    class Wedged(FakeVrrp):
        def update(self, view: Any) -> bool:
            raise RuntimeError("the link is gone")

    d.vrrp.process.__class__ = Wedged  # type: ignore[union-attr]
    write(env, SEED.replace("advert_interval: 0.1", "advert_interval: 0.2"))
    await d.control.handle({"command": "reload"})
    await until(lambda: log.named("daemon.error"))
    sent = []
    with contextlib.suppress(BlockingIOError):
        while True:
            sent.append(manager.recv(4096).decode())
    reloading = next(i for i, m in enumerate(sent) if m.startswith("RELOADING=1"))
    assert any(m.startswith("READY=1") for m in sent[reloading + 1:]), sent
    assert not task.done()
    manager.close()
    assert await stop(d, task) == 0


async def test_a_reloaded_reconcile_interval_takes_effect(env: Path) -> None:
    log = ListLog()
    d, task = start(write(env), log)
    await until(lambda: log.named("daemon.ready"))
    write(env, SEED.replace("reconcile_interval: 5 ", "reconcile_interval: 0.05 "))
    await d.control.handle({"command": "reload"})
    await until(lambda: log.named("config.reloaded"))
    rec = d.ipvs.reconciler
    assert rec is not None
    passes = rec.passes
    await asyncio.sleep(0.5)  # no wake: only the interval runs passes now
    assert rec.passes - passes >= 4
    assert await stop(d, task) == 0


async def test_a_priority_decrement_known_at_start_reaches_vrrp_only_after_its_start(env: Path) -> None:
    log = ListLog()
    d, task = start(write(env, QUORUM.replace("  state_dir:", "  initial_health: down\n  state_dir:")), log)
    await until(lambda: log.named("daemon.ready") or task.done())
    assert not task.done() and log.named("vrrp.unavailable") == []
    [vrrp] = FakeVrrp.made
    await until(lambda: vrrp.decrement == {"VI_1": 50})  # quorum lost: every server is down until `rise` checks
    assert vrrp.calls == ["spawn", "start", "decrement VI_1=50"]
    assert await stop(d, task) == 0


async def test_a_vrrp_send_that_blocks_never_stalls_the_loop(env: Path) -> None:
    log = ListLog()
    d, task = start(write(env, QUORUM), log)
    await until(lambda: log.named("daemon.ready"))
    [vrrp] = FakeVrrp.made
    vrrp.decrement_delay = 1.0  # the link's lock held by a blocking send on another thread
    health = d.health
    assert isinstance(health, FakeHealth)
    for key in health.up:
        health.up[key] = False
    d.wake.set()
    loop = asyncio.get_running_loop()
    worst, until_t = 0.0, loop.time() + 0.6
    while loop.time() < until_t:
        t = loop.time()
        status = await d.control.handle({"command": "status"})
        await asyncio.sleep(0.01)
        worst = max(worst, loop.time() - t)
    assert status["ok"] and worst < 0.3, f"the loop stalled {worst:.2f}s"
    await until(lambda: vrrp.decrement == {"VI_1": 50})
    assert await stop(d, task) == 0


async def test_a_vrrp_process_that_cannot_be_made_is_a_logged_start_error(env: Path) -> None:
    class NoFork(FakeVrrp):
        def spawn(self) -> None:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    log = ListLog()
    d = Daemon(str(write(env)), "lvs1", log)  # type: ignore[arg-type]
    d.vrrp.factory = NoFork  # type: ignore[assignment]
    assert await asyncio.wait_for(d.run(), 5) == 1
    assert "Resource temporarily unavailable" in log.named("vrrp.unavailable")[0]["error"]


async def test_a_stop_does_not_wait_for_a_slow_reload_parse(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import havs.reload_reader

    log = ListLog()
    d, task = start(write(env), log)
    await until(lambda: log.named("daemon.ready"))
    slow = threading.Event()

    def parse(*args: Any) -> Any:
        slow.wait(3)  # a huge file
        return load_view(*args)

    monkeypatch.setattr(havs.reload_reader, "load_view", parse)
    d._on_signal(signal.SIGHUP)
    await asyncio.sleep(0.1)
    t = asyncio.get_running_loop().time()
    assert await stop(d, task) == 0
    assert asyncio.get_running_loop().time() - t < 1.0
    assert FakeVrrp.made[0].calls[-1] == "stop graceful=True"
    slow.set()


async def test_vrrp_is_stopped_gracefully_even_when_closing_the_control_socket_fails(env: Path) -> None:
    log = ListLog()
    d, task = start(write(env), log)
    await until(lambda: log.named("daemon.ready"))

    async def broken() -> None:
        raise OSError(errno.EIO, "Input/output error")

    d.control.stop = broken  # type: ignore[method-assign]
    assert await stop(d, task) == 0
    assert FakeVrrp.made[0].calls[-1] == "stop graceful=True"
    assert log.named("daemon.stop_failed")[0]["step"] == "control"


async def test_a_reload_moving_state_dir_keeps_the_drains_and_names_settings_needing_a_restart(env: Path) -> None:
    log = ListLog()
    d, task = start(write(env), log)
    await until(lambda: log.named("daemon.ready"))
    await d.control.handle({"command": "drain", "server": "192.168.72.128"})
    text = write(env).read_text()
    write(env, "\n".join(line for line in text.splitlines() if "state_dir" not in line and "control_socket" not in line)
          .replace("settings:\n", f"settings:\n  state_dir: {env / 'moved'}\n  metrics_listen: 127.0.0.1:1\n", 1))
    await d.control.handle({"command": "reload"})
    await until(lambda: log.named("config.reloaded"))
    assert json.loads((env / "moved" / "drained.json").read_text()) == [[SVC, "192.168.72.128:80"]]
    assert log.named("config.restart_needed")[0]["settings"] == ["control_socket", "metrics_listen"]
    assert await stop(d, task) == 0


async def test_connection_sync_runs_on_a_director_started_without_services(env: Path) -> None:
    log = ListLog()
    d, task = start(write(env, without_services(SYNC)), log)
    await until(lambda: log.named("daemon.ready"))
    [ipvs] = FakeIpvs.instances
    assert sync_threads(ipvs) == {"backup": ("eth1", 7)} and ipvs.table == IpvsTable([])
    assert await stop(d, task) == 0
