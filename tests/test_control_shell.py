"""`havs reload` answers with the reload's outcome: the control shell's waiting and coalescing, and the CLI's
exit code and output for each outcome."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from fakes import ListLog

from havs.cli import main
from havs.configfile import load_view
from havs.control_shell import ControlShell, ReloadOutcome, outcome_of
from havs.core.controller import Controller
from havs.edge.control import ControlServer
from havs.reload_reader import Verdict

REPO = Path(__file__).resolve().parents[1]


def shell(tmp_path: Path, asked: list[bool]) -> ControlShell:
    cfg = tmp_path / "havs.yaml"
    cfg.write_text((REPO / "etc/havs.yaml").read_text().replace("/var/lib/havs", str(tmp_path / "state")))
    return ControlShell(Controller(load_view(str(cfg), "lvs1")), ListLog(), on_reload=asked.append,
                        on_change=lambda: None, snapshot=lambda: None)  # type: ignore[arg-type,return-value]


def verdict(view: Any = None, status: str = "running", reasons: tuple[str, ...] = (),
            problems: tuple[str, ...] = ()) -> Verdict:
    v = Verdict(view, status, list(reasons))
    if problems:
        v.problems = list(problems)  # type: ignore[attr-defined]
    return v


@pytest.mark.parametrize(("v", "status", "expected"), [
    (None, "reload failed; see the log", ReloadOutcome("error")),
    (verdict(None, "reload failed; running config kept", problems=("havs.yaml:3: vrrp.priority: bad",)),
     "reload failed; running config kept", ReloadOutcome("failed", ("havs.yaml:3: vrrp.priority: bad",))),
    (verdict(None, "reload refused; running config kept", ("removes 2 of 2 servers",)), "x",
     ReloadOutcome("refused", ("removes 2 of 2 servers",))),
    (verdict(None, "stopping"), "stopping", ReloadOutcome("stopping")),
    (verdict(object()), "running", ReloadOutcome("applied")),
    (verdict(object(), reasons=("releases the VIP",)), "running", ReloadOutcome("forced", ("releases the VIP",))),
    (verdict(object()), "reload failed; see the log", ReloadOutcome("error")),  # failed while applying
])
def test_outcome_of_a_reload(v: Verdict | None, status: str, expected: ReloadOutcome) -> None:
    assert outcome_of(v, status) == expected


async def test_requests_wait_for_the_reload_that_starts_after_them(tmp_path: Path) -> None:
    asked: list[bool] = []
    s = shell(tmp_path, asked)
    first = asyncio.ensure_future(s.handle({"command": "reload"}))
    second = asyncio.ensure_future(s.handle({"command": "reload", "force": True}))
    await asyncio.sleep(0)
    assert asked == [False, True] and not first.done()
    done = s.reload_begun()  # the daemon starts one reload for both (it coalesces them)
    late = asyncio.ensure_future(s.handle({"command": "reload"}))  # made while it runs: waits for the next
    await asyncio.sleep(0)
    s.judged(verdict(None, "reload refused; running config kept", ("removes 2 of 2 servers",)))
    done("reload refused; running config kept")
    assert await first == {"ok": False, "outcome": "refused", "force": False, "problems": ["removes 2 of 2 servers"],
                           "error": "reload refused (havs reload --force applies it); the running config is kept"}
    assert (await second)["outcome"] == "refused"
    await asyncio.sleep(0.01)
    assert not late.done()
    done = s.reload_begun()
    s.judged(verdict(object()))
    done("running")
    assert await late == {"ok": True, "outcome": "applied", "force": False, "warnings": []}
    assert s.controller.reloads == {"refused": 1, "applied": 1}


async def test_a_stopping_daemon_answers_waiting_requests(tmp_path: Path) -> None:
    s = shell(tmp_path, [])
    pending = asyncio.ensure_future(s.handle({"command": "reload"}))
    await asyncio.sleep(0)
    await s.stop()
    assert (await pending)["outcome"] == "stopping"


async def test_the_cli_exits_non_zero_and_prints_the_problems(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    replies = iter([
        {"ok": False, "outcome": "failed", "error": "the config has problems; the running config is kept",
         "problems": ["havs.yaml:12: vrrp.priority: must be 1..254, got 300", "havs.yaml:20: nodes: x"]},
        {"ok": True, "outcome": "forced", "warnings": ["releases the VIP"]},
    ])

    async def handler(_req: dict[str, Any]) -> dict[str, Any]:
        return next(replies)

    path = str(tmp_path / "run" / "control.sock")
    server = ControlServer(path, handler)
    await server.start()
    try:
        assert await asyncio.to_thread(main, ["reload", "--socket", path]) == 1
        err = capsys.readouterr().err.splitlines()
        assert err == ["havs.yaml:12: vrrp.priority: must be 1..254, got 300", "havs.yaml:20: nodes: x",
                       "havs: the config has problems; the running config is kept"]
        assert await asyncio.to_thread(main, ["reload", "--force", "--socket", path]) == 0
        assert capsys.readouterr().out.splitlines() == ["forced past: releases the VIP", "reloaded (forced)"]
    finally:
        await server.stop()


async def test_reloading_answers_even_when_the_reload_raises(tmp_path: Path) -> None:
    s = shell(tmp_path, [])
    pending = asyncio.ensure_future(s.handle({"command": "reload"}))
    await asyncio.sleep(0)

    async def broken() -> str:
        s.judged(verdict(object()))
        raise RuntimeError("netlink said no")

    with pytest.raises(RuntimeError):
        await s.reloading(broken())
    assert (await pending)["outcome"] == "error" and s.controller.reloads == {"error": 1}

    pending = asyncio.ensure_future(s.handle({"command": "reload"}))
    await asyncio.sleep(0)

    async def fine() -> str:
        s.judged(verdict(object()))
        return "running"

    assert await s.reloading(fine()) == "running"
    assert (await pending)["ok"] is True
