"""Plain HTTP and TCP checks on raw non-blocking sockets, driven by callbacks: no task, future, timer or
transport per check.

Why: on a director whose CPU the kernel's forwarding also wants (and in the UML lab, where a syscall costs
tens of µs) a check's cost is its syscalls and its Python objects. An asyncio transport per connection,
a task and a future per check and a timer per deadline cost 18–20 syscalls per check (bench_load, strace);
keepalived's checker spends ~12. Here a check is:

    socket · connect · epoll_ctl(ADD) · send · recv · close            (HTTP, server closes)
    socket · connect · epoll_ctl(ADD) · setsockopt(SO_LINGER) · close  (TCP: closed with a reset)

plus a share of the wake-ups, which serve every check ready at once:

- every socket is registered once, edge-triggered, for reads, writes and the peer's close, in one epoll
  instance of ours; the event loop watches that one descriptor (`add_reader`, once), so no per-check
  epoll_ctl by the loop and no re-registration between connect and read;
- the connect's outcome comes from the event itself (EPOLLERR asks SO_ERROR only on failure); the request
  goes out in the same turn; a response read short of the buffer size drained the socket (no EAGAIN read);
- a server that closed after its answer (its FIN arrived with it: EPOLLRDHUP) is closed plainly; one that
  did not is closed with a reset, so this director keeps no TIME_WAIT per check;
- deadlines are not timers here: the caller (the health shell's one timer, core/check_schedule.py) calls
  `expire(key, now)`, after `poll(now)` has read whatever already arrived (an answer that sat unread
  because this director was late is read, not mistaken for a dead server);
- the caller passes `now` in and gets it back with each result: one clock read per wake-up, not per check.

A kept-alive connection stays registered between checks: if the server closes it (its web process died:
the kernel closes the socket at once) the checker sees it and says so (`on_peer_close(key)`), so its owner
can check the server now. A kept-alive connection found closed when reused is retried once on a new one.

HTTPS stays with the transport probe (edge/probe.py): TLS needs the ssl module's state machine and a
handshake; it is the rare check. Responses are read by `ResponseReader` (edge/http_response.py), as there.
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
import socket
import struct
from collections.abc import Callable, Coroutine, Hashable
from typing import Any

from havs.core.health import ProbeResult
from havs.core.http_check import failed, judge, os_reason
from havs.edge.http_response import HttpProbe, ResponseReader

Done = Callable[[ProbeResult, float], None]  # (result, the caller's clock when it came)

_EPOLLIN, _EPOLLOUT, _EPOLLERR, _EPOLLHUP = select.EPOLLIN, select.EPOLLOUT, select.EPOLLERR, select.EPOLLHUP
_EPOLLRDHUP = select.EPOLLRDHUP
_MASK = _EPOLLIN | _EPOLLOUT | _EPOLLRDHUP | select.EPOLLET
_READABLE = _EPOLLIN | _EPOLLRDHUP | _EPOLLERR | _EPOLLHUP
_LINGER_RST = struct.pack("ii", 1, 0)
_RECV = 65536
_BATCH = 1024  # events per epoll_wait; more are read in further calls
_SOCK_STREAM = socket.SOCK_STREAM | socket.SOCK_NONBLOCK
_SOL_SOCKET, _SO_LINGER, _SO_ERROR = socket.SOL_SOCKET, socket.SO_LINGER, socket.SO_ERROR

_CONNECTING, _SENDING, _READING, _IDLE, _CLOSED = range(5)


def _errno_reason(err: int) -> str:
    return os_reason(OSError(err, os.strerror(err)))  # OSError(errno, ...) is the specific subclass


class _Conn:
    """One connection and, while a check runs on it, that check."""

    __slots__ = ("checker", "done", "got_bytes", "key", "out", "peer_closed", "probe", "reader",
                 "reused", "sock", "start", "state", "tcp")

    def __init__(self, checker: Checker, key: Hashable, sock: socket.socket, probe: HttpProbe | None,
                 start: float, done: Done | None) -> None:
        self.checker = checker
        self.key = key
        self.sock: socket.socket | None = sock
        self.probe = probe
        self.tcp = probe is None
        self.reader: ResponseReader | None = None
        self.start = start
        self.done = done
        self.state = _CONNECTING
        self.out = b""
        self.got_bytes = False
        self.reused = False
        self.peer_closed = False

    # -- events

    def event(self, ev: int, now: float) -> None:
        state = self.state
        if state == _CONNECTING:
            if ev & (_EPOLLERR | _EPOLLHUP):
                self._connect_failed(now)
                return
            if not ev & _EPOLLOUT:
                return
            if self.tcp:
                self._finish(ProbeResult(True, "ok", now - self.start), now, rst=True)
                return
            self._send(self.probe.request, now)  # type: ignore[union-attr]
            if self.state == _READING and ev & _READABLE:
                self._read(now, ev)  # edge-triggered: what is already there raises no second event
        elif state == _READING:
            if ev & _READABLE:
                self._read(now, ev)
        elif state == _SENDING:
            if ev & _EPOLLOUT:
                self._send(self.out, now)
            if self.state == _READING and ev & _READABLE:
                self._read(now, ev)
        elif state == _IDLE and ev & _READABLE:
            self._idle_event()

    def _connect_failed(self, now: float) -> None:
        assert self.sock is not None
        try:
            err = self.sock.getsockopt(_SOL_SOCKET, _SO_ERROR)
        except OSError as exc:
            err = exc.errno or errno.EIO
        self._fail(_errno_reason(err) if err else "closed", now)

    def send(self, now: float) -> None:
        """Start the check's request on this (connected) connection."""
        self._send(self.probe.request, now)  # type: ignore[union-attr]

    def _send(self, data: bytes, now: float) -> None:
        assert self.sock is not None
        if self.reader is None:
            self.reader = ResponseReader(self.checker.loop, self.probe.head, self.probe.max_body)  # type: ignore[union-attr]
        else:
            self.reader.reset()
        try:
            n = self.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self._fail(os_reason(exc), now)
            return
        if n < len(data):
            self.out, self.state = data[n:], _SENDING
        else:
            self.out, self.state = b"", _READING

    def _read(self, now: float, ev: int) -> None:
        sock, reader = self.sock, self.reader
        assert sock is not None and reader is not None
        while True:
            try:
                data = sock.recv(_RECV)
            except BlockingIOError:
                return
            except OSError as exc:
                self._fail(os_reason(exc), now)
                return
            if not data:
                self.peer_closed = True
                verdict = reader.feed_eof()
                if verdict is True:
                    self._answered(now)
                else:
                    self._fail(verdict or "closed", now)
                return
            self.got_bytes = True
            verdict = reader.feed(data)
            if verdict is True:
                if ev & _EPOLLRDHUP:
                    self.peer_closed = True
                self._answered(now)
                return
            if verdict is not None:
                self._fail(verdict, now)
                return
            if len(data) < _RECV and not ev & (_EPOLLRDHUP | _EPOLLHUP):
                return  # a short read drained the socket; more data raises a new event

    def _idle_event(self) -> None:
        """The server closed (or wrote to) a connection idling between checks."""
        assert self.sock is not None
        try:
            data = self.sock.recv(_RECV)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self.checker._drop_idle(self, reported=not data)

    # -- outcomes

    def _answered(self, now: float) -> None:
        reader, probe = self.reader, self.probe
        assert reader is not None and probe is not None
        result = judge(probe, reader.code, reader.headers, reader.body, now - self.start)
        if reader.reusable and not self.peer_closed:
            self.checker._keep(self)
            self._report(result, now)
        else:
            self._finish(result, now, rst=not self.peer_closed)

    def _fail(self, reason: str, now: float) -> None:
        if self.reused and not self.got_bytes and reason in ("closed", "reset") and self.done is not None:
            # the server closed the kept-alive connection while it idled: one fresh try
            done, self.done = self.done, None
            self.close(rst=True)
            if self.checker._active.get(self.key) is self:
                del self.checker._active[self.key]
            self.checker._connect(self.key, self.probe, self.start, now, done)
            return
        self._finish(failed(reason, now - self.start), now, rst=True)

    def _finish(self, result: ProbeResult, now: float, rst: bool) -> None:
        self.close(rst=rst)
        self._report(result, now)

    def _report(self, result: ProbeResult, now: float) -> None:
        done, self.done = self.done, None
        if self.checker._active.get(self.key) is self:
            del self.checker._active[self.key]
        if done is not None:
            done(result, now)

    def close(self, rst: bool) -> None:
        sock, self.sock = self.sock, None
        self.state = _CLOSED
        if sock is None:
            return
        self.checker._conns.pop(sock.fileno(), None)
        if rst:
            try:  # noqa: SIM105 (per check: no context manager object on the hot path)
                # a reset, not a FIN: no TIME_WAIT on the director per check
                sock.setsockopt(_SOL_SOCKET, _SO_LINGER, _LINGER_RST)
            except OSError:
                pass
        sock.close()  # also leaves the epoll set (the only reference to the file)


