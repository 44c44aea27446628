"""One daemon per node: an exclusive flock on a pid file.

The kernel drops the lock when its holder dies however it dies (kill -9 included), so a stale file never
blocks a restart, and there is no pid to guess about: the lock is the truth, the pid in the file is for
the message. The file is never deleted (deleting it would let a second daemon lock a new inode while the
first still holds the old one).
"""

from __future__ import annotations

import contextlib
import fcntl
import os

from havs.errors import HavsError


class AlreadyRunning(HavsError):
    """Another process holds the lock; `pid` is the one written in the file (None if unreadable)."""

    def __init__(self, path: str, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        holder = f"pid {pid}" if pid is not None else "another process"
        super().__init__(f"havs is already running on this node ({holder} holds {path})")


class PidLock:
    """A held lock; `release()` (or process exit) frees it."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # no pid left behind that names a process which no longer holds anything
        os.close(fd)  # closing the only descriptor drops the flock

    def __enter__(self) -> PidLock:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def acquire(path: str) -> PidLock:
    """Lock `path` (created 0644; missing parent directories 0700, as the control socket's) and write our pid.
    Raises AlreadyRunning naming the holder's pid, or OSError if the file cannot be opened."""
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, mode=0o700, exist_ok=True)
    # no O_TRUNC: the holder's pid must survive our failed attempt
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _read_pid(fd)
        os.close(fd)
        raise AlreadyRunning(path, pid) from None
    except OSError:
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        os.close(fd)
        raise
    return PidLock(path, fd)
