"""Maintenance drains (`havs drain`), kept across restarts in `<state_dir>/drained.json`.

A file that cannot be read is logged and taken as "nothing drained": a bad state file must not stop the
daemon. Writes go through a temporary file and a rename, so a crash never leaves half a file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from havs.core.desired import RealServerKey


def drained_file(state_dir: str) -> Path:
    return Path(state_dir) / "drained.json"


def load_drained(state_dir: str, log: Any) -> set[RealServerKey]:
    path = drained_file(state_dir)
    try:
        return {RealServerKey(str(s), str(r)) for s, r in json.loads(path.read_text())}
    except FileNotFoundError:
        return set()
    except (OSError, ValueError, TypeError) as e:
        log.warning("state.unreadable", file=str(path), error=str(e))
        return set()


def save_drained(state_dir: str, drained: Iterable[RealServerKey], log: Any) -> None:
    path = drained_file(state_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(drained)))
        tmp.replace(path)
    except OSError as e:
        log.error("state.write_failed", file=str(path), error=str(e))
