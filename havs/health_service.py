"""The health-check shell: one probe loop per real server, feeding the pure hysteresis in core.health.

Each loop probes, hands the result and the loop's clock to `ServerHealth.observe`, reports a
`HealthChanged` (log line `health.change` + `on_change`), and sleeps until the next check — the fast
interval while the server is changing state, with jitter drawn here and passed to the core.

Where a server starts (keepalived's `alpha` is the reference for the choice):
- at start (the constructor's services, or `update(..., at_start=True)`), as `initial` says: `up`
  (the default the daemon passes for `settings.initial_health: up`) keeps a restarted daemon from
  pulling healthy servers out of a live table, its first checks spread at random over one interval;
  `down` makes every server earn its place with `rise` passing checks, its first checks spread at random
  over the fast interval (so each server's first check comes within one fast interval of the start);
- added by a reload (`update(services)`, the default): down until `rise` passing checks, its first
  check sent at once. Nobody has checked it yet: it must not take clients before it has been.
Servers that a reload keeps keep their state, counts and timers. `states()` reports a server that has
no verdict yet with `is_up` False when it starts down, so the desired table leaves it out.

Overload is not failure (a checker that competes for a slow CPU must not remove healthy servers):
- at most `max_in_flight` checks run at once; the rest queue, and a check's timeout starts when it leaves
  the queue (the probe measures from its connect or request write, never from when it was due);
- every timer a loop wakes from records how late it fired (`LagWindow`); a check that timed out while the
  loop itself lagged past `overload.lag` is inconclusive (`health.overload`, `overload_checks`), at most
  `overload.max_consecutive` times in a row per server, so a server that really dies is still removed;
- first checks at start are spread over a window that grows with the number of servers
  (`FIRST_ROUND_RATE`), up to one interval.

Kept-alive HTTP connections live in one `ConnectionPool` shared by all loops. When a server closes
its idle connection (its web process died: the kernel closes the socket at once), the pool says so
and that server's loop checks it right away instead of at the end of its interval — at most once per
interval, so a server that closes idle connections by design (a keep-alive timeout shorter than the
interval) costs one extra check per interval, not a tight loop.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import math
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from havs.core.health import (
    AgentWeightChanged,
    HealthChanged,
    Initial,
    LagWindow,
    Overload,
    ProbeResult,
    ServerHealth,
    Timing,
)
from havs.core.health_target import Key as Key
from havs.core.health_target import Target as Target
from havs.core.health_target import ok_codes
from havs.core.model import VirtualService
from havs.edge.probe import ConnectionPool, HttpProbe, probe_http, probe_tcp

# first checks at start, per second at most (while that fits in one interval): no herd of connects
FIRST_ROUND_RATE = 1000.0
OVERLOAD_LOG_EVERY = 5.0  # seconds between health.overload lines: overload hits every server at once


def make_probe(target: Target, pool: ConnectionPool,
               loop: asyncio.AbstractEventLoop | None = None) -> Callable[[], Awaitable[ProbeResult]]:
    """The probe coroutine factory for one target (a check of type `none` has none). `loop`: the loop the
    probes will run on, handed to them so that no check looks it up (edge/probe.py says why)."""
    check = target.check
    source = str(check.source_address) if check.source_address else None
    if target.port == 0:
        async def no_port() -> ProbeResult:
            return ProbeResult(False, "error: no port to check (set check.connect_port)", 0.0)
        return no_port
    if check.type == "tcp":
        return functools.partial(probe_tcp, target.address, target.port, timeout=check.timeout,
                                 source_address=source, loop=loop)
    probe = HttpProbe(
        target.address,
        target.port,
        timeout=check.timeout,
        tls=check.type == "https",
        method=check.method,
        path=check.path,
        host=check.host,
        ok_status=ok_codes(tuple(str(s) for s in check.expect_status)),
        expect_body=check.expect_body,
        max_body=check.max_body,
        verify_tls=check.verify_tls,
        sni=check.sni,
        agent_header=check.agent_weight_header,
        source_address=source,
        tag=target.key,  # one kept-alive connection per (service, server), even with a shared connect_address
    )
    return functools.partial(probe_http, probe, pool, loop)


class _Loop:
    """One real server's state, probe and task."""

    __slots__ = ("early_at", "health", "probe", "target", "task", "wake")

    def __init__(self, target: Target, health: ServerHealth, probe: Callable[[], Awaitable[ProbeResult]] | None):
        self.target = target
        self.health = health
        self.probe = probe
        self.task: asyncio.Task[None] | None = None
        self.wake: asyncio.Future[None] | None = None  # set while the loop sleeps between checks
        self.early_at = -math.inf  # when the last early check was granted


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class HealthService:
    """Runs the checks of every real server of `services`.

    `start()` (inside the running loop) launches the probe loops; `update(services)` on reload keeps
    unchanged servers' state and timers, re-targets changed checks without losing state, starts new
    servers (down until `rise` passes, checked at once) and stops removed ones; `stop()` cancels
    everything and closes kept-alive connections. `initial` is the start policy (module docstring).
    Real servers whose check type is `none` are reported up at once (reason `no check`).
    """

    def __init__(
        self,
        services: Iterable[VirtualService],
        *,
        log: Any,
        on_change: Callable[[HealthChanged], None],
        on_agent_weight: Callable[[AgentWeightChanged], None] | None = None,
        on_result: Callable[[Key, ProbeResult], None] | None = None,
        initial: Initial = "down",
        rand: Callable[[], float] = random.random,
        gc_freeze: bool = True,
        overload: Overload | None = Overload(),  # noqa: B008 (frozen, shared safely)
        max_in_flight: int = 256,
    ) -> None:
        self._log = log
        self._on_change = on_change
        self._on_agent_weight = on_agent_weight
        self._on_result = on_result  # every probe's result (metrics: latency histograms)
        self._initial: Initial = initial
        self._rand = rand
        self._pool = ConnectionPool(on_peer_close=self._peer_closed)
        self._loops: dict[Key, _Loop] = {}
        self._running = False
        self._targets = self._collect(services)
        self._added_by_reload: set[Key] = set()  # known before start() but added by a reload: start down
        self.checks_run = 0  # probes completed, for metrics and the benchmark
        self.early_checks = 0  # checks brought forward because a server closed its idle connection
        self.inconclusive_checks = 0  # checks this director could not run (out of descriptors, memory)
        self.overload_checks = 0  # timeouts set aside because this director's loop lagged (export as a counter)
        self._local_logged_at = -math.inf
        self._overload_logged_at = -math.inf
        self._overload = overload
        self._lag = LagWindow()
        self.max_in_flight = max_in_flight
        self._slots: asyncio.Semaphore | None = None  # created on the running loop (start)
        self._gc_freeze = gc_freeze
        self._freeze_timer: asyncio.TimerHandle | None = None

    # -- lifecycle

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._slots = asyncio.Semaphore(self.max_in_flight)
        for key, target in self._targets.items():
            self._add(target, at_start=key not in self._added_by_reload)
        self._added_by_reload.clear()
        self._schedule_freeze()

    def update(self, services: Iterable[VirtualService], *, at_start: bool = False) -> None:
        """The new set of services. By default a reload: servers not checked before start down and are
        checked at once. `at_start=True`: servers new to this call follow the start policy (`initial`)."""
        before = self._targets
        self._targets = targets = self._collect(services)
        if not self._running:
            new = targets.keys() - before.keys()
            if at_start:
                self._added_by_reload -= new
            else:
                self._added_by_reload |= new
            self._added_by_reload &= targets.keys()
            return
        for key in [k for k in self._loops if k not in targets]:
            self._remove(key)
        for key, target in targets.items():
            current = self._loops.get(key)
            if current is None:
                self._add(target, at_start=at_start)
            elif current.target != target:
                self._retarget(current, target)
        self._schedule_freeze()

    async def stop(self) -> None:
        self._running = False
        if self._freeze_timer is not None:
            self._freeze_timer.cancel()
        tasks = [loop.task for loop in self._loops.values() if loop.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loops.clear()
        self._pool.close()

    # -- queries

    def states(self) -> Mapping[Key, ServerHealth]:
        """(service, server) → its hysteresis, for the desired-table builder (`.is_up`, `.since`,
        `.agent_weight`)."""
        if self._running:
            return {key: loop.health for key, loop in self._loops.items()}
        # not started: what start() will begin with, so a caller never mistakes "no loop yet" for up
        return {key: ServerHealth(t.server, Timing.of(t.check), service=t.service,
                                  initial="down" if key in self._added_by_reload else self._initial)
                for key, t in self._targets.items()}

    def snapshot(self) -> dict[str, dict[str, dict[str, Any]]]:
        """service → server → state, last reason, latency, since (monotonic), agent weight, check type."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for (service, server), loop in sorted(self._loops.items()):
            h = loop.health
            last = h.last
            out.setdefault(service, {})[server] = {
                "state": h.state,
                "up": h.is_up,
                "reason": last.reason if last else None,
                "latency_ms": round(last.latency * 1000, 3) if last else None,
                "since": h.since,
                "agent_weight": h.agent_weight,
                "check": loop.target.check.type,
            }
        return out

    # -- internals

    def _schedule_freeze(self) -> None:
        """Once the first round of checks has opened its connections, move the long-lived objects
        (tasks, connections, parsers) out of the cyclic GC's generations: at 10,000 servers the full
        collections that rescan them cost ~30–50 µs per check. Unfreezing first lets cycles left
        over from a previous config be collected."""
        if not self._gc_freeze or not self._loops:
            return
        if self._freeze_timer is not None:
            self._freeze_timer.cancel()
        longest = max(loop.target.check.interval for loop in self._loops.values())
        self._freeze_timer = asyncio.get_running_loop().call_later(longest * 1.5, self._freeze)

    def _freeze(self) -> None:
        self._freeze_timer = None
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self._log.debug("health.gc_freeze", objects=gc.get_freeze_count())

    @staticmethod
    def _collect(services: Iterable[VirtualService]) -> dict[Key, Target]:
        targets: dict[Key, Target] = {}
        for vs in services:
            for rs in vs.real_servers:
                target = Target.of(vs, rs)
                targets[target.key] = target
        return targets

    def _add(self, target: Target, *, at_start: bool) -> None:
        now = asyncio.get_running_loop().time()
        initial = self._initial if at_start else "down"
        health = ServerHealth(target.server, Timing.of(target.check), service=target.service,
                              initial=initial, now=now)
        if target.check.type == "none":
            self._loops[target.key] = _Loop(target, health, None)
            self._observe(self._loops[target.key], ProbeResult(True, "no check", 0.0), now, force=True)
            return
        loop = _Loop(target, health, make_probe(target, self._pool, asyncio.get_running_loop()))
        self._loops[target.key] = loop
        if not at_start:
            first = 0.0  # added by a reload: nobody has checked it, check it now
        elif initial == "down":
            # every server waits for this: keep it short, but no herd (FIRST_ROUND_RATE)
            spread = max(health.timing.fast_interval, len(self._targets) / FIRST_ROUND_RATE)
            first = self._rand() * min(spread, max(health.timing.interval, health.timing.fast_interval))
        else:
            first = self._rand() * health.timing.interval  # taken as up meanwhile: spread the load
        self._start_task(loop, first)

    def _start_task(self, loop: _Loop, first: float) -> None:
        loop.task = asyncio.get_running_loop().create_task(self._run(loop, first),
                                                           name=f"health {loop.target.server}")

    def _remove(self, key: Key) -> None:
        loop = self._loops.pop(key)
        if loop.task is not None:
            loop.task.cancel()
        self._drop_connection(loop.probe)

    def _retarget(self, loop: _Loop, target: Target) -> None:
        """Same server, new check settings: keep the verdict, swap the probe. Switching checking on keeps
        the verdict too (a live server is not pulled while its first checks run) and checks at once."""
        was_none, is_none = loop.target.check.type == "none", target.check.type == "none"
        self._drop_connection(loop.probe)
        loop.target = target
        loop.health.retime(Timing.of(target.check))
        if is_none:
            if loop.task is not None:
                loop.task.cancel()
                loop.task = None
            loop.probe = None
            if not was_none:
                now = asyncio.get_running_loop().time()
                self._observe(loop, ProbeResult(True, "no check", 0.0), now, force=True)
            return
        loop.probe = make_probe(target, self._pool, asyncio.get_running_loop())
        if was_none:
            self._start_task(loop, 0.0)

    def _drop_connection(self, probe: Callable[[], Awaitable[ProbeResult]] | None) -> None:
        if isinstance(probe, functools.partial) and probe.args and isinstance(probe.args[0], HttpProbe):
            self._pool.discard(probe.args[0].key)

    async def _run(self, loop: _Loop, first: float) -> None:
        # clock reads are few on purpose: where a syscall is dear (one slow CPU, no vDSO under UML),
        # each is a measurable share of a check (bench_load prints syscalls per check)
        ev = asyncio.get_running_loop()
        slots = self._slots
        assert slots is not None
        now = ev.time()
        due = now + first
        while True:
            woke = await self._sleep(ev, loop, due, now)
            waited = slots.locked()
            async with slots:  # queued, not timing: the probe's clock starts when it runs
                started = ev.time() if waited else woke
                probe = loop.probe
                assert probe is not None
                try:
                    result = await probe()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a probe must not raise; if one does, it is a failed check, not a dead loop
                    self._log.error("health.probe_error", server=loop.target.server, error=repr(exc))
                    result = ProbeResult(False, f"error: {exc!r}", ev.time() - started)
            self.checks_run += 1
            now = ev.time()
            lag = 0.0
            if result.reason == "timeout" and self._overload is not None:
                # how late the timeout's own timer ran, and the worst lateness seen while the check ran
                late = result.latency - loop.target.check.timeout
                self._lag.record(now, late)
                lag = max(late, self._lag.worst(started, now))
            self._observe(loop, result, now, lag=lag)
            # the next check counts from when this one was due (no drift), or from an early wake-up; never
            # from the past: a director that fell behind (checks queued on a busy CPU) does not pile up a
            # backlog, and its timers' lateness stays the loop's own lag, not the backlog's age
            due = max(min(due, woke) + loop.health.next_interval(self._rand()), now)

    async def _sleep(self, ev: asyncio.AbstractEventLoop, loop: _Loop, when: float, now: float) -> float:
        """Sleep until `when` (`now`: the clock just read), unless `_peer_closed` cuts it short (same cost
        as `asyncio.sleep`: one future, one timer; `call_later`, as uvloop's `call_at` reads the clock
        again). Returns the time it woke; how late that was is the loop's lag (`LagWindow`)."""
        loop.wake = wake = ev.create_future()
        timer = ev.call_later(when - now, _wake, wake)
        try:
            await wake
        finally:
            loop.wake = None
            timer.cancel()
        now = ev.time()
        self._lag.record(now, now - when)
        return now

    def _peer_closed(self, probe_key: tuple[Any, ...]) -> None:
        """The pool saw a server close our idle connection: check it now, unless an early check was
        already granted within the last interval."""
        loop = self._loops.get(probe_key[-1])  # the probe's tag is its target's key (make_probe)
        if loop is None or loop.wake is None or loop.wake.done():
            return  # gone, or mid-check: the check in flight sees the close itself
        now = loop.wake.get_loop().time()
        if now - loop.early_at < loop.health.timing.interval:
            return
        loop.early_at = now
        self.early_checks += 1
        self._log.debug("health.early_check", server=loop.target.server, service=loop.target.service,
                        reason="idle connection closed by the server")
        loop.wake.set_result(None)

    def _observe(self, loop: _Loop, result: ProbeResult, now: float, force: bool = False, lag: float = 0.0) -> None:
        h = loop.health
        agent_before = h.agent_weight
        if force:  # `none` checks: up at once
            h.retime(Timing(rise=1, fall=h.timing.fall))
        change = h.observe(result, now, lag=lag, overload=self._overload)
        if h.last is not result:  # the core set a timeout aside: this director's loop was late, not the server
            self.overload_checks += 1
            if now - self._overload_logged_at >= OVERLOAD_LOG_EVERY:
                self._overload_logged_at = now
                self._log.warning("health.overload", server=h.server, service=h.service, lag_ms=round(lag * 1000, 1),
                                  latency_ms=round(result.latency * 1000, 1), overload_checks=self.overload_checks,
                                  consecutive=h.overload_skips)
        elif result.inconclusive:
            self.inconclusive_checks += 1
            if now - self._local_logged_at >= 10.0:  # a shortage hits every server: say it, not 10,000 times
                self._local_logged_at = now
                self._log.warning("health.local_error", server=h.server, service=h.service, reason=result.reason,
                                  inconclusive_checks=self.inconclusive_checks)
        if self._on_result is not None:
            self._on_result(loop.target.key, result)
        if change is not None:
            self._log.info(
                "health.change", server=change.server, service=change.service, from_=change.from_,
                to=change.to, reason=change.reason, after=change.after,
                latency_ms=round(change.latency * 1000, 1),
            )
            self._notify(self._on_change, change)
        if h.agent_weight != agent_before and self._on_agent_weight is not None:
            self._log.info("health.agent_weight", server=h.server, service=h.service, weight=h.agent_weight)
            self._notify(self._on_agent_weight, AgentWeightChanged(h.server, h.service, h.agent_weight, now))

    def _notify(self, callback: Callable[[Any], None], event: object) -> None:
        # a failing subscriber must not stop the probe loop that called it
        try:
            callback(event)
        except Exception as exc:
            self._log.error("health.callback_error", kind=type(event).__name__, error=repr(exc))
