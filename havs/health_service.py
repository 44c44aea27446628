"""The health-check shell: every real server's checks on one timer, feeding the pure hysteresis in
core.health.

`core.check_schedule.CheckSchedule` keeps the timetable; the shell sleeps on one timer until its next
wake-up, expires what passed its deadline and starts what is due. Plain HTTP and TCP checks run on the
raw-socket checker (edge/checker.py: no task, future, timer or transport per check; it says why), HTTPS
on the transport probe (edge/probe.py) as a task. Each result and the clock go to
`ServerHealth.observe`; a `HealthChanged` is reported (log line `health.change` + `on_change`); the next
check is planned by the core (`next_due`): the interval, fast while the server is changing state, with
jitter drawn here, counted from the end of the check (a slow server is checked less often).

Where a server starts (keepalived's `alpha` is the reference for the choice):
- at start (the constructor's services, or `update(..., at_start=True)`), as `initial` says: `up`
  (the default the daemon passes for `settings.initial_health: up`) keeps a restarted daemon from
  pulling healthy servers out of a live table, its first checks spread at random over one interval;
  `down` makes every server earn its place with `rise` passing checks, its first checks spread at random
  over the fast interval (so each server's first check comes within one fast interval of the start);
- added by a reload (`update(services)`, the default): down until `rise` passing checks, its first
  check sent at once. Nobody has checked it yet: it must not take clients before it has been.
Servers that a reload keeps keep their state, counts and timetable. `states()` reports a server that has
no verdict yet with `is_up` False when it starts down, so the desired table leaves it out.

Overload is not failure (a checker that competes for a slow CPU must not remove healthy servers):
- at most `max_in_flight` checks run at once; the rest queue, and a check's timeout starts when it leaves
  the queue;
- a deadline first reads what already arrived, so an answer left unread by a late loop passes;
- every wake-up of the timer records how late it fired (`LagWindow`); a check that timed out while the
  loop itself lagged past `overload.lag` is inconclusive (`health.overload`, `overload_checks`), at most
  `overload.max_consecutive` times in a row per server, so a server that really dies is still removed;
- the next check counts its interval from the end of the last one, so slow answers slow the checks down;
- first checks at start are spread over a window that grows with the number of servers
  (`FIRST_ROUND_RATE`), up to one interval.

Kept-alive connections stay open between checks (the checker's, and HTTPS's `ConnectionPool`). When a
server closes its idle connection (its web process died: the kernel closes the socket at once), the
shell checks it right away instead of at the end of its interval — at most once per interval, so a
server that closes idle connections by design (a keep-alive timeout shorter than the interval) costs one
extra check per interval, not a tight loop.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import math
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from havs.core.check_schedule import CheckSchedule
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
from havs.edge.checker import Checker, HttpCheck, TcpCheck
from havs.edge.probe import ConnectionPool, HttpProbe, probe_http

# first checks at start, per second at most (while that fits in one interval): no herd of connects
FIRST_ROUND_RATE = 1000.0
OVERLOAD_LOG_EVERY = 5.0  # seconds between health.overload lines: overload hits every server at once


def make_probe(target: Target, pool: ConnectionPool, loop: asyncio.AbstractEventLoop,
               checker: Checker) -> HttpCheck | TcpCheck | Callable[[], Awaitable[ProbeResult]]:
    """The check of one target: plain HTTP and TCP run by `checker` (raw sockets, edge/checker.py), HTTPS
    by the transport probe on `loop` with its kept-alive connection in `pool` (a check of type `none` has
    none)."""
    check = target.check
    source = str(check.source_address) if check.source_address else None
    if target.port == 0:
        async def no_port() -> ProbeResult:
            return ProbeResult(False, "error: no port to check (set check.connect_port)", 0.0)
        return no_port
    if check.type == "tcp":
        return TcpCheck(checker, target.key, target.address, target.port, check.timeout, source)
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
    if probe.tls:
        return functools.partial(probe_http, probe, pool, loop)
    return HttpCheck(checker, target.key, probe)


Probe = Callable[[], Awaitable[ProbeResult]]  # a coroutine probe: HTTPS, or a test's stand-in
FAST = (HttpCheck, TcpCheck)  # run by the Checker on the shell's one timer


class _Loop:
    """One real server: its state, its probe and the check in flight."""

    __slots__ = ("done", "early_at", "health", "probe", "started", "target", "task")

    def __init__(self, target: Target, health: ServerHealth, probe: HttpCheck | TcpCheck | Probe | None,
                 done: Callable[[ProbeResult, float], None] | None = None) -> None:
        self.target = target
        self.health = health
        self.probe = probe
        self.task: asyncio.Task[None] | None = None  # a coroutine probe's check in flight
        self.done = done  # the Checker's callback for this server's checks (made once, not per check)
        self.started = 0.0  # when it really started (out of the queue)
        self.early_at = -math.inf  # when the last early check was granted


class HealthService:
    """Runs the checks of every real server of `services`.

    `start()` (inside the running loop) schedules the checks; `update(services)` on reload keeps
    unchanged servers' state and timetable, re-targets changed checks without losing state, starts new
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
        max_in_flight: int = 64,
    ) -> None:
        self._log = log
        self._on_change = on_change
        self._on_agent_weight = on_agent_weight
        self._on_result = on_result  # every probe's result (metrics: latency histograms)
        self._initial: Initial = initial
        self._rand = rand
        self._pool = ConnectionPool(on_peer_close=self._pool_peer_closed)  # HTTPS's kept-alive connections
        self._checker: Checker | None = None  # plain HTTP and TCP checks (created on the running loop)
        self._schedule: CheckSchedule[Key] = CheckSchedule(max_in_flight)
        self._ev: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None  # the one timer: next start or deadline
        self._timer_at = math.inf
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
        self._gc_freeze = gc_freeze
        self._freeze_timer: asyncio.TimerHandle | None = None

    @property
    def max_in_flight(self) -> int:
        return self._schedule.max_in_flight

    # -- lifecycle

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._ev = ev = asyncio.get_running_loop()
        self._checker = Checker(ev, on_peer_close=self._peer_closed, on_error=self._check_error)
        now = ev.time()
        for key, target in self._targets.items():
            self._add(target, now, at_start=key not in self._added_by_reload)
        self._added_by_reload.clear()
        self._arm(ev.time())  # a fresh reading: building 10,000 loops takes long enough to look like lag
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
        assert self._ev is not None
        now = self._ev.time()
        for key in [k for k in self._loops if k not in targets]:
            self._remove(key)
        for key, target in targets.items():
            current = self._loops.get(key)
            if current is None:
                self._add(target, now, at_start=at_start)
            elif current.target != target:
                self._retarget(current, target, now)
        self._arm(self._ev.time())
        self._schedule_freeze()

    async def stop(self) -> None:
        self._running = False
        if self._freeze_timer is not None:
            self._freeze_timer.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf
        tasks = [loop.task for loop in self._loops.values() if loop.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for key in self._loops:
            self._schedule.drop(key)
        self._loops.clear()
        if self._checker is not None:
            self._checker.close()
            self._checker = None
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
        (connections, parsers, per-server state) out of the cyclic GC's generations: at 10,000 servers the
        full collections that rescan them cost ~30–50 µs per check. Unfreezing first lets cycles left
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

    def _probe_for(self, target: Target) -> HttpCheck | TcpCheck | Probe:
        assert self._checker is not None and self._ev is not None
        return make_probe(target, self._pool, self._ev, self._checker)

    def _add(self, target: Target, now: float, *, at_start: bool) -> None:
        initial = self._initial if at_start else "down"
        health = ServerHealth(target.server, Timing.of(target.check), service=target.service,
                              initial=initial, now=now)
        if target.check.type == "none":
            self._loops[target.key] = _Loop(target, health, None)
            self._observe(self._loops[target.key], ProbeResult(True, "no check", 0.0), now, force=True)
            return
        loop = _Loop(target, health, self._probe_for(target))
        loop.done = functools.partial(self._finished, loop)
        self._loops[target.key] = loop
        if not at_start:
            first = 0.0  # added by a reload: nobody has checked it, check it now
        elif initial == "down":
            # every server waits for this: keep it short, but no herd (FIRST_ROUND_RATE)
            spread = max(health.timing.fast_interval, len(self._targets) / FIRST_ROUND_RATE)
            first = self._rand() * min(spread, max(health.timing.interval, health.timing.fast_interval))
        else:
            first = self._rand() * health.timing.interval  # taken as up meanwhile: spread the load
        self._schedule.plan(target.key, now + first)

    def _remove(self, key: Key) -> None:
        loop = self._loops.pop(key)
        self._schedule.drop(key)
        self._stop_check(loop)
        self._drop_connection(loop)

    def _stop_check(self, loop: _Loop) -> None:
        if loop.task is not None:
            loop.task.cancel()
            loop.task = None
        if self._checker is not None:
            self._checker.cancel(loop.target.key)

    def _retarget(self, loop: _Loop, target: Target, now: float) -> None:
        """Same server, new check settings: keep the verdict, swap the probe. Switching checking on keeps
        the verdict too (a live server is not pulled while its first checks run) and checks at once."""
        was_none, is_none = loop.target.check.type == "none", target.check.type == "none"
        self._drop_connection(loop)
        loop.target = target
        loop.health.retime(Timing.of(target.check))
        if is_none:
            self._schedule.drop(target.key)
            self._stop_check(loop)
            loop.probe = None
            if not was_none:
                self._observe(loop, ProbeResult(True, "no check", 0.0), now, force=True)
            return
        loop.probe = self._probe_for(target)
        if loop.done is None:
            loop.done = functools.partial(self._finished, loop)
        if was_none:
            self._schedule.plan(target.key, now)

    def _drop_connection(self, loop: _Loop) -> None:
        """Close the kept-alive connection made with the old settings (a check in flight runs to its end)."""
        probe = loop.probe
        if isinstance(probe, functools.partial) and probe.args and isinstance(probe.args[0], HttpProbe):
            self._pool.discard(probe.args[0].key)
        elif self._checker is not None:
            self._checker.discard(loop.target.key)

    # -- the one timer

    def _arm(self, now: float) -> None:
        """Make sure the timer fires by the schedule's next wake-up (an earlier timer stays: it finds
        nothing due and re-arms; re-arming later would cost a clock read each time)."""
        at = self._schedule.next_wake()
        if at is None or at >= self._timer_at or not self._running:
            return
        if self._timer is not None:
            self._timer.cancel()
        assert self._ev is not None
        # a start planned in the past waited for a free slot: how long is the queue's age, not the loop's lag
        self._timer_at = at = max(at, now)
        self._timer = self._ev.call_later(at - now, self._tick)

    def _tick(self) -> None:
        """Expire what is past its deadline (after reading what already arrived), start what is due. The
        timer is re-armed whatever happens: it is every server's only clock."""
        assert self._ev is not None
        now = self._ev.time()
        self._lag.record(now, now - self._timer_at)  # how late this director's loop ran the timer
        self._timer, self._timer_at = None, math.inf
        schedule, checker = self._schedule, self._checker
        try:
            expired = schedule.expired(now)
            if expired and checker is not None:
                checker.poll(now)  # the last look: an answer that sat unread is read, not timed out
                for key in expired:
                    try:
                        checker.expire(key, now)
                    except Exception as exc:
                        self._abandon(key, now, exc)
            for key in schedule.due(now):
                try:
                    self._begin(key, now)
                except Exception as exc:
                    self._abandon(key, now, exc)
        except Exception as exc:
            self._log.error("health.schedule_error", error=repr(exc))
        finally:
            self._arm(now)

    def _abandon(self, key: Key, now: float, exc: Exception) -> None:
        """Whatever failed for this server's check, it is stopped and its next one planned: no server is
        left marked running, never to be checked again."""
        self._log.error("health.schedule_error", server=key[1], error=repr(exc))
        if self._checker is not None:
            self._checker.cancel(key)
        loop = self._loops.get(key)
        self._schedule.finished(key)
        if loop is not None and loop.probe is not None and self._schedule.planned(key) is None:
            self._schedule.plan(key, now + loop.health.timing.interval)

    def _begin(self, key: Key, now: float) -> None:
        loop = self._loops.get(key)
        probe = loop.probe if loop is not None else None
        if loop is None or probe is None:
            self._schedule.finished(key)
            return
        try:
            self._start(loop, probe, now)
        except Exception as exc:  # a check that cannot start is a failed check of this director, not a lost server
            self._log.error("health.probe_error", server=loop.target.server, error=repr(exc))
            if self._schedule.is_running(key) and not (self._checker and self._checker.running(key)):
                self._finished(loop, ProbeResult(False, f"error: {exc!r}", 0.0, inconclusive=True), now)

    def _start(self, loop: _Loop, probe: HttpCheck | TcpCheck | Probe, now: float) -> None:
        key = loop.target.key
        loop.started = now
        if isinstance(probe, FAST):
            self._schedule.begin(key, now + probe.timeout)
            assert loop.done is not None
            probe.start(now, loop.done)
        else:
            self._schedule.begin(key, None)  # it times itself
            assert self._ev is not None
            loop.task = self._ev.create_task(self._run_probe(loop, probe), name=f"health {loop.target.server}")

    async def _run_probe(self, loop: _Loop, probe: Probe) -> None:
        ev = self._ev
        assert ev is not None
        try:
            result = await probe()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a probe must not raise; if one does, it is a failed check, not a dead service
            self._log.error("health.probe_error", server=loop.target.server, error=repr(exc))
            result = ProbeResult(False, f"error: {exc!r}", ev.time() - loop.started)
        loop.task = None
        self._finished(loop, result, ev.time())

    def _finished(self, loop: _Loop, result: ProbeResult, now: float) -> None:
        key = loop.target.key
        if self._loops.get(key) is not loop:
            return  # removed while it ran
        schedule = self._schedule
        schedule.finished(key)
        self.checks_run += 1
        lag = 0.0
        if result.reason == "timeout" and self._overload is not None:
            # how late the deadline was acted on, and the worst lateness seen while the check ran
            late = result.latency - loop.target.check.timeout
            self._lag.record(now, late)
            lag = max(late, self._lag.worst(loop.started, now))
        try:
            self._observe(loop, result, now, lag=lag)
        except Exception as exc:  # whatever failed in there, this server's next check is still planned
            self._log.error("health.observe_error", server=loop.target.server, error=repr(exc))
        if self._checker is not None and not isinstance(loop.probe, HttpCheck):
            self._checker.discard(key)  # retargeted mid-check: the old HTTP connection is not kept
        if loop.probe is not None and schedule.planned(key) is None:
            # from the end of this check (core: next_due): a director that fell behind piles up no backlog
            first_round = min(len(self._targets) / FIRST_ROUND_RATE, loop.health.timing.interval)
            schedule.plan(key, loop.health.next_due(now, self._rand(), first_round))
        self._arm(now)

    def _peer_closed(self, key: Any) -> None:
        """A server closed our idle kept-alive connection: check it now, unless an early check was already
        granted within the last interval."""
        loop = self._loops.get(key)
        schedule = self._schedule
        if loop is None or loop.probe is None or schedule.is_running(key) or self._ev is None:
            return  # gone, or mid-check: the check in flight sees the close itself
        now = self._ev.time()
        if now - loop.early_at < loop.health.timing.interval:
            return
        loop.early_at = now
        self.early_checks += 1
        self._log.debug("health.early_check", server=loop.target.server, service=loop.target.service,
                        reason="idle connection closed by the server")
        schedule.plan(key, now)
        self._arm(now)

    def _pool_peer_closed(self, probe_key: tuple[Any, ...]) -> None:
        self._peer_closed(probe_key[-1])  # the HTTPS probe's tag is its target's key (make_probe)

    def _check_error(self, key: Any, exc: BaseException) -> None:
        self._log.error("health.check_error", server=key[1] if isinstance(key, tuple) else str(key),
                        error=repr(exc))

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
            try:
                self._on_result(loop.target.key, result)
            except Exception as exc:  # a metrics bug must not stop this server's checks
                self._log.error("health.callback_error", kind="ProbeResult", error=repr(exc))
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
