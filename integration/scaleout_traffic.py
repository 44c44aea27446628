"""Traffic for the scale-out lab: short requests (a new connection, so a new source port, each time: ECMP
spreads them) and long-lived keep-alive connections that must never break while their director lives."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

from havs.edge.netns import run_in_netns
from integration.client import ClientLoop


@dataclass
class LongLived:
    """One HTTP/1.1 keep-alive connection asking every `period` s; `broken` once a request fails."""

    sock: socket.socket
    local_port: int
    requests: int = 0
    broken: str | None = None
    when: float | None = None
    bodies: set[str] = field(default_factory=set)


class LongLivedPool:
    def __init__(self, ns: str, vip: str, n: int, period: float = 0.1, timeout: float = 2.0) -> None:
        self.ns, self.vip, self.period, self.timeout = ns, vip, period, timeout
        self.conns: list[LongLived] = []
        for _ in range(n):
            s = run_in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.settimeout(timeout)
            try:
                s.connect((vip, 80))
                self.conns.append(LongLived(s, s.getsockname()[1]))
            except OSError as e:  # counted as broken from the start
                self.conns.append(LongLived(s, s.getsockname()[1], broken=f"connect: {e}", when=time.monotonic()))
        self._stop = threading.Event()
        # a thread each: one stalled connection must not keep the others idle (the server closes idle ones)
        self._threads = [threading.Thread(target=self._run, args=(c,), name="long-lived", daemon=True)
                         for c in self.conns]

    def start(self) -> LongLivedPool:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)
        for c in self.conns:
            c.sock.close()

    def _run(self, c: LongLived) -> None:
        while not self._stop.is_set() and c.broken is None:
            start = time.monotonic()
            self._ask(c)
            self._stop.wait(max(0.0, start + self.period - time.monotonic()))

    def _ask(self, c: LongLived) -> None:
        try:
            c.sock.sendall(f"GET / HTTP/1.1\r\nHost: {self.vip}\r\n\r\n".encode())
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = c.sock.recv(4096)
                if not chunk:
                    raise ConnectionError("closed by the server side")
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length")), 0)
            while len(body) < length:
                chunk = c.sock.recv(4096)
                if not chunk:
                    raise ConnectionError("closed mid-body")
                body += chunk
            if not head.startswith(b"HTTP/1.1 200"):
                raise ConnectionError(head.split(b"\r\n")[0].decode())
            c.requests += 1
            c.bodies.add(body.decode().strip())
        except OSError as e:
            c.broken, c.when = f"{type(e).__name__}: {e}", time.monotonic()

    def broken(self) -> list[LongLived]:
        return [c for c in self.conns if c.broken is not None]


def short_loops(lab: object, vip: str, n: int = 4, period: float = 0.02, node: str = "cl") -> list[ClientLoop]:
    """`n` client threads, each a new connection every `period` s."""
    return [ClientLoop(lab, url=f"http://{vip}/", period=period, timeout=1.0, node=node).start()  # type: ignore
            for _ in range(n)]
