"""What the daemon does once, at start, before its loop runs: record early signals, take the node's lock,
raise the open-files limit.

Signals that arrive while the daemon is still starting (importing, parsing its config): without a
handler, SIGHUP's default action ends the process, so a `systemctl reload` in the first ~0.6 s after
start killed havs silently. `install()` runs first thing in `havs run`, before the heavy imports;
it only records. The daemon replays what it recorded once its event loop has its own handlers: SIGHUP
becomes a queued reload, SIGTERM/SIGINT a stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

from havs.errors import HavsError

SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)


class EarlySignals:
    def __init__(self) -> None:
        self.received: list[int] = []

    def _record(self, signum: int, _frame: FrameType | None) -> None:
        self.received.append(signum)

    @classmethod
    def install(cls) -> EarlySignals:
        early = cls()
        for sig in SIGNALS:
            signal.signal(sig, early._record)
        return early

    def take(self) -> list[int]:
        """What arrived so far (in order), once: call after the loop's own handlers are in place."""
        taken, self.received = self.received, []
        return taken


def install_signals(loop: asyncio.AbstractEventLoop, early: EarlySignals | None,
                    handler: Callable[[int], None]) -> None:
    """The loop's own handlers, then what arrived before them, in order."""
    for sig in SIGNALS:
        loop.add_signal_handler(sig, handler, sig)
    for sig in early.take() if early else ():
        handler(sig)


class StartError(HavsError):
    """Start cannot go on (another daemon holds the node, no IPVS, VRRP cannot start): exit 1."""


def take_lock(control_socket: str, log: Any) -> Any:
    """One daemon per node (a second one would fight over the control socket, IPVS and the addresses):
    the lock lives next to the control socket. A `havs.edge.pidlock.PidLock`, or StartError (logged)."""
    from havs.edge.pidlock import AlreadyRunning, acquire

    path = control_socket + ".lock"
    try:
        return acquire(path)
    except AlreadyRunning as e:
        log.error("daemon.already_running", lock=path, pid=e.pid, error=str(e))
    except OSError as e:
        log.error("daemon.lock_failed", lock=path, error=str(e))
    raise StartError(path)


def raise_open_files_limit() -> None:
    """One kept-alive probe connection per real server: the default soft limit (1024) is too small."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def watchdog(notifier: Any, alive: Callable[[], bool]) -> None:
    """systemd's watchdog, fed only while `alive()`: a daemon whose heartbeat is wedged gets restarted."""
    interval = notifier.watchdog_interval() or 1.0
    while True:
        await asyncio.sleep(interval)
        if alive():
            notifier.notify("WATCHDOG=1")