class Checker:
    """Runs plain HTTP and TCP checks for its owner, one at a time per `key`. Results come back through
    each check's `done(result, now)`; nothing here raises to the caller or reads the clock except once per
    wake-up (`loop.time()`), whose reading is passed on."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 on_peer_close: Callable[[Hashable], None] | None = None,
                 on_error: Callable[[Hashable, BaseException], None] | None = None) -> None:
        self.loop = loop
        self.on_peer_close = on_peer_close
        self.on_error = on_error
        self._ep: select.epoll | None = select.epoll()
        self._conns: dict[int, _Conn] = {}  # fd → connection, every registered socket
        self._active: dict[Hashable, _Conn] = {}  # key → the connection its running check uses
        self._idle: dict[Hashable, _Conn] = {}  # key → kept-alive connection between checks
        loop.add_reader(self._ep.fileno(), self._ready)

    def __len__(self) -> int:
        """Open connections (running checks and idle kept-alive ones)."""
        return len(self._conns)

    @property
    def idle(self) -> int:
        return len(self._idle)

    def close(self) -> None:
        ep, self._ep = self._ep, None
        if ep is None:
            return
        self.loop.remove_reader(ep.fileno())
        for conn in list(self._conns.values()):
            conn.done = None
            conn.close(rst=True)
        self._conns.clear()
        self._active.clear()
        self._idle.clear()
        ep.close()

    # -- checks

    def http(self, key: Hashable, probe: HttpProbe, now: float, done: Done) -> None:
        """Check `probe` (plain HTTP), on the kept-alive connection of `key` if it has one."""
        conn = self._idle.pop(key, None)
        if conn is not None and conn.sock is not None and conn.probe is probe:
            conn.reused, conn.got_bytes, conn.start, conn.done = True, False, now, done
            self._active[key] = conn
            conn.send(now)
            return
        if conn is not None:
            conn.close(rst=True)  # settings changed: a connection for the old ones
        self._connect(key, probe, now, now, done)

    def tcp(self, key: Hashable, address: str, port: int, source: str | None, now: float, done: Done) -> None:
        """Check that `address:port` accepts a connection."""
        self._open(key, None, address, port, socket.AF_INET6 if ":" in address else socket.AF_INET, source,
                   now, now, done)

    def _connect(self, key: Hashable, probe: HttpProbe | None, start: float, now: float, done: Done) -> None:
        assert probe is not None
        self._open(key, probe, probe.address, probe.port, probe.family, probe.source_address, start, now, done)

    def _open(self, key: Hashable, probe: HttpProbe | None, address: str, port: int, family: int,
              source: str | None, start: float, now: float, done: Done) -> None:
        ep = self._ep
        if ep is None:
            done(ProbeResult(False, "error: checker closed", 0.0, inconclusive=True), now)
            return
        try:
            sock = socket.socket(family, _SOCK_STREAM)
        except OSError as exc:
            done(failed(os_reason(exc), now - start), now)
            return
        conn = _Conn(self, key, sock, probe, start, done)
        try:
            if source:
                sock.bind((source, 0))
            err = sock.connect_ex((address, port))
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, os.strerror(err))
            fd = sock.fileno()
            ep.register(fd, _MASK)
        except OSError as exc:
            sock.close()
            done(failed(os_reason(exc), now - start), now)
            return
        self._conns[fd] = conn
        self._active[key] = conn
        # a connect that completed at once still raises EPOLLOUT: the ADD reports the current state

    def poll(self, now: float) -> None:
        """Handle whatever is ready (the caller's last look before it expires checks)."""
        ep = self._ep
        if ep is None:
            return
        conns = self._conns
        while True:
            try:
                events = ep.poll(0, _BATCH)
            except OSError:
                return
            # resolve first: a connection closed in this batch may see its descriptor reused by a new one
            for conn, ev in [(conns.get(fd), ev) for fd, ev in events]:
                if conn is None or conn.sock is None:
                    continue
                try:
                    conn.event(ev, now)
                except Exception as exc:  # a bug must cost one check, not the events of the whole batch
                    self._failed_event(conn, exc, now)
            if len(events) < _BATCH:
                return  # all read (a deadline's last look must see every answer, not the first batch)

    def _failed_event(self, conn: _Conn, exc: Exception, now: float) -> None:
        try:
            if conn.done is not None:
                conn._finish(ProbeResult(False, f"error: {exc!r}", now - conn.start), now, rst=True)
            else:
                conn.close(rst=True)
                if self._active.get(conn.key) is conn:
                    del self._active[conn.key]
            if self.on_error is not None:
                self.on_error(conn.key, exc)
        except Exception:  # the owner's callbacks failed twice: the batch goes on regardless
            pass

    def _ready(self) -> None:
        self.poll(self.loop.time())

    def expire(self, key: Hashable, now: float) -> None:
        """`key`'s check reached its deadline: it fails with `timeout` unless it has ended already."""
        conn = self._active.get(key)
        if conn is not None:
            conn.reused = False  # no fresh try past the deadline
            conn._fail("timeout", now)

    def cancel(self, key: Hashable) -> None:
        """Stop `key`'s check without a result (its server left the config) and drop its kept-alive
        connection."""
        conn = self._active.pop(key, None)
        if conn is not None:
            conn.done = None
            conn.close(rst=True)
        self.discard(key)

    def discard(self, key: Hashable) -> None:
        """Close `key`'s kept-alive connection, if it has one (its check's settings changed)."""
        conn = self._idle.pop(key, None)
        if conn is not None:
            conn.close(rst=True)

    def running(self, key: Hashable) -> bool:
        return key in self._active

    # -- kept-alive connections

    def _keep(self, conn: _Conn) -> None:
        old = self._idle.get(conn.key)
        if old is not None and old is not conn:
            old.close(rst=True)
        conn.state = _IDLE
        self._idle[conn.key] = conn

    def _drop_idle(self, conn: _Conn, reported: bool) -> None:
        if self._idle.get(conn.key) is conn:
            del self._idle[conn.key]
        conn.close(rst=not reported)
        if reported and self.on_peer_close is not None:
            self.on_peer_close(conn.key)


class CheckOnce:
    """Run one check through a `Checker` as a coroutine, with a timer of its own for the deadline: what
    `HttpCheck()`/`TcpCheck()` do when awaited outside the health shell's schedule (a check wrapped or
    replaced in a test, a one-off check)."""

    def __init__(self, checker: Checker) -> None:
        self.checker = checker

    async def http(self, key: Hashable, probe: HttpProbe) -> ProbeResult:
        return await self._run(key, probe.timeout, lambda now, done: self.checker.http(key, probe, now, done))

    async def tcp(self, key: Hashable, address: str, port: int, timeout: float,
                  source: str | None = None) -> ProbeResult:
        return await self._run(key, timeout,
                               lambda now, done: self.checker.tcp(key, address, port, source, now, done))

    async def _run(self, key: Hashable, timeout: float, start: Callable[[float, Done], Any]) -> ProbeResult:
        loop = self.checker.loop
        fut: asyncio.Future[ProbeResult] = loop.create_future()

        def done(result: ProbeResult, _now: float) -> None:
            if not fut.done():
                fut.set_result(result)

        def deadline() -> None:
            now = loop.time()
            self.checker.poll(now)
            self.checker.expire(key, now)

        start(loop.time(), done)
        timer = loop.call_later(timeout, deadline)
        try:
            return await fut
        except asyncio.CancelledError:
            self.checker.cancel(key)
            raise
        finally:
            timer.cancel()


class HttpCheck:
    """A plain HTTP check of one target, run by a `Checker` under the key of its owner. `start(now, done)`
    for the health shell's schedule (which keeps the deadline); awaiting `check()` runs one on its own."""

    __slots__ = ("checker", "key", "probe", "timeout")

    def __init__(self, checker: Checker, key: Hashable, probe: HttpProbe) -> None:
        self.checker, self.key, self.probe, self.timeout = checker, key, probe, probe.timeout

    def start(self, now: float, done: Done) -> None:
        self.checker.http(self.key, self.probe, now, done)

    def __call__(self) -> Coroutine[Any, Any, ProbeResult]:
        return CheckOnce(self.checker).http(self.key, self.probe)


class TcpCheck:
    """A TCP connect check of one target (see `HttpCheck`)."""

    __slots__ = ("address", "checker", "key", "port", "source", "timeout")

    def __init__(self, checker: Checker, key: Hashable, address: str, port: int, timeout: float,
                 source: str | None = None) -> None:
        self.checker, self.key, self.address, self.port = checker, key, address, port
        self.timeout, self.source = timeout, source

    def start(self, now: float, done: Done) -> None:
        self.checker.tcp(self.key, self.address, self.port, self.source, now, done)

    def __call__(self) -> Coroutine[Any, Any, ProbeResult]:
        return CheckOnce(self.checker).tcp(self.key, self.address, self.port, self.timeout, self.source)
