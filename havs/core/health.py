"""Health hysteresis and weight policy: pure decisions about real servers.

`ServerHealth` turns a stream of probe results into state changes with rise/fall counting, and says
when the next probe is due (the fast interval while a server is changing state). `effective_weight`
turns health, slow start, the agent's weight and maintenance into the weight IPVS should carry, and
`quorum_met` says whether a service still has enough healthy weight.

No clock and no randomness here: `now` (monotonic seconds) and the jitter fraction are arguments.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Literal

from havs.core.model import Check, VirtualService

State = Literal["unknown", "up", "down"]
Initial = Literal["down", "up"]


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe's outcome. `reason` is short and stable: ok, timeout, refused, reset, closed,
    unreachable, garbage, `status 503`, `body mismatch`, `tls: <detail>`, `error: <detail>`,
    `local: <detail>`.

    `inconclusive`: this director could not run the check (no file descriptor, no buffer memory): the
    result says nothing about the server, so it neither passes nor fails a check. Counting it as a
    failure is how ~20,000 idle control connections used to mark healthy servers down."""

    ok: bool
    reason: str
    latency: float = 0.0
    agent_weight: float | None = None  # 0..1 from the agent header, None when absent
    inconclusive: bool = False


@dataclass(frozen=True, slots=True)
class HealthChanged:
    """A real server changed state after `after` consecutive agreeing results."""

    server: str  # "192.168.72.128:80"
    from_: State
    to: State
    reason: str  # the reason of the result that tipped it
    after: int
    latency: float
    service: str = ""  # "TCP 192.168.0.108:80"
    at: float = 0.0  # monotonic time of the change (slow start counts from here)


@dataclass(frozen=True, slots=True)
class AgentWeightChanged:
    """The agent header's fraction changed (None: the header disappeared)."""

    server: str
    service: str
    fraction: float | None
    at: float


def server_name(address: IPv4Address | IPv6Address | str, port: int) -> str:
    """A real server as ipvsadm writes it: 192.168.72.128:80, [2001:db8::1]:80."""
    text = str(address)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


@dataclass(frozen=True, slots=True)
class Timing:
    """The parts of a check the hysteresis needs."""

    rise: int = 2
    fall: int = 2
    interval: float = 1.0
    fast_interval: float = 0.2
    jitter: float = 0.1

    @classmethod
    def of(cls, check: Check) -> Timing:
        return cls(check.rise, check.fall, check.interval, check.effective_fast_interval, check.jitter)


