"""One daemon per node: the second one is told who holds the lock; a dead holder never blocks a restart."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from havs.edge.pidlock import AlreadyRunning, acquire

HOLD = (
    "import sys, time\n"
    "from havs.edge.pidlock import acquire\n"
    "lock = acquire(sys.argv[1])\n"
    "print('held', flush=True)\n"
    "time.sleep(60)\n"
)


def hold_in_child(path: Path) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline() == "held\n"
    return child


def test_second_acquire_names_the_holder_and_leaves_its_pid(tmp_path: Path) -> None:
    path = tmp_path / "run" / "havs.pid"
    child = hold_in_child(path)
    try:
        with pytest.raises(AlreadyRunning) as info:
            acquire(str(path))
        assert info.value.pid == child.pid
        assert str(info.value) == f"havs is already running on this node (pid {child.pid} holds {path})"
        assert path.read_text() == f"{child.pid}\n"  # a failed attempt does not overwrite the holder's pid
    finally:
        child.kill()
        child.wait()


def test_killed_holder_does_not_block_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "havs.pid"
    child = hold_in_child(path)
    child.kill()  # kill -9: no cleanup ran, the file still names the dead pid
    child.wait()
    assert path.read_text() == f"{child.pid}\n"
    lock = acquire(str(path))
    try:
        assert path.read_text() == f"{os.getpid()}\n"
    finally:
        lock.release()


def test_release_frees_the_lock_within_one_process(tmp_path: Path) -> None:
    path = str(tmp_path / "havs.pid")
    with acquire(path) as lock:
        assert lock.held
        # flock is per open file: a second open in the same process conflicts too, as a second daemon would
        with pytest.raises(AlreadyRunning, match=rf"pid {os.getpid()} holds"):
            acquire(path)
    assert not lock.held
    assert Path(path).read_text() == ""
    acquire(path).release()
    lock.release()  # twice is harmless


def test_unreadable_pid_is_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "havs.pid"
    child = hold_in_child(path)
    try:
        path.write_text("garbage")
        with pytest.raises(AlreadyRunning, match=r"another process holds"):
            acquire(str(path))
    finally:
        child.kill()
        child.wait()


def test_symlink_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep me")
    (tmp_path / "havs.pid").symlink_to(target)
    with pytest.raises(OSError):
        acquire(str(tmp_path / "havs.pid"))
    assert target.read_text() == "keep me"


def test_a_missing_directory_is_created_root_only(tmp_path: Path) -> None:
    """The daemon keeps the lock next to the control socket: whichever is made first, the directory is 0700."""
    path = tmp_path / "run" / "havs" / "control.sock.lock"
    with acquire(str(path)):
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
