"""The BGP shell against a fake BIRD control socket: the line protocol client, announce/withdraw from the
decision, the drain that waits for BIRD's export state, errors that never kill the worker."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from havs.bgp.bird import BirdProcess
from havs.bgp.control import BirdControl
from havs.bgp.supervisor import BgpSupervisor
from havs.core.bgp import BirdError, render_bird
from havs.core.config import parse_config, select_node
from havs.core.desired import build_desired
from havs.core.ipvs_table import IpvsTable
from tests.test_bgp import BASE


class FakeBird:
    """Speaks BIRD's control protocol: greeting, enable/disable, show protocols all (exported count
    follows the static protocol's state after `lag` show commands, as BIRD's export lags a little)."""

    def __init__(self, path: str, lag: int = 2) -> None:
        self.path, self.lag = path, lag
        self.commands: list[str] = []
        self.enabled: set[str] = set()
        self.lagging = 0
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> FakeBird:
        self.server = await asyncio.start_unix_server(self._client, self.path)
        return self

    async def _client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"0001 BIRD 2.0.12 ready.\n")
        while line := (await r.readline()).decode().strip():
            self.commands.append(line)
            verb, _, arg = line.partition(" ")
            if verb in ("enable", "disable"):
                (self.enabled.add if verb == "enable" else self.enabled.discard)(arg)
                self.lagging = self.lag
                w.write(f"0011-{arg}: {verb}d\n0000 \n".encode())
            elif verb == "configure":
                w.write(b"0002-Reading configuration\n0003 Reconfigured\n")
            elif line == "show protocols all":
                self.lagging = max(0, self.lagging - 1)
                exported = 1 if self.enabled or self.lagging else 0
                w.write(b"2002-Name Proto Table State Since Info\n"
                        b"1002-havs_peer0 BGP --- up 21:50:18.174 Established\n"
                        + f"     Routes:         0 imported, {exported} exported, 0 preferred\n".encode()
                        + b"0000 \n")
            else:
                w.write(b"9001 syntax error\n")
            await w.drain()
        w.close()


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **kw: self.events.append((event, kw))

    def names(self) -> list[str]:
        return [e for e, _ in self.events]


class StubBird:
    running = True


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[FakeBird]:
    bird = await FakeBird(str(tmp_path / "bird.ctl")).start()
    yield bird
    assert bird.server is not None
    bird.server.close()


async def supervisor(fake: FakeBird) -> tuple[BgpSupervisor, Log]:
    log = Log()
    sup = BgpSupervisor(log)
    sup.view = select_node(parse_config(BASE), "d1", "x")
    sup.bird = StubBird()  # type: ignore[assignment]
    sup.control = BirdControl(fake.path, timeout=2)
    await sup.control.connect()
    sup._tasks = [asyncio.ensure_future(sup._worker())]
    return sup, log


async def settle(sup: BgpSupervisor) -> None:
    for _ in range(50):
        await asyncio.sleep(0.01)
        if not sup._changed.is_set():
            return


async def test_control_client_commands_and_errors(fake: FakeBird) -> None:
    control = BirdControl(fake.path, timeout=2)
    assert await control.connect() == "BIRD 2.0.12 ready."
    reply = await control.command("enable havs_vip_x")
    assert reply.ok and reply.lines[0] == (11, "havs_vip_x: enabled")
    with pytest.raises(BirdError, match="syntax error"):
        await control.command("bogus")
    assert (await control.command("disable havs_vip_x")).ok  # still usable after an error reply
    control.close()
    with pytest.raises(ConnectionError):
        await control.command("show protocols all")


async def test_announce_follows_the_decision_and_drain_waits_for_bird(fake: FakeBird) -> None:
    sup, log = await supervisor(fake)
    assert sup.view is not None
    view = sup._fed_view = sup.view  # already started: the feeds only announce
    desired = build_desired(view.config)
    sup.feed(view, desired, desired.table)
    await settle(sup)
    assert fake.commands == ["enable havs_vip_203_0_113_10"]
    sup.feed(view, desired, desired.table)  # unchanged: no command
    await settle(sup)
    assert len(fake.commands) == 1
    sup.feed(view, desired, IpvsTable([]))  # the service left the kernel
    await settle(sup)
    assert fake.commands[-1] == "disable havs_vip_203_0_113_10"
    assert ("bgp.withdraw", {"vip": "203.0.113.10", "reason": "TCP 203.0.113.10:80 is not in the kernel's IPVS table"}
            ) in log.events
    sup.feed(view, desired, desired.table)
    await settle(sup)
    assert fake.commands[-1] == "enable havs_vip_203_0_113_10"
    for task in sup._tasks:
        task.cancel()
    assert await sup.drain(timeout=2)
    shows = [c for c in fake.commands if c == "show protocols all"]
    assert len(shows) == fake.lag  # polled until BIRD stopped exporting, not a fixed sleep
    assert log.names()[-2:] == ["bgp.withdraw", "bgp.drained"]


async def test_a_failing_control_socket_is_logged_and_retried(fake: FakeBird, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("havs.bgp.supervisor.RESTART_DELAY", 0.01)
    sup, log = await supervisor(fake)
    assert sup.control is not None and sup.view is not None
    sup.control.close()  # as if BIRD restarted under us
    desired = build_desired(sup.view.config)
    sup._fed_view = sup.view
    sup.feed(sup.view, desired, desired.table)
    for _ in range(100):
        await asyncio.sleep(0.01)
        if "enable havs_vip_203_0_113_10" in fake.commands:
            break
    assert "bgp.control_failed" in log.names()
    assert "enable havs_vip_203_0_113_10" in fake.commands  # reconnected and applied
    for task in sup._tasks:
        task.cancel()


async def test_a_missing_bird_is_one_clear_error(tmp_path: Path) -> None:
    text = BASE.replace("asn: 65001", f"asn: 65001\n  bird: /nonexistent/bird\n  run_dir: {tmp_path}/bird")
    log = Log()
    sup = BgpSupervisor(log)
    sup._sloppy = lambda: None  # type: ignore[method-assign]  # no IPVS sysctls here

    async def no_lo(view: Any) -> None:
        return None

    sup._vips_on_loopback = no_lo  # type: ignore[method-assign]
    assert not await sup.start(select_node(parse_config(text), "d1", "x"))
    assert log.names() == ["bgp.config_rejected"]
    assert "/nonexistent/bird" in log.events[0][1]["error"]
    assert not sup.active
    await sup.stop()  # nothing to stop: no error


@pytest.mark.skipif(shutil.which("bird") is None and not os.environ.get("CI"), reason="bird2 not installed")
async def test_reload_reconfigures_and_a_refused_config_keeps_the_running_one(fake: FakeBird, tmp_path: Path) -> None:
    sup, log = await supervisor(fake)
    sup.bird = BirdProcess("bird", str(tmp_path / "run"))
    assert sup.view is not None
    sup.bird.write_config(render_bird(sup.view, "/dev/null"))
    sup._vips_on_loopback = lambda view: asyncio.sleep(0)  # type: ignore[method-assign,assignment,return-value]
    two = select_node(parse_config(BASE + TUN_SERVICE), "d1", "x")
    await sup.reload(two)
    desired = build_desired(two.config)
    sup._fed_view = two
    sup.feed(two, desired, desired.table)  # the daemon's pass after the reload
    await settle(sup)
    assert f'configure "{sup.bird.conf}"' in fake.commands
    assert {"enable havs_vip_203_0_113_10", "enable havs_vip_203_0_113_11"} <= set(fake.commands)
    assert "havs_vip_203_0_113_11" in sup.bird.conf.read_text()
    before = sup.bird.conf.read_text()
    sup.bird.binary = "false"  # BIRD's check refuses whatever it is given
    await sup.reload(select_node(parse_config(BASE), "d1", "x"))
    assert log.names()[-1] == "bgp.reload_failed"
    assert sup.bird.conf.read_text() == before and sup.view is two
    for task in sup._tasks:
        task.cancel()


TUN_SERVICE = """\
  - address: 203.0.113.11
    port: 80
    scheduler: mh
    forwarding: tun
    on_down: inhibit
    announce: bgp
    real_servers: [{address: 10.2.0.21}]
"""


async def test_the_first_feed_starts_bgp_and_stop_waits_for_it(tmp_path: Path) -> None:
    """The daemon's only calls are feed() and stop(): a feed with a new view applies it in the background."""
    text = BASE.replace("asn: 65001", f"asn: 65001\n  bird: /nonexistent/bird\n  run_dir: {tmp_path}/bird")
    log = Log()
    sup = BgpSupervisor(log)
    view = select_node(parse_config(text), "d1", "x")
    desired = build_desired(view.config)
    sup.feed(view, desired, desired.table)
    sup.feed(view, desired, desired.table)  # the same view: applied once
    await sup.stop()  # waits for the start in progress, then has nothing to stop
    assert log.names() == ["bgp.config_rejected"]
    no_bgp = select_node(parse_config(BASE.replace("    announce: bgp\n", "").replace(
        "bgp:\n  asn: 65001\n  neighbors:\n    - {address: 10.1.0.1, asn: 65000}\n", "")), "d1", "x")
    sup.feed(no_bgp, desired, desired.table)  # no bgp section and nothing running: nothing to do
    assert sup._applying is not None and sup._applying.done() and not sup.active
