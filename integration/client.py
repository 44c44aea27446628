"""Clients of the lab: one HTTP GET from a namespace, and a loop that keeps requesting the VIP.

`ClientLoop` is how drills and benchmarks see an outage: a thread entered into the client's namespace
(no subprocess: cheap in UML) requests ``url`` every ``period`` s and keeps every sample.
"""

from __future__ import annotations

import collections
import itertools
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

from havs.edge.netns import enter_netns
from integration.seed import VIP_URL


class HasNamespaces(Protocol):
    """What ClientLoop needs of a lab (SeedLab): the real namespace name of a node."""

    def ns(self, node: str) -> str: ...


class HttpError(OSError):
    pass


def http_get_here(url: str, timeout: float) -> str:
    """GET ``url`` from the current thread's namespace; return the body of a 200 or raise."""
    parts = urlsplit(url)
    host = parts.hostname or ""  # an IPv6 literal without its brackets
    port = parts.port or 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"GET {url}: read timed out")
            s.settimeout(left)
            d = s.recv(65536)
            if not d:
                break
            chunks.append(d)
    raw = b"".join(chunks)
    head, sep, body = raw.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if not sep or len(status) < 2:
        raise HttpError(f"GET {url}: malformed response {raw[:80]!r}")
    if status[1] != b"200":
        raise HttpError(f"GET {url}: status {status[1].decode()}")
    return body.decode("utf-8", "replace")



@dataclass(frozen=True)
class Sample:
    start: float  # time.monotonic()
    end: float
    ok: bool
    body: str  # stripped body on success, error text on failure


@dataclass(frozen=True)
class LoopStats:
    requests: int
    successes: int
    failures: int
    longest_outage: float  # seconds between the successes around the worst run of failures
    max_gap: float  # longest time between two consecutive successes' starts
    per_backend: dict[str, int] = field(default_factory=dict)  # body -> count


class ClientLoop:
    """Background HTTP client in ``node`` (default: client) hitting ``url`` every ``period`` s.

    A thread entered into the namespace does the requests (no subprocess: cheap in
    UML). Use as a context manager or start()/stop(); read stats() any time.
    """

    def __init__(
        self,
        lab: HasNamespaces,
        url: str = VIP_URL,
        period: float = 0.05,
        timeout: float = 1.0,
        node: str = "client",
    ) -> None:
        self.lab = lab
        self.url = url
        self.period = period
        self.timeout = timeout
        self.node = node
        self._samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._cond = threading.Condition()

    def __enter__(self) -> ClientLoop:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> ClientLoop:
        ns = self.lab.ns(self.node)
        self._thread = threading.Thread(target=self._run, args=(ns,), name="client-loop", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> LoopStats:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 5)
        if self._error is not None:
            raise self._error
        return self.stats()

    def _run(self, ns: str) -> None:
        try:
            enter_netns(ns)
        except BaseException as e:
            self._error = e
            return
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                body, ok = http_get_here(self.url, self.timeout).strip(), True
            except (OSError, ValueError) as e:
                body, ok = f"{type(e).__name__}: {e}", False
            with self._cond:
                self._samples.append(Sample(start, time.monotonic(), ok, body))
                self._cond.notify_all()
            self._stop.wait(max(0.0, start + self.period - time.monotonic()))

    @property
    def samples(self) -> list[Sample]:
        with self._cond:
            return list(self._samples)

    def now(self) -> float:
        """A timestamp to pass to stats(since=...) later."""
        return time.monotonic()

    def wait_for(self, pred: Callable[[LoopStats], bool], timeout: float, since: float | None = None) -> LoopStats:
        """Block until ``pred(stats(since))`` holds; raise TimeoutError with the stats otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                st = self.stats(since)
                if pred(st):
                    return st
                left = deadline - time.monotonic()
                if left <= 0 or self._error is not None:
                    raise TimeoutError(f"client loop condition not met in {timeout}s: {st}") from self._error
                self._cond.wait(min(left, 0.5))

    def stats(self, since: float | None = None) -> LoopStats:
        with self._cond:
            samples = [s for s in self._samples if since is None or s.start >= since]
        ok_starts = [s.start for s in samples if s.ok]
        backends = collections.Counter(s.body for s in samples if s.ok)
        max_gap = max((b - a for a, b in itertools.pairwise(ok_starts)), default=0.0)
        longest = 0.0
        last_ok: float | None = samples[0].start if samples else None
        in_failure = False
        for s in samples:
            if s.ok:
                if in_failure and last_ok is not None:
                    longest = max(longest, s.start - last_ok)
                last_ok, in_failure = s.start, False
            else:
                in_failure = True
        if in_failure and last_ok is not None:  # still down at the end
            longest = max(longest, samples[-1].end - last_ok)
        return LoopStats(
            requests=len(samples),
            successes=len(ok_starts),
            failures=len(samples) - len(ok_starts),
            longest_outage=longest,
            max_gap=max_gap,
            per_backend=dict(backends),
        )