class ServerHealth:
    """Rise/fall hysteresis for one real server.

    States: `unknown` (no verdict yet; treated as `initial`), `up`, `down`. From `unknown`, `rise`
    consecutive successes make it up and `fall` consecutive failures make it down. From `up`, `fall`
    consecutive failures make it down; from `down`, `rise` consecutive successes make it up. A result
    that agrees with the current state resets the count.
    """

    __slots__ = ("_fails", "_oks", "agent_weight", "initial", "last", "overload_skips", "server", "service", "since",
                 "state", "timing")

    def __init__(
        self,
        server: str,
        timing: Timing,
        *,
        service: str = "",
        initial: Initial = "down",
        now: float = 0.0,
    ) -> None:
        self.server = server
        self.service = service
        self.timing = timing
        self.initial: Initial = initial
        self.state: State = "unknown"
        self.since = now
        self.last: ProbeResult | None = None
        self.agent_weight: float | None = None
        self._oks = 0  # consecutive successes
        self._fails = 0  # consecutive failures
        self.overload_skips = 0  # consecutive timeouts set aside as inconclusive (overload_verdict)

    @property
    def is_up(self) -> bool:
        """Whether traffic may go to the server now (`unknown` counts as `initial`)."""
        return self.state == "up" or (self.state == "unknown" and self.initial == "up")

    @property
    def changing(self) -> bool:
        """A verdict is pending: results disagree with the state, or there is no state yet."""
        if self.state == "unknown":
            return True
        return self._fails > 0 if self.state == "up" else self._oks > 0

    def observe(self, result: ProbeResult, now: float, *, lag: float = 0.0,
                overload: Overload | None = None) -> HealthChanged | None:
        """One result. `lag`: the worst lateness of the shell's loop while the check ran; with an
        `overload` policy a timeout under such lag is inconclusive (`last.reason` starts `overload:`)."""
        if overload is not None:
            set_aside = overload_verdict(result, lag, overload, self.overload_skips)
            if set_aside is not None:
                self.overload_skips += 1
                result = set_aside
            elif result.ok:
                self.overload_skips = 0  # failures do not reset it: a dead server's timeouts must add up
        self.last = result
        if result.inconclusive:
            return None  # counts, state and agent weight stand until a check can actually run
        self.agent_weight = result.agent_weight if result.ok else None
        if result.ok:
            self._oks += 1
            self._fails = 0
            if self.state != "up" and self._oks >= self.timing.rise:
                return self._become("up", result, self._oks, now)
        else:
            self._fails += 1
            self._oks = 0
            if self.state != "down" and self._fails >= self.timing.fall:
                return self._become("down", result, self._fails, now)
        return None

    def _become(self, to: State, result: ProbeResult, after: int, now: float) -> HealthChanged:
        change = HealthChanged(
            server=self.server, from_=self.state, to=to, reason=result.reason, after=after,
            latency=result.latency, service=self.service, at=now,
        )
        self.state = to
        self.since = now
        return change

    def retime(self, timing: Timing) -> None:
        """A reload changed the check's numbers: keep state and counts (a count already past the new
        threshold tips on the next agreeing result)."""
        self.timing = timing

    def next_interval(self, fraction: float = 0.5) -> float:
        """Seconds until the next probe: the fast interval while changing state, else the interval;
        spread by ±jitter. `fraction` in [0, 1) comes from the shell's random source (0.5 = none)."""
        base = self.timing.fast_interval if self.changing else self.timing.interval
        return base * (1.0 + self.timing.jitter * (2.0 * fraction - 1.0))

    def next_due(self, now: float, fraction: float = 0.5, first_round: float = 0.0) -> float:
        """When the next check starts, after one that ended at `now` (its result observed): the interval
        (fast while changing) counted from the end of this check, as keepalived's delay_loop is. So a
        server that answers slowly is checked less often (the period is the interval plus its answer
        time) instead of being sent new connections at the full rate until its answers pass the timeout:
        measured in the UML soak, counting from when each check was due let a cheap checker overrun the
        one web process serving every port, and every check timed out for a minute. For a server that
        answers in milliseconds the difference is that many milliseconds per interval.
        `first_round`: while the server has no verdict yet, its checks are at least this far apart (the
        shell's start-up spread: N servers' rise checks at the fast interval would be a herd)."""
        gap = self.next_interval(fraction)
        if self.state == "unknown" and first_round > gap:
            gap = first_round
        return now + gap


# ---------------------------------------------------------------------------------------------- overload


@dataclass(frozen=True, slots=True)
class Overload:
    """When a timed-out check says nothing about the server: this director's event loop was itself at
    least `lag` seconds late while the check ran (its answer may have sat unread in a socket buffer).
    Such a timeout is inconclusive, at most `max_consecutive` times in a row per server: a server that
    really died during a long overload is still failed, `max_consecutive` checks later than usual."""

    lag: float = 0.1
    max_consecutive: int = 3


def overload_verdict(result: ProbeResult, lag: float, policy: Overload, skipped: int) -> ProbeResult | None:
    """The inconclusive result replacing a timeout taken while the loop lagged `lag` seconds, or None when
    `result` stands (not a timeout, lag under the threshold, or `skipped` consecutive ones already)."""
    if result.ok or result.inconclusive or result.reason != "timeout":
        return None
    if lag < policy.lag or skipped >= policy.max_consecutive:
        return None
    return ProbeResult(False, f"overload: timeout while the director's loop lagged {lag * 1000:.0f} ms",
                       result.latency, inconclusive=True)


