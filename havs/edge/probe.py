"""The transport probe: one HTTP(S) check in, one `ProbeResult` out, never an exception. The health shell
runs HTTPS checks with it (TLS needs the ssl module's state machine over a transport); plain HTTP and TCP
checks go through the raw-socket checker (edge/checker.py), which costs a third of the syscalls.

Why not `aiohttp.ClientSession`: it costs 170–200 µs of CPU per check (request/response objects,
cookie jar, tracing, connector bookkeeping), which caps one core near 5,000 checks/s. A check needs
much less: write one precomputed request, parse one response, look at the status, maybe a header and
a bounded prefix of the body. So the probe is a bare `asyncio.Protocol`:

- the request bytes are built once per target (`HttpProbe`), not per check; responses are read by
  `ResponseReader` (edge/http_response.py: llhttp through aiohttp's parser), as the checker reads them;
- the connection is kept alive between checks of the same target (`ConnectionPool`), so a steady
  check is one write and one read on an open socket: no handshake, no TIME_WAIT churn. A kept-alive
  connection the server closed while idle is retried once on a fresh connection. The pool reports
  such a close as it happens (`on_peer_close`): a dead web process's kernel closes the idle connection
  at once, so its owner can check the server now instead of at the next interval;
- one timer per check (`loop.call_later`) bounds the whole exchange — connect, TLS handshake, request
  and the complete response — so a server that trickles bytes fails with `timeout`. When it fires, the
  exchange gets two more turns of the loop (`LAST_LOOK_HOPS`) before it fails: an answer that arrived
  before the deadline but is still unread because this director's loop ran late (uvloop runs due timers
  before it polls sockets) is read, not mistaken for a dead server;
- the connection is made by the loop itself (`create_connection` with the numeric address: under
  uvloop, libuv's connect with one epoll registration for connect and reads), without looking the
  running loop up per check (`loop=`: a getpid() each on Python 3.11).

Run under uvloop when it is installed (`install_uvloop()`); the daemon decides.

Cancellation (the health service stopping) is the one exception that propagates; the connection is
aborted first.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any

from havs.core.health import ProbeResult
from havs.core.http_check import DEFAULT_AGENT_HEADER as DEFAULT_AGENT_HEADER
from havs.core.http_check import failed as _failed
from havs.core.http_check import judge
from havs.core.http_check import os_reason as _os_reason
from havs.core.http_check import parse_agent_weight as parse_agent_weight
from havs.edge.http_response import C_PARSER as C_PARSER
from havs.edge.http_response import HttpProbe as HttpProbe
from havs.edge.http_response import ResponseReader

# loop turns a timed-out exchange waits before failing: the second runs after a socket poll on both asyncio
# (ready callbacks run before the I/O they follow) and uvloop (timers run before the poll)
LAST_LOOK_HOPS = 2


def install_uvloop() -> bool:
    """Use uvloop's event loop policy if it is installed; True if it is."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


class ConnectionPool:
    """At most one idle kept-alive connection per target. Checks of one target are sequential, so one
    suffices; a connection in use is not in the pool.

    `on_peer_close(key)`: called when the peer closes or resets an idle connection (a real server's web
    process died, or the server times out idle connections). The pool only reports it; whoever owns the
    target decides whether to check it early. Connections we abort ourselves are never reported."""

    __slots__ = ("_idle", "on_peer_close")

    def __init__(self, on_peer_close: Callable[[tuple[Any, ...]], None] | None = None) -> None:
        self._idle: dict[tuple[Any, ...], _HttpConnection] = {}
        self.on_peer_close = on_peer_close

    def __len__(self) -> int:
        return len(self._idle)

    def take(self, key: tuple[Any, ...]) -> _HttpConnection | None:
        conn = self._idle.pop(key, None)
        if conn is None:
            return None
        conn.pool = None
        return conn if conn.alive else None

    def put(self, key: tuple[Any, ...], conn: _HttpConnection) -> None:
        old = self._idle.pop(key, None)
        if old is not None and old is not conn:
            old.abort()
        self._idle[key] = conn
        conn.pool, conn.pool_key = self, key

    def discard(self, key: tuple[Any, ...]) -> None:
        conn = self._idle.pop(key, None)
        if conn is not None:
            conn.abort()

    def close(self) -> None:
        for conn in self._idle.values():
            conn.abort()
        self._idle.clear()

    def _peer_closed(self, key: tuple[Any, ...], conn: _HttpConnection) -> None:
        if self._idle.get(key) is conn:
            del self._idle[key]
        callback = self.on_peer_close
        if callback is not None:
            callback(key)


