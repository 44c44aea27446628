"""The raw-socket checker (edge/checker.py) against the same loopback servers as the transport probe
(tests/test_probe.py): the same outcomes with the same reasons, kept-alive connections, peer closes seen
while idle, deadlines that read what already arrived, and nothing left behind."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import resource
import socket
import threading
import time
from collections.abc import AsyncIterator, Hashable

import pytest

from havs.core.health import ProbeResult
from havs.edge.checker import Checker, CheckOnce
from havs.edge.probe import HttpProbe
from tests.test_probe import (  # noqa: F401 (fixtures)
    HTTP_OUTCOMES,
    LOOPBACK,
    Server,
    _free_port,
    _open_fd_numbers,
    _open_fds,
    _probe,
    _response,
    event_loop_policy,
)

pytestmark = pytest.mark.filterwarnings('ignore:Overriding the "event_loop_policy":DeprecationWarning')


class Harness:
    def __init__(self, checker: Checker) -> None:
        self.checker = checker
        self.once = CheckOnce(checker)
        self.closed: list[Hashable] = []
        self.errors: list[tuple[Hashable, BaseException]] = []
        checker.on_peer_close = self.closed.append
        checker.on_error = lambda key, exc: self.errors.append((key, exc))

    async def http(self, probe: HttpProbe, key: Hashable = "k") -> ProbeResult:
        return await self.once.http(key, probe)

    async def tcp(self, port: int, timeout: float = 0.5, source: str | None = None, key: Hashable = "t"
                  ) -> ProbeResult:
        return await self.once.tcp(key, LOOPBACK, port, timeout, source)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = await Server().start()
    yield srv
    await srv.stop()


@pytest.fixture
async def ck(server: Server) -> AsyncIterator[Harness]:
    """A checker for the test; afterwards, once it is closed and the servers are stopped, no stray task
    and no extra descriptor (the epoll instance included)."""
    fds = _open_fds()
    h = Harness(Checker(asyncio.get_running_loop()))
    yield h
    h.checker.close()
    for srv in list(Server.running):
        await srv.stop()
    await asyncio.sleep(0.05)
    current = asyncio.current_task()
    assert [t for t in asyncio.all_tasks() if t is not current] == []
    gc.collect()
    assert _open_fds() <= fds
    assert h.errors == []


@pytest.mark.parametrize(("path", "kw", "ok", "reason"), HTTP_OUTCOMES)
async def test_http_outcomes(server: Server, ck: Harness, path: str, kw: dict, ok: bool, reason: str) -> None:
    result = await ck.http(_probe(server, path, **kw))
    assert (result.ok, result.reason) == (ok, reason)
    assert 0 <= result.latency < 1.0
    if reason == "timeout":
        assert result.latency >= kw["timeout"] - 0.002  # uvloop's clock counts whole ms


async def test_endless_interim_responses_fail_at_once(server: Server, ck: Harness) -> None:
    result = await ck.http(_probe(server, "/continue-forever", timeout=2.0))
    assert result.reason == "garbage: more than 8 interim (1xx) responses" and result.latency < 0.2
    await asyncio.sleep(0.05)
    sent = server.interim_sent
    await asyncio.sleep(0.1)
    assert server.interim_sent == sent  # closed: the server cannot keep us reading


async def test_huge_body_is_capped_and_its_connection_not_kept(server: Server, ck: Harness) -> None:
    capped = await ck.http(_probe(server, "/huge", max_body=1000, expect_body="^a{1000}$", timeout=2))
    assert capped == ProbeResult(True, "ok", capped.latency) and capped.latency < 0.5
    tail = await ck.http(_probe(server, "/huge", max_body=1000, expect_body="TAIL", timeout=2))
    assert tail.reason == "body mismatch"
    assert ck.checker.idle == 0 and len(ck.checker) == 0


async def test_agent_weight_header(server: Server, ck: Harness) -> None:
    assert (await ck.http(_probe(server, "/agent"))).agent_weight == 0.5
    assert (await ck.http(_probe(server, "/agent", agent_header="X-Other"), key="o")).agent_weight == 0.25
    assert (await ck.http(_probe(server, "/ok"), key="p")).agent_weight is None


async def test_keep_alive_reuses_one_connection_per_key(server: Server, ck: Harness) -> None:
    probe = _probe(server, "/ok")
    for _ in range(5):
        assert (await ck.http(probe)).ok
    assert (server.connections, server.requests) == (1, 5)
    head = _probe(server, "/ok", method="HEAD")
    for _ in range(3):
        assert (await ck.http(head, key="head")).ok
    assert (server.connections, server.requests) == (2, 8)
    assert ck.checker.idle == 2
    # new settings for a key (a reload changed its check): its old connection is not reused
    assert (await ck.http(_probe(server, "/agent"))).ok
    assert server.connections == 3


async def test_a_connection_the_server_closes_after_its_answer_is_never_reused(server: Server, ck: Harness
                                                                                 ) -> None:
    probe = _probe(server, "/close-after")  # the server resets the connection right after answering
    for _ in range(3):
        result = await ck.http(probe)
        assert result.ok, result
        await asyncio.sleep(0.02)
        assert ck.checker.idle == 0  # not kept (the reset came with the answer) or dropped when it came
    assert server.connections == 3


async def test_a_kept_alive_connection_found_closed_is_retried_once(ck: Harness) -> None:
    """The server closes its idle connection just before the next check goes out (the loop had no turn
    to see it): the check reads the close, retries on a new connection and passes."""
    listener = socket.create_server((LOOPBACK, 0))
    port = listener.getsockname()[1]
    accepted: list[int] = []

    def serve() -> None:
        for _ in range(2):
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(1)
            with conn:
                data = b""
                while not data.endswith(b"\r\n\r\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                conn.sendall(_response(200, b"ok"))
                time.sleep(0.02)  # a keep-alive timeout shorter than the check interval

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    probe = HttpProbe(LOOPBACK, port, timeout=0.5)
    try:
        assert (await ck.http(probe)).ok and ck.checker.idle == 1
        time.sleep(0.1)  # the loop is held: the server's close sits unread
        result = await ck.http(probe)
        assert (result.ok, result.reason) == (True, "ok"), result
        assert len(accepted) == 2 and ck.closed == []
    finally:
        ck.checker.close()
        listener.close()
        thread.join(2.0)


async def test_a_peer_close_of_an_idle_connection_is_reported(server: Server, ck: Harness) -> None:
    assert (await ck.http(_probe(server, "/ok"))).ok
    assert ck.checker.idle == 1 and ck.closed == []
    await server.stop()  # the web process dies: its kernel closes our idle connection
    async with asyncio.timeout(1):
        while not ck.closed:
            await asyncio.sleep(0.005)
    assert ck.closed == ["k"] and ck.checker.idle == 0 and len(ck.checker) == 0


async def test_no_close_of_our_own_is_reported(server: Server, ck: Harness) -> None:
    for key in "abc":
        assert (await ck.http(_probe(server, "/ok"), key=key)).ok
    ck.checker.discard("a")  # a reload dropped the target
    assert (await ck.http(_probe(server, "/silent", timeout=0.05), key="c")).reason == "timeout"
    ck.checker.cancel("b")
    await asyncio.sleep(0.05)
    assert ck.closed == [] and len(ck.checker) == 0


async def test_cancel_stops_a_running_check_without_a_result(server: Server, ck: Harness) -> None:
    results: list[ProbeResult] = []
    loop = asyncio.get_running_loop()
    ck.checker.http("k", _probe(server, "/silent"), loop.time(), lambda r, _now: results.append(r))
    await asyncio.sleep(0.05)
    assert ck.checker.running("k")
    ck.checker.cancel("k")
    await asyncio.sleep(0.05)
    assert results == [] and not ck.checker.running("k") and len(ck.checker) == 0


async def test_refused_and_tcp(server: Server, ck: Harness) -> None:
    port = _free_port()
    assert (await ck.http(HttpProbe(LOOPBACK, port))).reason == "refused"
    assert (await ck.tcp(port)).reason == "refused"
    ok = await ck.tcp(server.port)
    assert ok.ok and ok.reason == "ok"


async def test_source_address_and_bad_source(server: Server, ck: Harness) -> None:
    seen: list[str] = []

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(writer.get_extra_info("peername")[0])
        await reader.readuntil(b"\r\n\r\n")
        writer.write(_response(200, b"ok"))
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(peer, LOOPBACK, 0)
    port = srv.sockets[0].getsockname()[1]
    assert (await ck.http(HttpProbe(LOOPBACK, port, source_address="127.0.0.7"))).ok
    assert seen == ["127.0.0.7"]
    srv.close()
    await srv.wait_closed()
    bad = await ck.http(HttpProbe(LOOPBACK, server.port, source_address="192.0.2.1"))
    assert not bad.ok and bad.reason.startswith("error: "), bad


async def test_local_shortage_is_inconclusive(server: Server, ck: Harness) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, max(_open_fd_numbers()) + 16), hard))
    try:
        with contextlib.suppress(OSError):
            while True:
                fillers.append(os.dup(0))
        results = [await ck.tcp(server.port), await ck.http(_probe(server, "/ok"))]
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert fillers
    for result in results:
        assert not result.ok and result.inconclusive and result.reason == "local: too many open files", result
    assert (await ck.http(_probe(server, "/ok"))).ok


async def test_a_connect_that_never_completes_times_out(ck: Harness) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((LOOPBACK, 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):  # fill the accept queue; later SYNs are dropped
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex((LOOPBACK, port))
        fillers.append(s)
    await asyncio.sleep(0.05)
    fds = _open_fds()
    try:
        http = await ck.http(HttpProbe(LOOPBACK, port, timeout=0.3))
        tcp = await ck.tcp(port, timeout=0.3)
        assert (http.reason, tcp.reason) == ("timeout", "timeout"), (http, tcp)
        assert http.latency >= 0.298 and tcp.latency >= 0.298  # uvloop's clock counts whole ms
    finally:
        for s in fillers:
            s.close()
        listener.close()
    assert _open_fds() <= fds


async def test_an_answer_left_unread_by_a_late_loop_is_read_at_the_deadline(ck: Harness) -> None:
    """The server (a thread) answers within the timeout while this loop is stuck in another callback
    until past the deadline: the deadline first reads what arrived (`poll`), so the healthy server is not
    failed with `timeout`."""
    listener = socket.create_server((LOOPBACK, 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while not data.endswith(b"\r\n\r\n"):
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            time.sleep(0.03)  # the answer comes while the client's loop is stalled
            conn.sendall(_response(200, b"ok"))
            with contextlib.suppress(OSError):
                conn.recv(1)  # until the check closes (with a reset)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    loop = asyncio.get_running_loop()
    busy, trigger = socket.socketpair()
    busy.setblocking(False)

    def other_work() -> None:
        busy.recv(1)
        time.sleep(0.6)  # past the 0.3 s deadline

    try:
        loop.add_reader(busy, other_work)
        task = asyncio.ensure_future(ck.http(HttpProbe(LOOPBACK, port, timeout=0.3)))
        await asyncio.sleep(0.01)  # connected, the request written
        trigger.send(b"x")
        result = await task
        assert (result.ok, result.reason) == (True, "ok")
        assert result.latency > 0.5
    finally:
        loop.remove_reader(busy)
        busy.close()
        trigger.close()
        ck.checker.close()
        listener.close()
        thread.join(2.0)


async def test_a_failing_callback_costs_its_own_check_only(server: Server, ck: Harness) -> None:
    loop = asyncio.get_running_loop()
    results: dict[str, ProbeResult] = {}

    def broken(_r: ProbeResult, _now: float) -> None:
        raise RuntimeError("subscriber bug")

    ck.checker.http("bad", _probe(server, "/ok"), loop.time(), broken)
    for key in "xyz":
        ck.checker.http(key, _probe(server, "/ok"), loop.time(), lambda r, _now, k=key: results.__setitem__(k, r))
    async with asyncio.timeout(1):
        while len(results) < 3:
            await asyncio.sleep(0.005)
    assert all(r.ok for r in results.values())
    assert [(k, type(e)) for k, e in ck.errors] == [("bad", RuntimeError)]
    ck.errors.clear()


async def test_memory_and_descriptors_are_flat_over_many_failed_checks(ck: Harness) -> None:
    port = _free_port()
    probe = HttpProbe(LOOPBACK, port, timeout=0.5)

    async def batch(n: int) -> None:
        for i in range(n // 200):
            results = await asyncio.gather(*(ck.http(probe, key=(i, j)) for j in range(100)),
                                           *(ck.tcp(port, key=(i, j, "t")) for j in range(100)))
            assert all(r.reason == "refused" for r in results)

    await batch(4_000)
    gc.collect()
    with open("/proc/self/statm") as f:
        before = int(f.read().split()[1])
    fds = _open_fds()
    await batch(20_000)
    gc.collect()
    with open("/proc/self/statm") as f:
        growth = (int(f.read().split()[1]) - before) * os.sysconf("SC_PAGE_SIZE")
    assert growth < 1024 * 1024, f"RSS grew by {growth} bytes over 20,000 failed checks"
    assert _open_fds() <= fds and len(ck.checker) == 0


async def test_the_last_look_reads_every_waiting_answer_not_one_batch() -> None:
    """More answers wait unread than one epoll_wait returns (1,100 > 1,024): the deadline's last look reads
    them all, none is failed as `timeout`."""
    n = 1100
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    ready = threading.Event()
    port: list[int] = []
    srv_loop = asyncio.new_event_loop()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                await r.readuntil(b"\r\n\r\n")
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except Exception:
            w.transport.abort()

    def run() -> None:
        asyncio.set_event_loop(srv_loop)
        s = srv_loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096))
        port.append(s.sockets[0].getsockname()[1])
        ready.set()
        srv_loop.run_forever()
        # the handlers left (our checker reset their connections): ended here, not at interpreter exit
        s.close()
        tasks = asyncio.all_tasks(srv_loop)
        for task in tasks:
            task.cancel()
        srv_loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        srv_loop.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    ready.wait(5)
    loop = asyncio.get_running_loop()
    ck = Checker(loop)
    results: dict[int, str] = {}
    probe = HttpProbe("127.0.0.1", port[0], timeout=5.0)
    try:
        now = loop.time()
        for i in range(n):
            ck.http(i, probe, now, lambda r, _n, i=i: results.__setitem__(i, r.reason))
        # let every connect complete and every request go out, then stall while all answers arrive
        for _ in range(200):
            await asyncio.sleep(0.01)
            if all(c.state >= 2 for c in ck._active.values()):  # _READING or later
                break
        results.clear()
        time.sleep(1.0)  # this loop is late: the answers wait unread ... then the deadline comes
        now = loop.time()
        ck.poll(now)  # _tick's last look
        for i in range(n):
            ck.expire(i, now)
        timeouts = sum(1 for r in results.values() if r == "timeout")
        assert timeouts == 0, f"{timeouts} of {n} answered checks failed as timeout"
    finally:
        ck.close()
        srv_loop.call_soon_threadsafe(srv_loop.stop)
        t.join(5)
