"""Notify hooks as processes: a group of their own, killed as a group, over when the hook exits."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from havs.core.model import Notify
from havs.vrrp.notify import NotifyRunner


class ListLog:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.events.append(("info", event, kw))

    def error(self, event: str, **kw: Any) -> None:
        self.events.append(("error", event, kw))

    def notes(self) -> list[tuple[str, dict[str, Any]]]:
        return [(level, kw) for level, ev, kw in self.events if ev == "vrrp.notify"]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def run(notify: Notify, *states: str) -> tuple[ListLog, float]:
    log = ListLog()
    runner = NotifyRunner(notify, log, "lvs1")
    runner.start()
    t0 = time.monotonic()
    for state in states:
        runner.submit(state, "test")
    await runner.stop(wait=True)
    return log, time.monotonic() - t0


async def test_a_hook_that_times_out_is_killed_with_its_children(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # the hook starts a child (its own process group, same as the hook's) and waits forever
    script = f"sleep 300 & echo $$ $! > {pids}; wait"
    log, took = await run(Notify(master=["/bin/sh", "-c", script], timeout=0.5), "MASTER")
    [(level, note)] = log.notes()
    assert level == "error" and note["rc"] is None and "timed out" in note["error"]
    assert took < 3
    shell, child = map(int, pids.read_text().split())
    for _ in range(50):
        if not alive(child):
            break
        await asyncio.sleep(0.05)
    assert not alive(shell) and not alive(child), "the hook's child outlived the timeout"


async def test_a_hook_that_exits_0_leaving_a_background_job_is_not_timed_out(tmp_path: Path) -> None:
    pidfile = tmp_path / "bg"
    # the background job keeps the hook's stdout and stderr open for 30 s
    script = f"sleep 30 & echo $! > {pidfile}; echo done; exit 0"
    log, took = await run(Notify(master=["/bin/sh", "-c", script], backup=["/bin/true"], timeout=2.0),
                          "MASTER", "BACKUP")
    try:
        assert [(level, note["rc"], note["state"]) for level, note in log.notes()] == [
            ("info", 0, "MASTER"), ("info", 0, "BACKUP")]
        assert took < 1.5, f"the hooks took {took:.2f} s: waited for the background job's pipe"
        assert alive(int(pidfile.read_text()))  # a hook's background job is its business
    finally:
        os.kill(int(pidfile.read_text()), 9)


async def test_a_failing_hook_is_logged_at_error_with_its_output() -> None:
    log, _ = await run(Notify(fault=["/bin/sh", "-c", "echo no route >&2; exit 3"]), "FAULT")
    [(level, note)] = log.notes()
    assert level == "error" and note["rc"] == 3 and note["output"] == "no route\n"


async def test_hooks_run_in_a_session_of_their_own(tmp_path: Path) -> None:
    out = tmp_path / "ids"
    await run(Notify(master=["/bin/sh", "-c", f"echo $$ $(ps -o pgid= -p $$) $(ps -o sid= -p $$) > {out}"]),
              "MASTER")
    pid, pgid, sid = map(int, out.read_text().split())
    assert pid == pgid == sid and pgid != os.getpgid(0)