_tls_contexts: dict[bool, ssl.SSLContext] = {}


def _tls_context(verify: bool) -> ssl.SSLContext:
    # building a context (loading the CA store) costs milliseconds: one per mode per process
    ctx = _tls_contexts.get(verify)
    if ctx is None:
        if verify:
            ctx = ssl.create_default_context()
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        _tls_contexts[verify] = ctx
    return ctx


class _HttpConnection(asyncio.Protocol):
    """One connection to one target; runs one request/response exchange at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, head: bool, max_body: int) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.reader = ResponseReader(loop, head, max_body)
        self.alive = True
        self.waiter: asyncio.Future[str | None] | None = None
        self.timer: asyncio.Handle | None = None  # the check's one deadline timer (connect and exchange)
        self.connecting: asyncio.Task[Any] | None = None  # the task to cancel if the deadline comes mid-connect
        self.connect_timed_out = False
        self.got_bytes = False
        self.pool: ConnectionPool | None = None  # set while the connection idles in a pool
        self.pool_key: tuple[Any, ...] = ()

    @property
    def reusable(self) -> bool:
        return self.reader.reusable

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:
            # bytes nobody asked for: the stream is out of step, never reuse it
            self.abort()
            return
        self.got_bytes = True
        verdict = self.reader.feed(data)
        if verdict is True:
            self._finish(None)
            if not self.reader.reusable:
                self.abort()  # e.g. a capped body: the rest goes with the connection
        elif verdict is not None:
            self._fail(verdict)

    def eof_received(self) -> bool:
        if self.waiter is not None:
            verdict = self.reader.feed_eof()
            if verdict is True:
                self._finish(None)
            else:
                self._fail(verdict)
        self.reader.reusable = False
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        pool = self.pool
        if pool is not None and self.waiter is None:
            # closed by the peer while idle (our own abort() clears `pool` first)
            self.pool = None
            pool._peer_closed(self.pool_key, self)
            return
        if self.waiter is not None:
            if exc is None:
                self._finish("closed")
            elif isinstance(exc, ssl.SSLError):
                self._finish(f"tls: {exc.reason or exc}")
            else:
                self._finish(_os_reason(exc))

    # -- exchange

    def arm(self, delay: float) -> None:
        """The check's deadline, `delay` seconds from now: one timer for the connect and the exchange
        (`call_later`: under uvloop each clock read is a syscall where there is no vDSO, as in UML)."""
        self.timer = self.loop.call_later(delay, self._deadline)

    def _deadline(self) -> None:
        self.timer = None
        task = self.connecting
        if task is not None:  # still connecting: cancel the connect, as asyncio.timeout would
            self.connect_timed_out = True
            task.cancel()
        elif self.waiter is not None:
            self._expired(self.waiter, LAST_LOOK_HOPS)

    def start(self, request: bytes, delay: float) -> asyncio.Future[str | None]:
        """Send the request; the future says how the exchange ended (None: a complete answer). The
        deadline is the one `arm` set for a new connection, else `delay` seconds from now."""
        self.waiter = waiter = self.loop.create_future()
        if self.timer is None:
            self.arm(delay)
        self.reader.reset()
        self.got_bytes = False
        assert self.transport is not None
        self.transport.write(request)
        return waiter

    def _expired(self, waiter: asyncio.Future[str | None], hops: int) -> None:
        if self.waiter is not waiter:
            return  # answered (or failed) during the last look
        if hops > 0:
            self.timer = self.loop.call_soon(self._expired, waiter, hops - 1)
            return
        self._fail("timeout")

    def _finish(self, failure: str | None) -> None:
        waiter, self.waiter = self.waiter, None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if waiter is not None and not waiter.done():
            waiter.set_result(failure)

    def _fail(self, reason: str) -> None:
        self.reader.reusable = False
        self._finish(reason)
        self.abort()

    def abort(self) -> None:
        self.alive = False
        self.reader.reusable = False
        self.pool = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.abort()


def _tls_reason(exc: ssl.SSLError) -> str:
    detail = getattr(exc, "verify_message", None) or exc.reason or str(exc)
    return f"tls: {detail}"


async def _open(
    loop: asyncio.AbstractEventLoop, probe: HttpProbe, delay: float
) -> tuple[_HttpConnection | None, str | None]:
    """A new connection to the target, connected by the loop itself (uvloop: libuv's connect, its numeric
    address fast path, one epoll registration for connect and reads). The connection's deadline timer,
    `delay` seconds from now, is armed here and also bounds the exchange: it cancels this task if the
    connect is still pending, as `asyncio.timeout_at` would without looking the loop up again."""
    conn = _HttpConnection(loop, probe.head, probe.max_body)
    task = asyncio.current_task(loop)
    assert task is not None
    cancelling = task.cancelling()
    conn.connecting = task
    conn.arm(delay)
    local = (probe.source_address, 0) if probe.source_address else None
    try:
        if probe.tls:
            await loop.create_connection(
                lambda: conn, probe.address, probe.port, local_addr=local, family=probe.family,
                ssl=_tls_context(probe.verify_tls), server_hostname=probe.server_hostname,
                ssl_handshake_timeout=max(delay, 0.001),
            )
        else:
            await loop.create_connection(lambda: conn, probe.address, probe.port, local_addr=local,
                                         family=probe.family)
    except BaseException as exc:
        conn.connecting = None
        conn.abort()  # the loop closes its transport on failure; this only marks the protocol dead
        if isinstance(exc, asyncio.CancelledError):
            if conn.connect_timed_out and task.uncancel() <= cancelling:
                return None, "timeout"
            raise
        if isinstance(exc, TimeoutError):  # the TLS handshake's own timeout
            return None, "timeout"
        if isinstance(exc, ssl.SSLError):
            return None, _tls_reason(exc)
        if isinstance(exc, OSError):
            return None, _os_reason(exc)
        raise
    conn.connecting = None
    return conn, None


async def probe_http(
    probe: HttpProbe, pool: ConnectionPool | None = None, loop: asyncio.AbstractEventLoop | None = None
) -> ProbeResult:
    """Run one HTTP(S) check. With a pool, the connection is kept alive for the next check. `loop`: the
    running loop, when the caller has it (looking it up costs a getpid() per call on Python 3.11)."""
    if loop is None:
        loop = asyncio.get_running_loop()
    start = loop.time()
    delay = probe.timeout  # the deadline, from `start`: no clock read between here and the timers
    conn = pool.take(probe.key) if pool is not None else None
    reused = conn is not None
    while True:
        if conn is None:
            conn, reason = await _open(loop, probe, delay)
            if conn is None:
                return _failed(reason, loop.time() - start)
        try:
            failure = await conn.start(probe.request, delay)
        except BaseException:
            conn.abort()
            raise
        if failure is not None and reused and not conn.got_bytes and failure in ("closed", "reset"):
            # the server closed the kept-alive connection while it was idle: one fresh try
            conn.abort()
            conn, reused = None, False
            delay = start + probe.timeout - loop.time()
            continue
        break
    latency = loop.time() - start
    if failure is not None:
        conn.abort()
        return _failed(failure, latency)
    result = judge(probe, conn.reader.code, conn.reader.headers, conn.reader.body, latency)
    if pool is not None and conn.reusable and conn.alive:
        pool.put(probe.key, conn)
    else:
        conn.abort()
    return result
