"""Reading a daemon's structured log (one JSON event per line) in drills, benchmarks and the demo.

Lines that are not events (stderr noise, a traceback) are skipped. An event with a ``timestamp`` gets
``_t``: that time as unix time, so it can be set against time.time() taken around a lab action.
"""

from __future__ import annotations

import contextlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from integration.waits import poll


def parse_event(raw: str | bytes) -> dict[str, Any] | None:
    """One log line → the event (with ``_t`` when it has a readable timestamp), or None if it is no event."""
    try:
        event = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(event, dict) or "event" not in event:
        return None
    with contextlib.suppress(ValueError, KeyError):
        event["_t"] = datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()
    return event


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every event in the log at ``path`` (none if it does not exist yet)."""
    text = path.read_text(errors="replace") if path.exists() else ""
    return [e for e in map(parse_event, text.splitlines()) if e is not None]


def log_events(path: Path, name: str) -> list[dict[str, Any]]:
    """The events called ``name`` in a daemon's JSON log."""
    return [e for e in read_events(path) if e.get("event") == name]


class HavsLog:
    """A log that is still being written, read incrementally (only whole lines)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[dict[str, Any]] = []
        self._offset = 0

    def refresh(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return self.events
        end = data.rfind(b"\n") + 1
        self._offset += end
        self.events += [e for e in map(parse_event, data[:end].splitlines()) if e is not None]
        return self.events

    def find(self, event: str, since_wall: float, **match: Any) -> list[dict[str, Any]]:
        """Events called ``event`` logged at or after unix time ``since_wall`` whose fields equal ``match``."""
        return [e for e in self.refresh() if e.get("event") == event and e.get("_t", -1.0) >= since_wall
                and all(e.get(k) == v for k, v in match.items())]

    def wait(self, event: str, since_wall: float, timeout: float, **match: Any) -> dict[str, Any] | None:
        """The first such event, waiting up to ``timeout`` seconds for it; None if it never came."""
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = self.find(event, since_wall, **match)
            return bool(found)

        return found[0] if poll(seen, timeout, 0.1) is not None else None
