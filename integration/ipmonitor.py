"""``ip monitor`` in one namespace, each line stamped with time.monotonic() as it arrives: when an address
was added or deleted and when a neighbour entry changed, without polling (a 10 ms poll would load UML's
single CPU)."""

from __future__ import annotations

import re
import subprocess
import threading
import time

_ADDR_RE = re.compile(r"^(Deleted\s+)?\d+:\s+(\S+)\s+inet\s+(\S+)")
_NEIGH_RE = re.compile(r"^(\S+) dev \S+ lladdr (\S+)")


class IpMonitor:
    """``ip -4 -o monitor OBJECT`` in one namespace, each line stamped with time.monotonic() on arrival."""

    def __init__(self, ns: str, obj: str) -> None:
        self.lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(
            ["ip", "-n", ns, "-4", "-o", "monitor", obj],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0,
        )
        self._thread = threading.Thread(target=self._read, name=f"ipmon-{ns}-{obj}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for raw in self._proc.stdout:
            now = time.monotonic()
            with self._lock:
                self.lines.append((now, raw.decode(errors="replace")))

    def _after(self, after: float) -> list[tuple[float, str]]:
        with self._lock:
            return [(t, line) for t, line in self.lines if t >= after]

    def address(self, cidr: str, added: bool, after: float) -> float | None:
        """First time after ``after`` that ``cidr`` was added (or deleted)."""
        for t, line in self._after(after):
            m = _ADDR_RE.match(line)
            if m and m.group(3) == cidr and (m.group(1) is None) == added:
                return t
        return None

    def neighbour(self, ip: str, mac: str, after: float) -> float | None:
        """First time after ``after`` that the neighbour entry of ``ip`` showed ``mac``."""
        for t, line in self._after(after):
            m = _NEIGH_RE.match(line)
            if m and m.group(1) == ip and m.group(2).lower() == mac.lower():
                return t
        return None

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait(5)
        self._thread.join(2)
