"""The notify protocol against a real datagram socket, as systemd's manager would receive it."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from havs.edge.sdnotify import SystemdNotifier


def test_ready_and_status_reach_the_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(path)
    manager.settimeout(2)
    notifier = SystemdNotifier(path)
    assert notifier.notify("READY=1", "STATUS=MASTER")
    assert manager.recv(4096) == b"READY=1\nSTATUS=MASTER"
    assert notifier.notify("STOPPING=1")
    assert manager.recv(4096) == b"STOPPING=1"
    manager.close()
    assert not notifier.notify("WATCHDOG=1")  # manager gone: no exception, just False


def test_without_notify_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = SystemdNotifier()
    assert not notifier.enabled and not notifier.notify("READY=1")


def test_watchdog_interval_is_half_of_watchdog_sec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert SystemdNotifier("").watchdog_interval() == 2.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # for another process
    assert SystemdNotifier("").watchdog_interval() is None


def test_a_manager_that_stops_reading_never_blocks_the_sender(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(path)  # bound, never read: its queue fills up
    notifier = SystemdNotifier(path)
    results = [notifier.notify("WATCHDOG=1", "STATUS=" + "x" * 1000) for _ in range(2000)]  # returns, every time
    assert results[0] is True and results[-1] is False
    assert notifier.failed == results.count(False) > 0
    manager.close()


def test_unencodable_text_and_bad_watchdog_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "notify")
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(path)
    manager.settimeout(2)
    assert SystemdNotifier(path).notify("STATUS=bad \udcff byte")
    assert manager.recv(4096) == b"STATUS=bad ? byte"
    manager.close()
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    for value in ("soon", "-5", "0"):
        monkeypatch.setenv("WATCHDOG_USEC", value)
        assert SystemdNotifier("").watchdog_interval() is None
