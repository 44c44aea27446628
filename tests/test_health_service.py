"""The health shell against a real loopback server that is killed and restarted."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from havs.core.health import HealthChanged, ProbeResult
from havs.core.model import VirtualService
from havs.health_service import HealthService
from tests.test_probe import event_loop_policy  # noqa: F401 (fixture: every test on asyncio and on uvloop)

# TODO(lead): a conftest `pytest_asyncio_loop_factories` hook would replace the policy override
pytestmark = pytest.mark.filterwarnings('ignore:Overriding the "event_loop_policy":DeprecationWarning')
LOOPBACK = "127.0.0.1"


class Log:
    """Records structlog-style calls."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))

    error = warning = debug = info


class Backend:
    """A minimal keep-alive HTTP server that can be stopped and started on the same port."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind((LOOPBACK, 0))
            self.port = s.getsockname()[1]
        self.server: asyncio.Server | None = None
        self.handlers: set[asyncio.Task[None]] = set()
        self.status = 200
        self.idle_close: float | None = None  # close a connection this long after each response
        self.requests = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, LOOPBACK, self.port, reuse_address=True)

    async def stop(self) -> None:
        if self.server is None:
            return
        self.server.close()
        for t in list(self.handlers):
            t.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)
        await self.server.wait_closed()
        self.server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                writer.write(f"HTTP/1.1 {self.status} X\r\nContent-Length: 2\r\n\r\nok".encode())
                await writer.drain()
                if self.idle_close is not None:
                    await asyncio.sleep(self.idle_close)  # a short keep-alive timeout
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.handlers.discard(task)
            writer.transport.abort()


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    b = Backend()
    await b.start()
    yield b
    await b.stop()


def service(port: int, *, vip_port: int = 80, check: dict | None = None, servers: list[dict] | None = None
            ) -> VirtualService:
    check = {"type": "http", "interval": 0.05, "fast_interval": 0.02, "timeout": 0.05, "rise": 2, "fall": 3,
             "jitter": 0.1, **(check or {})}
    return VirtualService.model_validate({
        "address": "127.0.0.100", "port": vip_port, "check": check,
        "real_servers": servers if servers is not None else [{"address": LOOPBACK, "port": port}],
    })


async def wait_for(events: list[HealthChanged], n: int, timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while len(events) < n:
            await asyncio.sleep(0.005)


async def test_down_after_fall_up_after_rise(backend: Backend) -> None:
    events: list[HealthChanged] = []
    log = Log()
    hs = HealthService([service(backend.port)], log=log, on_change=events.append)
    hs.start()
    try:
        await wait_for(events, 1)
        first = events[0]
        assert (first.server, first.service, first.from_, first.to, first.after) == (
            f"127.0.0.1:{backend.port}", "TCP 127.0.0.100:80", "unknown", "up", 2,
        )
        await backend.stop()
        await wait_for(events, 2)
        assert (events[1].from_, events[1].to, events[1].reason, events[1].after) == ("up", "down", "refused", 3)
        await backend.start()
        await wait_for(events, 3)
        assert (events[2].from_, events[2].to, events[2].reason, events[2].after) == ("down", "up", "ok", 2)
        backend.status = 503
        await wait_for(events, 4)
        assert (events[3].to, events[3].reason) == ("down", "status 503")
        # exactly one log line per change, with the agreed keys
        changes = [kw for name, kw in log.events if name == "health.change"]
        assert len(changes) == 4
        assert set(changes[0]) == {"server", "service", "from_", "to", "reason", "after", "latency_ms"}
        snap = hs.snapshot()["TCP 127.0.0.100:80"][f"127.0.0.1:{backend.port}"]
        assert snap["state"] == "down" and snap["reason"] == "status 503" and snap["up"] is False
    finally:
        await hs.stop()
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("health ")] == []


async def test_fast_rechecks_while_changing_state(backend: Backend) -> None:
    # slow interval, fast re-checks: fall=3 is reached in about 2 fast intervals after the first failure
    events: list[HealthChanged] = []
    check = {"interval": 1.0, "fast_interval": 0.05, "timeout": 0.2, "jitter": 0.0, "rise": 1}
    hs = HealthService([service(backend.port, check=check)], log=Log(), on_change=events.append, rand=lambda: 0.0)
    hs.start()
    try:
        await wait_for(events, 1)
        loop = asyncio.get_running_loop()
        await backend.stop()
        t0 = loop.time()
        await wait_for(events, 2, timeout=3)
        # at most one normal interval to notice, then two fast ones; far below 3 normal intervals
        assert loop.time() - t0 < 1.0 + 2 * 0.05 + 0.3
        assert events[1].to == "down"
    finally:
        await hs.stop()


async def test_tcp_and_none_checks(backend: Backend) -> None:
    events: list[HealthChanged] = []
    vs_tcp = service(backend.port, vip_port=81, check={"type": "tcp", "rise": 1})
    vs_none = service(backend.port, vip_port=82, check={"type": "none"})
    hs = HealthService([vs_tcp, vs_none], log=Log(), on_change=events.append)
    hs.start()
    try:
        await wait_for(events, 2)
        by_service = {e.service: e for e in events}
        assert by_service["TCP 127.0.0.100:82"].reason == "no check"
        assert by_service["TCP 127.0.0.100:81"].to == "up"
        assert all(h.is_up for h in hs.states().values())
    finally:
        await hs.stop()


async def test_update_keeps_unchanged_starts_new_stops_removed(backend: Backend) -> None:
    events: list[HealthChanged] = []
    other = Backend()
    await other.start()
    a = {"address": LOOPBACK, "port": backend.port}
    b = {"address": LOOPBACK, "port": other.port}
    hs = HealthService([service(0, servers=[a])], log=Log(), on_change=events.append)
    hs.start()
    try:
        await wait_for(events, 1)
        key_a = ("TCP 127.0.0.100:80", f"127.0.0.1:{backend.port}")
        key_b = ("TCP 127.0.0.100:80", f"127.0.0.1:{other.port}")
        health_a = hs.states()[key_a]
        loop_a = hs._loops[key_a]
        planned_a = hs._schedule.planned(key_a)
        # reload: a unchanged (same state, same next check), b new
        hs.update([service(0, servers=[a, b])])
        assert hs.states()[key_a] is health_a and hs._loops[key_a] is loop_a
        assert hs._schedule.planned(key_a) == planned_a
        await wait_for(events, 2)
        assert events[1].server == key_b[1] and events[1].to == "up"
        # reload: a's check changes (state kept, no new event), b removed
        hs.update([service(0, servers=[a], check={"path": "/health", "rise": 3})])
        assert hs.states()[key_a] is health_a and health_a.state == "up" and health_a.timing.rise == 3
        assert key_b not in hs.states()
        assert hs._schedule.planned(key_b) is None and not hs._schedule.is_running(key_b)
        requests_b, checks_a = other.requests, hs.checks_run
        await asyncio.sleep(0.2)
        assert other.requests == requests_b  # b is no longer checked
        assert hs.checks_run >= checks_a + 2  # a still is (0.05 s interval)
        assert len(events) == 2
    finally:
        await hs.stop()
        await other.stop()


async def test_a_failing_subscriber_does_not_stop_the_loop(backend: Backend) -> None:
    calls: list[HealthChanged] = []

    def boom(change: HealthChanged) -> None:
        calls.append(change)
        raise RuntimeError("subscriber bug")

    log = Log()
    hs = HealthService([service(backend.port)], log=log, on_change=boom)
    hs.start()
    try:
        await wait_for(calls, 1)
        await backend.stop()
        await wait_for(calls, 2)
        assert any(name == "health.callback_error" for name, _ in log.events)
    finally:
        await hs.stop()


async def test_a_dead_server_is_checked_as_soon_as_it_closes_the_idle_connection(backend: Backend) -> None:
    # a 5 s interval: without the early check, the failure would be seen up to 5 s later
    events: list[HealthChanged] = []
    check = {"interval": 5.0, "timeout": 0.5, "rise": 1, "fall": 1, "jitter": 0.0}
    hs = HealthService([service(backend.port, check=check)], log=Log(), on_change=events.append, rand=lambda: 0.0)
    hs.start()
    try:
        await wait_for(events, 1)
        assert events[0].to == "up"
        await asyncio.sleep(0.1)  # idle between checks, the kept-alive connection in the pool
        loop = asyncio.get_running_loop()
        await backend.stop()  # listening socket and accepted connection closed, as when the process dies
        t0 = loop.time()
        await wait_for(events, 2, timeout=1.0)
        took = loop.time() - t0
        assert (events[1].to, events[1].reason) == ("down", "refused")
        assert took < 0.5, took
        assert hs.early_checks == 1
    finally:
        await hs.stop()


async def test_a_server_closing_idle_connections_gets_at_most_one_early_check_per_interval(
    backend: Backend,
) -> None:
    backend.idle_close = 0.02  # closes every connection 20 ms after its response
    events: list[HealthChanged] = []
    interval = 0.3
    check = {"interval": interval, "timeout": 0.2, "rise": 1, "fall": 1, "jitter": 0.0}
    hs = HealthService([service(backend.port, check=check)], log=Log(), on_change=events.append, rand=lambda: 0.0)
    hs.start()
    try:
        await wait_for(events, 1)
        loop = asyncio.get_running_loop()
        t0, checks0, requests0 = loop.time(), hs.checks_run, backend.requests
        await asyncio.sleep(1.5)
        intervals = (loop.time() - t0) / interval
        checks, early = hs.checks_run - checks0, hs.early_checks
        # without the bound: a check every ~20 ms (each new connection is closed again), ~75 here
        assert checks <= 2 * intervals + 2, (checks, early)
        assert 1 <= early <= intervals + 2, (checks, early)
        assert backend.requests - requests0 == checks
        assert [e.to for e in events] == ["up"]  # early checks of a healthy server change nothing
    finally:
        await hs.stop()


# ------------------------------------------------------------ new servers earn traffic (issue 11, item 4)

SLOW = {"interval": 5.0, "fast_interval": 0.02, "timeout": 0.2}  # a spread first check would come seconds late


def closed_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


async def until(predicate: Any, timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def test_server_added_by_reload_is_down_until_rise_and_checked_at_once(backend: Backend) -> None:
    other = Backend()
    await other.start()
    a = {"address": LOOPBACK, "port": backend.port}
    b = {"address": LOOPBACK, "port": other.port}
    key_a = ("TCP 127.0.0.100:80", f"127.0.0.1:{backend.port}")
    key_b = ("TCP 127.0.0.100:80", f"127.0.0.1:{other.port}")
    seen: list[tuple[bool, bool]] = []  # (result ok, is_up right after it), for b

    def on_result(key: tuple[str, str], result: Any) -> None:
        if key == key_b:
            seen.append((result.ok, hs.states()[key_b].is_up))

    hs = HealthService([service(0, servers=[a], check=SLOW)], log=Log(), on_change=lambda _c: None,
                       on_result=on_result, initial="up", rand=lambda: 0.999)
    hs.start()
    try:
        assert hs.states()[key_a].is_up  # the start policy: taken as up before its first verdict
        hs.update([service(0, servers=[a, b], check=SLOW)])
        assert not hs.states()[key_b].is_up  # the reload's new server: not up before any check
        assert hs.states()[key_a].is_up
        await until(lambda: len(seen) >= 2, timeout=1.0)  # fast interval, not the 5 s interval
        assert seen[:2] == [(True, False), (True, True)]  # up exactly at the rise-th (2nd) passing check
        assert other.requests >= 2
    finally:
        await hs.stop()
        await other.stop()


async def test_dead_server_added_by_reload_never_counts_as_up(backend: Backend) -> None:
    dead = {"address": LOOPBACK, "port": closed_port()}
    key = ("TCP 127.0.0.100:80", f"127.0.0.1:{dead['port']}")
    events: list[HealthChanged] = []
    ups: list[bool] = []
    hs = HealthService([service(0, servers=[{"address": LOOPBACK, "port": backend.port}], check=SLOW)],
                       log=Log(), on_change=events.append, on_result=lambda k, _r: ups.append(hs.states()[k].is_up)
                       if k == key else None, initial="up", rand=lambda: 0.999)
    hs.start()
    try:
        hs.update([service(0, servers=[{"address": LOOPBACK, "port": backend.port}, dead], check=SLOW)])
        await until(lambda: any(e.server == key[1] for e in events), timeout=1.0)
        (change,) = [e for e in events if e.server == key[1]]
        assert (change.from_, change.to, change.reason, change.after) == ("unknown", "down", "refused", 3)
        assert ups and not any(ups)
    finally:
        await hs.stop()


async def test_cold_start_down_first_checks_within_the_fast_interval(backend: Backend) -> None:
    key = ("TCP 127.0.0.100:80", f"127.0.0.1:{backend.port}")
    events: list[HealthChanged] = []
    hs = HealthService([service(backend.port, check=SLOW)], log=Log(), on_change=events.append, initial="down",
                       rand=lambda: 0.999)
    assert not hs.states()[key].is_up  # before start too: no verdict is not up
    hs.start()
    try:
        assert not hs.states()[key].is_up
        await wait_for(events, 1, timeout=1.0)  # two checks at the fast interval, the 5 s interval never waited
        assert (events[0].from_, events[0].to, events[0].after) == ("unknown", "up", 2)
        assert hs.states()[key].is_up
    finally:
        await hs.stop()


async def test_update_at_start_follows_the_start_policy(backend: Backend) -> None:
    key = ("TCP 127.0.0.100:80", f"127.0.0.1:{backend.port}")
    hs = HealthService([], log=Log(), on_change=lambda _c: None, initial="up", rand=lambda: 0.999)
    hs.start()
    try:
        hs.update([service(backend.port, check=SLOW)], at_start=True)
        assert hs.states()[key].is_up
    finally:
        await hs.stop()
    # and before start: the default (a reload) remembers the server as new until start() adds it
    hs = HealthService([], log=Log(), on_change=lambda _c: None, initial="up")
    hs.update([service(backend.port, check=SLOW)])
    assert not hs.states()[key].is_up
    hs.start()
    try:
        assert not hs.states()[key].is_up
    finally:
        await hs.stop()


async def test_switching_a_check_on_keeps_the_server_up(backend: Backend) -> None:
    key = ("TCP 127.0.0.100:80", f"127.0.0.1:{backend.port}")
    hs = HealthService([service(backend.port, check={"type": "none"})], log=Log(), on_change=lambda _c: None)
    hs.start()
    try:
        health = hs.states()[key]
        assert health.is_up
        hs.update([service(backend.port, check=SLOW)])
        assert hs.states()[key] is health and health.is_up
        await until(lambda: backend.requests >= 1, timeout=1.0)  # checked at once
        assert health.is_up and health.timing.interval == 5.0
        hs.update([service(backend.port, check={"type": "none"})])
        assert hs.states()[key].is_up
        assert hs._schedule.planned(key) is None and not hs._schedule.is_running(key)
        requests = backend.requests
        await asyncio.sleep(0.1)
        assert backend.requests == requests  # checking switched off
    finally:
        await hs.stop()


async def test_a_local_shortage_is_logged_and_never_marks_a_server_down(backend: Backend) -> None:
    from havs.core.health import ProbeResult

    key = ("TCP 127.0.0.100:80", f"127.0.0.1:{backend.port}")
    events: list[HealthChanged] = []
    log = Log()
    hs = HealthService([service(backend.port)], log=log, on_change=events.append)
    hs.start()
    try:
        await wait_for(events, 1)
        assert hs.states()[key].is_up

        async def no_descriptors() -> ProbeResult:
            return ProbeResult(False, "local: too many open files", 0.0, inconclusive=True)

        hs._loops[key].probe = no_descriptors
        await until(lambda: hs.inconclusive_checks >= 10)  # fall is 3: three failures would have been enough
        assert hs.states()[key].is_up and len(events) == 1
        warnings = [kw for name, kw in log.events if name == "health.local_error"]
        assert len(warnings) == 1 and warnings[0]["reason"] == "local: too many open files"
    finally:
        await hs.stop()


async def test_a_stalled_loop_reads_the_answers_that_arrived_instead_of_timing_out() -> None:
    """The director's loop is stuck in another callback (time.sleep: a CPU taken by other work) from just
    after each check is issued until past its deadline; the server (a thread) answers during the stall.
    On uvloop the due timer runs before the socket is polled: the deadline reads what arrived first, so the
    checks pass (not failed, not even set aside as overload)."""
    import threading
    import time

    listener = socket.create_server((LOOPBACK, 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                with conn:
                    data = b""
                    while not data.endswith(b"\r\n\r\n"):
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    time.sleep(0.03)  # answers while the client's loop is stuck
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    events: list[HealthChanged] = []
    results: list[ProbeResult] = []
    check = {"type": "http", "interval": 0.3, "timeout": 0.3, "rise": 1, "fall": 1, "jitter": 0}
    hs = HealthService([service(port, check=check)], log=Log(), on_change=events.append,
                       on_result=lambda _k, r: results.append(r))
    loop = asyncio.get_running_loop()
    busy, trigger = socket.socketpair()
    busy.setblocking(False)
    loop.add_reader(busy, lambda: (busy.recv(1), time.sleep(0.6)))  # past the 0.3 s deadline
    hs.start()
    try:
        await wait_for(events, 1)
        checker = hs._checker
        assert checker is not None
        issue = checker.http
        stalls = 0

        def issue_then_stall(*args: Any) -> None:
            nonlocal stalls
            issue(*args)
            stalls += 1
            if stalls <= 2:
                trigger.send(b"x")

        checker.http = issue_then_stall  # type: ignore[method-assign]
        results.clear()
        await until(lambda: len(results) >= 3, timeout=5.0)
        assert [(r.ok, r.reason) for r in results[:2]] == [(True, "ok")] * 2, results
        assert all(r.latency > 0.5 for r in results[:2])  # read late, by the deadline's last look
        assert hs.overload_checks == 0 and len(events) == 1
    finally:
        await hs.stop()
        loop.remove_reader(busy)
        busy.close()
        trigger.close()
        listener.close()
        thread.join(2.0)


async def test_a_stalled_loop_makes_timeouts_inconclusive_not_failures(backend: Backend) -> None:
    """The loop stalls while checks are in flight and no answer came by the deadline (a server that is
    slow, or dead: this director cannot tell while it lags). No server is taken out for the first
    `Overload().max_consecutive`; `health.overload` says why."""
    import time

    from havs.edge.checker import HttpCheck
    from havs.edge.probe import HttpProbe

    key = ("TCP 127.0.0.100:80", f"127.0.0.1:{backend.port}")
    events: list[HealthChanged] = []
    log = Log()
    check = {"type": "tcp", "interval": 0.1, "timeout": 0.1, "rise": 1, "fall": 1}
    hs = HealthService([service(backend.port, check=check)], log=log, on_change=events.append)
    hs.start()
    silent = socket.create_server((LOOPBACK, 0))  # accepts (in the kernel) and never answers
    try:
        await wait_for(events, 1)
        assert hs.states()[key].is_up
        real = hs._loops[key].probe
        assert real is not None and hs._checker is not None
        no_answer = HttpCheck(hs._checker, "silent", HttpProbe(LOOPBACK, silent.getsockname()[1], timeout=0.1))

        stalls = 0

        async def stalled() -> Any:
            nonlocal stalls
            stalls += 1
            if stalls > 3:  # Overload().max_consecutive stalls in a row
                return await real()  # type: ignore[operator]
            task = asyncio.ensure_future(no_answer())
            await asyncio.sleep(0)  # the request is written...
            time.sleep(0.3)  # ...and the loop does not run again for 3 timeouts
            return await task

        hs._loops[key].probe = stalled
        await until(lambda: stalls >= 6, timeout=5.0)
        assert hs.states()[key].is_up and len(events) == 1, events  # fall=1: a single counted timeout would do
        assert hs.overload_checks == 3
        overloads = [kw for name, kw in log.events if name == "health.overload"]
        assert len(overloads) == 1 and overloads[0]["lag_ms"] >= 150  # logged once per OVERLOAD_LOG_EVERY
    finally:
        await hs.stop()
        silent.close()


async def test_a_server_that_dies_during_overload_is_still_removed(backend: Backend) -> None:
    from havs.core.health import ProbeResult

    key = ("TCP 127.0.0.100:80", f"127.0.0.1:{backend.port}")
    events: list[HealthChanged] = []
    hs = HealthService([service(backend.port)], log=Log(), on_change=events.append)
    hs.start()
    try:
        await wait_for(events, 1)

        async def dead_and_late() -> ProbeResult:
            # no answer, and the loop is late on every check (the timeout's timer fired 0.25 s late)
            return ProbeResult(False, "timeout", 0.3)

        hs._loops[key].probe = dead_and_late
        await wait_for(events, 2)
        assert (events[1].to, events[1].reason, events[1].after) == ("down", "timeout", 3)
        assert hs.overload_checks == 3  # set aside three times in a row, then counted: fall=3 more
    finally:
        await hs.stop()


async def test_checks_queue_for_a_slot_instead_of_timing_out(backend: Backend) -> None:
    """At most max_in_flight probes run at once; the rest wait without their timeout running."""
    from havs.core.health import ProbeResult

    servers = [{"address": f"127.0.1.{i}", "port": 80} for i in range(1, 9)]
    check = {"type": "tcp", "interval": 0.05, "timeout": 0.05, "connect_address": LOOPBACK,
             "connect_port": backend.port}
    events: list[HealthChanged] = []
    hs = HealthService([service(backend.port, check=check, servers=servers)], log=Log(), on_change=events.append,
                       max_in_flight=2)
    running = peak = 0

    async def slow_answer() -> ProbeResult:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.03)  # each check takes most of its timeout: 8 at once would not fit 2 slots
        running -= 1
        return ProbeResult(True, "ok", 0.03)

    hs.start()
    try:
        for loop in hs._loops.values():
            loop.probe = slow_answer
        await until(lambda: hs.checks_run >= 40, timeout=5.0)
        assert peak == 2
        assert all(h.is_up for h in hs.states().values())
        assert all(e.to == "up" for e in events)
    finally:
        await hs.stop()


async def test_a_large_cold_start_spreads_first_checks_beyond_the_fast_interval(backend: Backend) -> None:
    from havs.health_service import FIRST_ROUND_RATE

    n = 500
    servers = [{"address": f"127.0.{1 + i // 250}.{1 + i % 250}", "port": 80} for i in range(n)]
    hs = HealthService([], log=Log(), on_change=lambda _c: None, initial="down", rand=lambda: 0.999)
    hs.update([service(backend.port, check={**SLOW, "interval": 1.0, "connect_address": LOOPBACK,
                                             "connect_port": backend.port}, servers=servers)], at_start=True)
    hs.start()
    try:
        # the last first check of 500 comes about n / FIRST_ROUND_RATE = 0.5 s in, not within 0.02 s
        await asyncio.sleep(0.1)
        assert backend.requests == 0
        await until(lambda: backend.requests >= n, timeout=3.0)
        assert n / FIRST_ROUND_RATE == 0.5
    finally:
        await hs.stop()


def test_settings_health_max_in_flight() -> None:
    """`settings.health_max_in_flight` is the bound the service applies: same default, bad values refused
    with the key named."""
    import inspect

    from pydantic import ValidationError

    from havs.core.model import Settings

    default = inspect.signature(HealthService).parameters["max_in_flight"].default
    assert Settings().health_max_in_flight == default == 64
    assert Settings(health_max_in_flight=1).health_max_in_flight == 1
    for bad in (0, -5, 100001):
        with pytest.raises(ValidationError, match="health_max_in_flight"):
            Settings(health_max_in_flight=bad)


async def test_a_check_slower_than_its_interval_piles_up_no_backlog(backend: Backend) -> None:
    """Checks that take longer than their interval (a busy director) are not scheduled in the past: the next
    one is due when the last ended, so the timers' lateness stays the loop's own (small) lag instead of the
    growing age of a backlog, which would make every timeout look like overload."""
    check = {"type": "tcp", "interval": 0.05, "timeout": 0.05, "rise": 1, "fall": 1, "jitter": 0}
    hs = HealthService([service(backend.port, check=check)], log=Log(), on_change=lambda _c: None)
    hs.start()
    try:
        key = ("TCP 127.0.0.100:80", f"127.0.0.1:{backend.port}")
        ends: list[float] = []

        async def slow() -> ProbeResult:
            await asyncio.sleep(0.15)  # three intervals per check
            ends.append(asyncio.get_running_loop().time())
            return ProbeResult(True, "ok", 0.15)

        hs._loops[key].probe = slow
        await until(lambda: len(ends) >= 8, timeout=5.0)
        now = asyncio.get_running_loop().time()
        assert hs._lag.worst(now - 1.0, now) < 0.05, hs._lag.worst(now - 1.0, now)
    finally:
        await hs.stop()


async def test_failing_callbacks_or_check_starts_never_stop_the_checking(backend: Backend) -> None:
    """Every server's checks hang on one timer: a metrics subscriber that raises, or a check that cannot
    start, costs that result (logged at error level), never the timetable."""
    log = Log()
    events: list[HealthChanged] = []
    results: list[ProbeResult] = []

    def broken_metrics(_key: Any, result: ProbeResult) -> None:
        results.append(result)
        raise RuntimeError("metrics bug")

    check = {"type": "tcp", "rise": 1}
    hs = HealthService([service(backend.port, check=check)], log=log, on_change=events.append,
                       on_result=broken_metrics)
    hs.start()
    try:
        await until(lambda: len(results) >= 5)
        assert [e.to for e in events] == ["up"]  # the verdict went on regardless
        assert any(name == "health.callback_error" for name, _ in log.events)
        checker = hs._checker
        assert checker is not None

        def cannot_start(*_args: Any) -> None:
            raise RuntimeError("checker bug")

        checker.tcp = cannot_start  # type: ignore[method-assign]
        runs = hs.checks_run
        await until(lambda: hs.checks_run >= runs + 5)  # still scheduled, each start failing
        assert any(name == "health.probe_error" for name, _ in log.events)
        assert results[-1].inconclusive and "checker bug" in results[-1].reason
        assert hs.states()[("TCP 127.0.0.100:80", f"127.0.0.1:{backend.port}")].is_up  # inconclusive, not down
        del checker.tcp  # the real method again
        seen = len(results)
        await until(lambda: any(r.reason == "ok" for r in results[seen:]))
    finally:
        await hs.stop()


# ---------------------------------------------------------- review of the one-timer shell (stranded checks)

async def _slow_keepalive_server(delay: float) -> tuple[asyncio.Server, int, list[int]]:
    """Answers each request after `delay`, keeps the connection open forever."""
    opened: list[int] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        opened.append(1)
        try:
            while True:
                await r.readuntil(b"\r\n\r\n")
                await asyncio.sleep(delay)
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            opened.append(-1)
            w.transport.abort()

    srv = await asyncio.start_server(handle, LOOPBACK, 0)
    return srv, srv.sockets[0].getsockname()[1], opened


async def test_an_http_check_retargeted_to_tcp_mid_check_keeps_no_connection_alive() -> None:
    """The HTTP check in flight ends after the reload: its kept-alive connection must not stay open
    (TCP checks never use it)."""
    srv, port, opened = await _slow_keepalive_server(0.15)
    http = {"type": "http", "interval": 0.3, "timeout": 0.3, "rise": 1, "fall": 1, "jitter": 0}
    hs = HealthService([service(port, check=http)], log=Log(), on_change=lambda _e: None, rand=lambda: 0.0)
    hs.start()
    try:
        await until(lambda: sum(opened) == 1)  # the first HTTP check is in flight
        hs.update([service(port, check={**http, "type": "tcp"})])
        await until(lambda: hs.checks_run >= 4)  # the HTTP answer, then TCP checks
        assert hs._checker is not None
        assert hs._checker.idle == 0, "old HTTP connection still kept alive under a TCP check"
    finally:
        await hs.stop()
        srv.close()


async def test_a_failing_expiry_strands_no_check_of_the_same_tick() -> None:
    """One check's expiry raising must not leave it, or the other checks expired in the same tick, marked
    running and never checked again."""
    listeners = [socket.create_server((LOOPBACK, 0), backlog=16) for _ in range(2)]  # never accept/answer
    ports = [s.getsockname()[1] for s in listeners]
    chk = {"type": "http", "interval": 0.1, "timeout": 0.1, "rise": 1, "fall": 1, "jitter": 0}
    servers = [{"address": LOOPBACK, "port": p} for p in ports]
    results: list[tuple[Any, ProbeResult]] = []
    hs = HealthService([service(ports[0], check=chk, servers=servers)], log=Log(), on_change=lambda _e: None,
                       on_result=lambda k, r: results.append((k, r)), rand=lambda: 0.0)
    hs.start()
    try:
        checker = hs._checker
        assert checker is not None
        real = checker.expire
        calls = 0

        def expire_once_broken(key: Any, now: float) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("one-off bug in one check's expiry")
            real(key, now)

        checker.expire = expire_once_broken  # type: ignore[method-assign]
        await asyncio.sleep(1.0)
        keys = list(hs._loops)
        per_key = {k: sum(1 for kk, _ in results if kk == k) for k in keys}
        assert all(n >= 3 for n in per_key.values()), (per_key, [hs._schedule.is_running(k) for k in keys])
    finally:
        await hs.stop()
        for s in listeners:
            s.close()


async def test_a_long_start_is_not_taken_for_loop_lag() -> None:
    """start() spends time building loops (10,000 servers: ~0.15 s): the timer it arms counts from after
    that, so a dead server's timeouts are not set aside as overload for it."""
    listener = socket.create_server((LOOPBACK, 0), backlog=16)  # accepts (kernel) but never answers
    port = listener.getsockname()[1]
    chk = {"type": "http", "interval": 0.5, "timeout": 0.2, "rise": 1, "fall": 1, "jitter": 0}
    first = [True]

    def rand() -> float:
        if first[0]:  # stands for 10,000 servers' set-up work inside start()
            first[0] = False
            time.sleep(0.15)
        return 0.1

    events: list[HealthChanged] = []
    hs = HealthService([service(port, check=chk)], log=Log(), on_change=events.append, initial="up", rand=rand)
    hs.start()
    try:
        await until(lambda: hs.checks_run >= 1, timeout=2.0)
        assert hs.overload_checks == 0, f"false lag: {hs._lag.worst(0, asyncio.get_running_loop().time()):.3f}s"
    finally:
        await hs.stop()
        listener.close()
