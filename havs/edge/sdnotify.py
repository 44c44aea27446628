"""systemd's notify protocol: datagrams like `READY=1` to $NOTIFY_SOCKET (no libsystemd needed).

Never blocks and never raises: the socket is non-blocking (a manager that stopped reading fills the
datagram queue, and a blocking send would stall the daemon's loop), and any failure is a False return.
"""

from __future__ import annotations

import os
import socket


class SystemdNotifier:
    """Sends state lines to the service manager; silently does nothing when not run by systemd."""

    def __init__(self, address: str | None = None) -> None:
        addr = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        if addr.startswith("@"):  # abstract namespace socket
            addr = "\0" + addr[1:]
        self._address = addr or None
        self._sock: socket.socket | None = None
        self.failed = 0  # notifications that could not be sent
        if self._address:
            try:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                                           | socket.SOCK_NONBLOCK)
            except OSError:
                self._address = None  # no descriptor to spare: run without notifications rather than not at all

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *lines: str) -> bool:
        """Send e.g. notify("READY=1", "STATUS=MASTER"); True when sent."""
        if self._sock is None or self._address is None:
            return False
        try:
            self._sock.sendto("\n".join(lines).encode("utf-8", "replace"), self._address)
        except (OSError, ValueError):
            # the manager went away or is not reading (EAGAIN): never let that take or stall the daemon
            self.failed += 1
            return False
        return True

    def watchdog_interval(self) -> float | None:
        """Half of WatchdogSec (systemd's advice), when the watchdog is on for this process."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            value = int(usec)
        except ValueError:
            return None  # not a number: no watchdog we can honour
        return value / 2e6 if value > 0 else None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
