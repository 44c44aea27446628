"""Maintenance drains (`havs drain`), kept across restarts in `<state_dir>/drained.json`.

The file is a JSON list of `[service, server]` pairs. A bad file must neither stop the daemon nor lose
drains silently: what can be read is kept, what cannot is reported (`state.unreadable` / `state.bad_entries`,
naming the file and what is wrong), and an unreadable file is copied to `drained.json.corrupt` before the
next save replaces it. Reads are bounded (size, nesting, a regular file only: a FIFO must not block the
start). Writes go through a temporary file, fsync and a rename, so a crash never leaves half a file; a
write that fails is returned to the caller (`havs drain` then exits non-zero).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from havs.core.desired import RealServerKey

MAX_BYTES = 16 * 1024 * 1024  # ~250,000 drained servers


class StateFileError(ValueError):
    """The state file as a whole cannot be used; the message says what is wrong with it."""


def drained_file(state_dir: str) -> Path:
    return Path(state_dir) / "drained.json"


def _read(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StateFileError("not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        raise StateFileError(f"larger than {MAX_BYTES} bytes")
    return data


def parse_drained(data: bytes) -> tuple[set[RealServerKey], list[str]]:
    """The drains `data` holds, and what is wrong with the entries that had to be skipped."""
    try:
        doc = json.loads(data)
    except RecursionError:
        raise StateFileError("nested too deeply") from None
    except ValueError as e:  # UnicodeDecodeError is one
        raise StateFileError(f"not JSON: {e}") from None
    if not isinstance(doc, list):
        raise StateFileError(f"expected a list of [service, server] pairs, got {type(doc).__name__}")
    keys: set[RealServerKey] = set()
    bad: list[str] = []
    for i, entry in enumerate(doc):
        if isinstance(entry, list) and len(entry) == 2 and all(isinstance(x, str) and x for x in entry):
            keys.add(RealServerKey(entry[0], entry[1]))
        else:
            bad.append(f"[{i}]: expected [service, server] (two strings), got {json.dumps(entry)[:80]}")
    return keys, bad


def load_drained(state_dir: str, log: Any) -> set[RealServerKey]:
    path = drained_file(state_dir)
    try:
        keys, bad = parse_drained(_read(path))
    except FileNotFoundError:
        return set()
    except (OSError, StateFileError) as e:
        error = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        kept = _keep_aside(path)
        log.error("state.unreadable", file=str(path), error=error, drains_lost="until the file is fixed",
                  copy=kept)
        return set()
    if bad:
        log.error("state.bad_entries", file=str(path), skipped=len(bad), problems=bad[:10], kept=len(keys),
                  copy=_keep_aside(path))
    return keys


def _keep_aside(path: Path) -> str | None:
    """A copy of a file we could not fully read, so that the next save does not erase the evidence."""
    aside = path.with_name(path.name + ".corrupt")
    try:
        if stat.S_ISREG(path.lstat().st_mode):
            shutil.copyfile(path, aside)
            return str(aside)
    except OSError:
        pass
    return None


def save_drained(state_dir: str, drained: Iterable[RealServerKey], log: Any) -> str | None:
    """None when written; else the error (logged), for the caller to report."""
    path = drained_file(state_dir)
    tmp = path.with_suffix(".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as f:
            f.write(json.dumps(sorted(drained)))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        error = f"{e.filename or path}: {e.strerror or e}"
        log.error("state.write_failed", file=str(path), error=error)
        return error
    return None
