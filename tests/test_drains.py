"""Maintenance state on disk: a bad file is reported and what can be read is kept; a drain that could not
be saved is said so (`havs drain` exits non-zero)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import ListLog

from havs.cli import main
from havs.configfile import load_view
from havs.control_shell import ControlShell
from havs.core.controller import Controller
from havs.core.desired import RealServerKey
from havs.drains import MAX_BYTES, drained_file, load_drained, save_drained
from havs.edge.control import ControlServer

REPO = Path(__file__).resolve().parents[1]
A = RealServerKey("TCP 192.168.0.108:80", "192.168.72.128:80")
B = RealServerKey("TCP 192.168.0.108:80", "192.168.72.129:80")


def events(log: ListLog, name: str) -> list[dict[str, Any]]:
    return log.named(name)


def write(state: Path, data: bytes | str) -> Path:
    state.mkdir(exist_ok=True)
    path = drained_file(str(state))
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def test_round_trip(tmp_path: Path) -> None:
    log = ListLog()
    assert save_drained(str(tmp_path / "s"), {A, B}, log) is None
    assert load_drained(str(tmp_path / "s"), log) == {A, B}
    assert load_drained(str(tmp_path / "none"), log) == set() and not log.events


@pytest.mark.parametrize(("content", "what"), [
    ("{not json", "not JSON"),
    ('{"a": 1}', "expected a list of [service, server] pairs, got dict"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    (b"\xff\xfe[]", "not JSON"),
])
def test_an_unreadable_file_is_reported_and_kept_aside(tmp_path: Path, content: str | bytes, what: str) -> None:
    state = tmp_path / "s"
    path = write(state, content)
    log = ListLog()
    assert load_drained(str(state), log) == set()
    [event] = events(log, "state.unreadable")
    assert event["file"] == str(path) and what in event["error"], event
    assert Path(event["copy"]).read_bytes() == path.read_bytes()  # the next save cannot erase the evidence


def test_a_huge_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    state = tmp_path / "s"
    state.mkdir()
    with open(drained_file(str(state)), "wb") as f:
        f.truncate(MAX_BYTES * 4)  # sparse
    log = ListLog()
    t0 = time.monotonic()
    assert load_drained(str(state), log) == set()
    assert time.monotonic() - t0 < 1
    assert "larger than" in events(log, "state.unreadable")[0]["error"]


def test_a_fifo_does_not_block_the_start(tmp_path: Path) -> None:
    state = tmp_path / "s"
    state.mkdir()
    os.mkfifo(drained_file(str(state)))
    log = ListLog()
    assert load_drained(str(state), log) == set()
    assert events(log, "state.unreadable")[0]["error"] == "not a regular file"


def test_good_entries_are_kept_and_bad_ones_reported(tmp_path: Path) -> None:
    state = tmp_path / "s"
    write(state, json.dumps([list(A), ["only one"], 7, [1, 2], list(B), ["x", ""]]))
    log = ListLog()
    assert load_drained(str(state), log) == {A, B}
    [event] = events(log, "state.bad_entries")
    assert event["skipped"] == 4 and event["kept"] == 2
    assert event["problems"][0] == '[1]: expected [service, server] (two strings), got ["only one"]'


@contextlib.contextmanager
def read_only(state: Path) -> Iterator[None]:
    """A read-only directory: a read-only bind mount as root (root ignores mode bits), else mode 0500."""
    if os.geteuid() != 0:
        state.chmod(0o500)
        try:
            yield
        finally:
            state.chmod(0o700)
        return
    subprocess.run(["mount", "--bind", str(state), str(state)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(state)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(state)], check=True)


def test_a_failed_save_is_returned_and_logged(tmp_path: Path) -> None:
    state = tmp_path / "s"
    state.mkdir()
    log = ListLog()
    with read_only(state):
        error = save_drained(str(state), {A}, log)
    assert error is not None and ("Read-only file system" in error or "Permission denied" in error), error
    assert events(log, "state.write_failed")[0]["error"] == error
    assert not list(state.iterdir())


def config(tmp_path: Path, state: Path) -> Path:
    path = tmp_path / "havs.yaml"
    path.write_text((REPO / "etc/havs.yaml").read_text().replace("/var/lib/havs", str(state)))
    return path


async def test_drain_on_a_read_only_state_dir_exits_non_zero(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    changed: list[int] = []
    shell = ControlShell(Controller(load_view(str(config(tmp_path, state)), "lvs1")), ListLog(),
                         on_reload=lambda _f: None, on_change=lambda: changed.append(1),
                         snapshot=lambda: None)  # type: ignore[arg-type,return-value]
    sock = str(tmp_path / "run" / "control.sock")
    server = ControlServer(sock, shell.handle)
    await server.start()
    try:
        with read_only(state):
            assert await asyncio.to_thread(main, ["drain", "192.168.72.128", "--socket", sock]) == 1
            reply = await shell.handle({"command": "drain", "server": "192.168.72.128"})
            assert reply["ok"] is False and reply["persisted"] is False and "NOT saved" in reply["error"]
            assert A in shell.controller.drained and changed  # in force in the running daemon all the same
            assert await asyncio.to_thread(main, ["enable", "192.168.72.128", "--socket", sock]) == 1
        # writable again: repeating the command saves it
        assert await asyncio.to_thread(main, ["drain", "192.168.72.128", "--socket", sock]) == 0
        assert load_drained(str(state), ListLog()) == {A}
    finally:
        await server.stop()