class LagWindow:
    """The worst event-loop lateness seen recently, in `bucket`-second slots over `horizon` seconds:
    `record(now, late)` is O(1) (called on every timer the shell wakes from), `worst(since, now)` scans
    only the slots of one check's lifetime."""

    __slots__ = ("_bucket", "_slots", "_stamp")

    def __init__(self, bucket: float = 0.1, horizon: float = 12.8) -> None:
        self._bucket = bucket
        n = max(1, math.ceil(horizon / bucket))
        self._slots = [0.0] * n
        self._stamp = [-1] * n  # which absolute slot number each entry holds (stale entries are ignored)

    def record(self, now: float, late: float) -> None:
        k = int(now // self._bucket)
        i = k % len(self._slots)
        if self._stamp[i] != k:
            self._stamp[i], self._slots[i] = k, late
        elif late > self._slots[i]:
            self._slots[i] = late

    def worst(self, since: float, now: float) -> float:
        first, last = int(since // self._bucket), int(now // self._bucket)
        first = max(first, last - len(self._slots) + 1)
        worst = 0.0
        n = len(self._slots)
        for k in range(first, last + 1):
            i = k % n
            if self._stamp[i] == k and self._slots[i] > worst:
                worst = self._slots[i]
        return worst


# ---------------------------------------------------------------------------------------------- weights


@dataclass(frozen=True, slots=True)
class WeightPlan:
    """Everything that decides one real server's IPVS weight, as of a moment.

    `weight(now)`: None = not in the table (down with on_down=remove), 0 = present but takes no new
    connections (down with inhibit, drained, agent 0%), else 1..65535.
    """

    configured: int
    up: bool
    since_up: float  # when it last became up (ignored while down)
    slow_start: float = 0.0
    agent_fraction: float | None = None
    drained: bool = False
    on_down: Literal["remove", "inhibit"] = "remove"

    def weight(self, now: float) -> int | None:
        return effective_weight(
            self.configured, self.up, self.since_up, now, self.slow_start, self.agent_fraction, self.drained,
            on_down=self.on_down,
        )

    def next_change(self, now: float) -> float | None:
        """When the weight next needs re-evaluating (the slow-start ramp), or None if it is settled."""
        if not self.up or self.drained or self.slow_start <= 0:
            return None
        end = self.since_up + self.slow_start
        if now >= end:
            return None
        target = self.weight(end) or 0
        if target <= 1:
            return None
        # the ramp moves one unit every slow_start/(target-1) seconds; wake at the next step, not later
        step = self.slow_start / (target - 1)
        elapsed = max(0.0, now - self.since_up)
        return min(end, self.since_up + (math.floor(elapsed / step + 1e-9) + 1) * step)


def effective_weight(
    configured: int,
    up: bool | str,
    since_up: float,
    now: float,
    slow_start: float = 0.0,
    agent_fraction: float | None = None,
    drained: bool = False,
    *,
    on_down: Literal["remove", "inhibit"] = "remove",
) -> int | None:
    """The IPVS weight of one real server. `up` is a bool or a state name ("up" is up; "unknown"
    and "down" are not: pass `ServerHealth.is_up` to honour `initial="up"`)."""
    is_up = up if isinstance(up, bool) else up == "up"
    if not is_up:
        return None if on_down == "remove" else 0
    if drained:
        return 0
    weight = configured
    if agent_fraction is not None:
        weight = round(configured * min(1.0, max(0.0, agent_fraction)))
    if weight <= 0:
        return 0
    if slow_start > 0:
        elapsed = now - since_up
        if elapsed < slow_start:
            # linear ramp from 1 at the moment it came up to the full weight at slow_start
            # (the epsilon keeps a step exactly at next_change() from rounding down to the previous one)
            weight = 1 + math.floor((weight - 1) * max(0.0, elapsed) / slow_start + 1e-9)
    return min(weight, 65535)


def quorum_met(service: VirtualService, weights: Mapping[object, int | None] | Iterable[int | None]) -> bool:
    """Whether the service's healthy weight reaches its quorum (always true without a quorum).
    `weights`: the effective weights of its real servers (a mapping's values, or an iterable)."""
    if service.quorum is None:
        return True
    values = weights.values() if isinstance(weights, Mapping) else weights
    return sum(w for w in values if w) >= service.quorum.min_weight
