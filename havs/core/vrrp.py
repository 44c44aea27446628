"""The VRRP state machine of one virtual router (RFC 5798 / RFC 9568; RFC 3768 for v2).

Pure: the caller passes `now` (monotonic seconds) and performs the returned actions. One instance carries
every floating address (the VIP and the real servers' gateway move together). Timers are deadlines;
`get_timer()` is the earliest, `handle_timer(now)` fires whatever is due.

Every input goes through `_input(input, ...)`, which looks `(state, input)` up in `TABLE`; an input with
no entry is a counted no-op returned as `Ignored`. Every state change goes through `_transition`, checked
against `MOVES`, which emits the exit and entry actions, so what happens on becoming MASTER is written once.
`_announce` is the one place that asks for gratuitous ARP.

Hardening (why each rule):
- A master answers a lower-priority advert (RFC 9568) and re-announces its addresses, but at most once
  per advert interval per sender and `ANSWERS_PER_INTERVAL` in all: a flood of forged adverts must not
  turn into a flood of adverts and ARP rounds that starve the heartbeat.
- Priority 0 (a resignation) counts only from the master this backup follows; from anyone else it is a
  counted drop. It does not start the takeover at once: the backup waits until the master's next advert
  is overdue (`last advert + interval + tolerance`) and then its skew. A real resignation is followed by
  silence, so the backup takes over; a forged one is contradicted by the live master's next advert, which
  cancels it — a rhythm of forged priority-0 packets can no longer flap the pair. A resigning havs keeps
  its addresses until the successor is heard (RESIGNING), so the extra wait costs no traffic.
- Stale addresses: entering BACKUP, FAULT or INIT (and every `STALE_CHECK_INTERVALS` adverts in BACKUP)
  asks the shell to remove any floating address still on an interface (a kill -9 leaves them behind).
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from havs.core import wire
from havs.core.wire import Advertisement, IPAddress
from havs.errors import PacketError


class State(StrEnum):
    INIT = "INIT"
    BACKUP = "BACKUP"
    MASTER = "MASTER"
    FAULT = "FAULT"
    RESIGNING = "RESIGNING"  # sent priority 0, still holds the addresses until the successor is heard


INIT, BACKUP, MASTER, FAULT, RESIGNING = State.INIT, State.BACKUP, State.MASTER, State.FAULT, State.RESIGNING


class Input(StrEnum):
    START = "start"
    STOP = "stop"  # graceful: resign and hand over
    SHUTDOWN = "shutdown"  # resign and release at once
    FAULT = "fault"
    RECOVER = "recover"
    ADVERT = "advert"
    MASTER_DOWN = "master_down"
    ADVER = "adver"
    GARP = "garp"
    RELEASE = "release"  # the resigning master's wait is over
    STALE_CHECK = "stale_check"


# The moves that may happen; anything else is a bug in this module and raises.
MOVES: frozenset[tuple[State, State]] = frozenset({
    (INIT, BACKUP), (INIT, MASTER), (INIT, FAULT),
    (BACKUP, MASTER), (BACKUP, FAULT), (BACKUP, INIT),
    (MASTER, BACKUP), (MASTER, FAULT), (MASTER, INIT), (MASTER, RESIGNING),
    (RESIGNING, INIT),
    (FAULT, BACKUP), (FAULT, MASTER), (FAULT, INIT),
})

ANSWERS_PER_INTERVAL = 4  # answers to lower-priority adverts, all senders together, per advert interval
STALE_CHECK_INTERVALS = 5  # a BACKUP looks for stale addresses every this many advert intervals
RESIGN_EXTRA = 0.5  # a resigning master waits 3 intervals + this for a successor, then releases anyway


@dataclass(frozen=True)
class VrrpParams:
    router_id: int
    priority: int
    advert_interval: float  # seconds; v3 centisecond resolution, v2 whole seconds
    primary_address: IPAddress  # our advert source: the tie-breaker at equal priority
    addresses: tuple[IPAddress, ...]
    version: int = 3
    preempt: bool = True
    preempt_delay: float = 0.0
    auth_pass: str | None = None
    garp_refresh: float = 0.0  # re-announce every N s while MASTER; 0 = off
    garp_burst_interval: float = 0.0  # a resigning master lingers this long after the successor is heard
    # RFC 9568 change 5 (keepalived default): a master that hears a lower priority answers at once.
    lower_priority_advert: bool = True
    # keepalived `higher_prio_send_advert`: a master stepping down for a higher priority advertises once
    # more, so the winner hears a lower priority and re-announces its addresses. Without it a split brain
    # can heal with the winner's advert arriving first and hosts keep the loser's MAC until ARP times out.
    higher_priority_advert: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.priority <= 255:
            raise ValueError(f"priority {self.priority} not in 1..255")
        if not 1 <= self.router_id <= 255:
            raise ValueError(f"router_id {self.router_id} not in 1..255")
        if self.version not in (2, 3) or self.advert_interval <= 0:
            raise ValueError("version 2 or 3, advert_interval > 0")


# ------------------------------------------------------------------------------------------ actions


@dataclass(frozen=True)
class SendAdvertisement:
    adv: Advertisement


@dataclass(frozen=True)
class StateChanged:
    from_: State
    to: State
    reason: str


@dataclass(frozen=True)
class TakeAddresses:
    addresses: tuple[IPAddress, ...]


@dataclass(frozen=True)
class ReleaseAddresses:
    """Remove the addresses. reason "stale": only those still present, and say so only if any were."""

    addresses: tuple[IPAddress, ...]
    reason: str = "state"


@dataclass(frozen=True)
class AnnounceAddresses:
    """Gratuitous ARP for every floating address: a burst on takeover, a single round otherwise."""

    burst: bool
    reason: str


@dataclass(frozen=True)
class AdvertDropped:
    reason: str
    src: IPAddress


@dataclass(frozen=True)
class Ignored:
    """An input with no entry in TABLE for the current state: counted, changes nothing."""

    state: State
    input: Input


@dataclass(frozen=True)
class Handover:
    """A resigning master's wait ended: "peer took over" or "no peer heard"."""

    outcome: str
    waited: float


Action = (SendAdvertisement | StateChanged | TakeAddresses | ReleaseAddresses | AnnounceAddresses | AdvertDropped
          | Ignored | Handover)


@dataclass
class _Timers:
    master_down: float | None = None
    adver: float | None = None
    garp: float | None = None
    release: float | None = None
    stale: float | None = None


@dataclass
class Counters:
    adverts_sent: int = 0
    adverts_received: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    ignored: Counter[str] = field(default_factory=Counter)


Handler = Callable[["VrrpInstance", float, Advertisement | None, IPAddress | None], list[Action]]


class VrrpInstance:
    def __init__(self, params: VrrpParams, now: float) -> None:
        self.params = params
        self.state = INIT
        self.since = now
        self.priority = params.priority  # effective priority (tracking may lower it)
        self.master_adver_interval = params.advert_interval
        self.master_address: IPAddress | None = None
        self.master_priority: int | None = None
        self.counters = Counters()
        self._timers = _Timers()
        self._preempt_from: float | None = None  # when we first heard a lower-priority master
        self._last_master_advert: float | None = None  # BACKUP: when the followed master last advertised
        self._resign_pending = False  # BACKUP: the master's priority 0 is counting down
        self._resign_started: float | None = None  # RESIGNING: when we sent priority 0
        self._answered: dict[IPAddress, float] = {}  # MASTER: last answer per lower-priority sender
        self._answers: list[float] = []  # MASTER: answers within the last interval

    # --------------------------------------------------------------------------------- derived timers

    @property
    def skew_time(self) -> float:
        if self.params.version == 2:
            return (256 - self.priority) / 256  # RFC 3768: not scaled by the interval
        return ((256 - self.priority) * self.master_adver_interval) / 256

    @property
    def master_down_interval(self) -> float:
        return 3 * self.master_adver_interval + self.skew_time

    @property
    def advert_tolerance(self) -> float:
        """How late a live master's advert may be before a priority 0 from it is believed."""
        return min(self.master_adver_interval / 2, 0.1)

    def get_timer(self) -> float | None:
        t = self._timers
        pending = [x for x in (t.master_down, t.adver, t.garp, t.release, t.stale) if x is not None]
        return min(pending) if pending else None

    # ------------------------------------------------------------------------------------- inputs

    def start(self, now: float) -> list[Action]:
        return self._input(Input.START, now)

    def stop(self, now: float) -> list[Action]:
        """Graceful stop. A MASTER resigns (priority 0) and keeps its addresses until the successor
        advertises (plus a moment for its ARP burst) or `3 × interval + RESIGN_EXTRA` passes: make before
        break. Anything else goes to INIT at once, releasing stale addresses."""
        return self._input(Input.STOP, now)

    def shutdown(self, now: float) -> list[Action]:
        """Stop at once: a master resigns with a priority-0 advert and releases its addresses."""
        return self._input(Input.SHUTDOWN, now)

    def fault(self, now: float, reason: str = "interface_down") -> list[Action]:
        """A tracked interface went down. From INIT too: a node that starts with a dead link waits in
        FAULT and `recover` starts it."""
        return self._input(Input.FAULT, now, reason=reason)

    def recover(self, now: float, reason: str = "interface_up") -> list[Action]:
        return self._input(Input.RECOVER, now, reason=reason)

    def set_priority(self, priority: int, now: float) -> list[Action]:
        """Change the effective priority (tracking). A master tells its peer at once, so a healthier
        backup with preemption takes over without waiting for the next advert."""
        if not 1 <= priority <= 255:
            raise ValueError(f"priority {priority} not in 1..255")
        if priority == self.priority:
            return []
        self.priority = priority
        if self.state == MASTER:
            return self._advertise(now)
        if self.state == BACKUP and self._timers.master_down is not None and self.master_address is None:
            # no master heard yet: the down interval depends on our priority
            self._timers.master_down = self.since + self.master_down_interval
        return []

    # What a reload may change without touching the state (the rest makes a new instance).
    RECONFIGURABLE = frozenset({"priority", "advert_interval", "preempt", "preempt_delay", "auth_pass",
                                "garp_refresh", "garp_burst_interval", "lower_priority_advert",
                                "higher_priority_advert"})

    def reconfigure(self, params: VrrpParams, priority: int, now: float) -> list[Action]:
        """A reload changed settings: keep the state, apply the new ones (no needless transition, no
        advert gap). `priority` is the new effective priority. ValueError for a change that needs a
        new instance (router id, version, addresses, source)."""
        changed = {f for f in params.__dataclass_fields__ if getattr(params, f) != getattr(self.params, f)}
        fixed = changed - self.RECONFIGURABLE
        if fixed:
            raise ValueError(f"cannot change {', '.join(sorted(fixed))} in place")
        old_interval = self.params.advert_interval
        self.params = params
        actions = self.set_priority(priority, now)
        if self.state == MASTER and params.advert_interval != old_interval and not actions:
            actions = self._advertise(now)  # tell the backup the new interval at once (v3 adopts it)
        if self.state != MASTER:
            self.master_adver_interval = (
                self.master_adver_interval if self.master_address is not None else params.advert_interval)
        return actions

    def receive_bytes(
        self, payload: bytes, *, src: IPAddress, dst: IPAddress, ttl: int | None, now: float
    ) -> list[Action]:
        """Decode and receive; malformed packets become counted drops."""
        try:
            adv = wire.decode(payload, src=src, dst=dst, ttl=ttl)
        except PacketError as e:
            return self._drop(e.reason, src)
        return self.receive(adv, src, now)

    def receive(self, adv: Advertisement, src: IPAddress, now: float) -> list[Action]:
        p = self.params
        if src == p.primary_address:
            return self._drop("own", src)
        if adv.router_id != p.router_id:
            return self._drop("router_id", src)
        if adv.version != p.version:
            return self._drop("version", src)
        if p.version == 2:
            if adv.auth_pass != p.auth_pass:
                return self._drop("auth", src)
            if adv.advert_interval != round(p.advert_interval):
                return self._drop("interval", src)  # RFC 3768 §7.1: v2 intervals must match
        self.counters.adverts_received += 1
        return self._input(Input.ADVERT, now, adv=adv, src=src)

    def handle_timer(self, now: float) -> list[Action]:
        actions: list[Action] = []
        # each due deadline is one input; a transition clears the others, so look again after each
        for name, kind in (("master_down", Input.MASTER_DOWN), ("release", Input.RELEASE),
                           ("adver", Input.ADVER), ("garp", Input.GARP), ("stale", Input.STALE_CHECK)):
            at = getattr(self._timers, name)
            if at is not None and now >= at:
                setattr(self._timers, name, None)
                actions += self._input(kind, now)
        return actions

    # ------------------------------------------------------------------------------------- the table

    def _input(self, kind: Input, now: float, *, adv: Advertisement | None = None, src: IPAddress | None = None,
               reason: str = "") -> list[Action]:
        handler = TABLE.get((self.state, kind))
        if handler is None:
            self.counters.ignored[f"{self.state}:{kind}"] += 1
            return [Ignored(self.state, kind)]
        return handler(self, now, adv, src, reason)

    # handlers: (self, now, adv, src, reason) -> actions

    def _on_start(self, now: float, *_: object) -> list[Action]:
        if self.priority == 255:
            return self._transition(MASTER, "owner", now)
        return self._transition(BACKUP, "start", now)

    def _on_recover(self, now: float, _adv: object, _src: object, reason: str) -> list[Action]:
        if self.priority == 255:
            return self._transition(MASTER, "owner", now)
        return self._transition(BACKUP, reason, now)

    def _on_fault(self, now: float, _adv: object, _src: object, reason: str) -> list[Action]:
        return self._transition(FAULT, reason, now)

    def _noop(self, *_: object) -> list[Action]:
        return []  # already there: asking again is not a mistake

    def _on_shutdown(self, now: float, *_: object) -> list[Action]:
        return self._transition(INIT, "shutdown", now)

    def _on_resign(self, now: float, *_: object) -> list[Action]:
        return self._transition(RESIGNING, "shutdown", now)

    def _on_release(self, now: float, *_: object) -> list[Action]:
        started = self._resign_started if self._resign_started is not None else now
        outcome = "peer took over" if self.master_address is not None else "no peer heard"
        return [Handover(outcome, now - started), *self._transition(INIT, "shutdown", now)]

    def _on_master_down(self, now: float, *_: object) -> list[Action]:
        return self._transition(MASTER, "master_down", now)

    def _on_adver(self, now: float, *_: object) -> list[Action]:
        return self._advertise(now)

    def _on_garp(self, now: float, *_: object) -> list[Action]:
        self._timers.garp = now + self.params.garp_refresh
        return self._announce(burst=False, reason="refresh")

    def _on_stale_check(self, now: float, *_: object) -> list[Action]:
        self._timers.stale = now + STALE_CHECK_INTERVALS * self.params.advert_interval
        return [ReleaseAddresses(self.params.addresses, "stale")]

    def _on_backup_advert(self, now: float, adv: Advertisement | None, src: IPAddress | None,
                          _reason: str) -> list[Action]:
        assert adv is not None and src is not None
        if adv.priority == 0:
            return self._backup_resignation(now, src)
        if adv.priority < self.priority and self.params.preempt:
            if self.params.preempt_delay > 0:
                if self._preempt_from is None:
                    self._preempt_from = now
                if now < self._preempt_from + self.params.preempt_delay:
                    self._accept_master(adv, src, now)
                    return []
            # preempting: ignore it and let Master_Down_Timer run out
            return []
        self._preempt_from = None
        if self._resign_pending and src == self.master_address:
            self.counters.dropped["priority0_contradicted"] += 1  # the master is alive after all
        self._accept_master(adv, src, now)
        return []

    def _backup_resignation(self, now: float, src: IPAddress) -> list[Action]:
        if src != self.master_address or self._last_master_advert is None:
            return self._drop("priority0_not_master", src)
        if self._resign_pending:
            return self._drop("priority0_repeat", src)
        # believed only once the master's next advert is overdue, then our skew (highest backup first)
        overdue = self._last_master_advert + self.master_adver_interval + self.advert_tolerance
        self._timers.master_down = max(now, overdue) + self.skew_time
        self._resign_pending = True
        return []

    def _accept_master(self, adv: Advertisement, src: IPAddress, now: float) -> None:
        if self.params.version == 3:
            self.master_adver_interval = adv.interval_seconds
        self.master_address = src
        self.master_priority = adv.priority
        self._last_master_advert = now
        self._resign_pending = False
        self._timers.master_down = now + self.master_down_interval

    def _on_master_advert(self, now: float, adv: Advertisement | None, src: IPAddress | None,
                          _reason: str) -> list[Action]:
        assert adv is not None and src is not None
        if adv.priority > self.priority or (
            adv.priority == self.priority and _addr_key(src) > _addr_key(self.params.primary_address)
        ):
            actions: list[Action] = []
            if self.params.higher_priority_advert:
                self.counters.adverts_sent += 1
                actions.append(SendAdvertisement(self._advert(self.priority)))
            actions += self._transition(BACKUP, "higher_priority", now)
            self._accept_master(adv, src, now)
            return actions
        if adv.priority > 0 and not self.params.lower_priority_advert:
            return []
        if not self._may_answer(src, now):
            return self._drop("answer_rate", src)
        if adv.priority == 0:
            return self._advertise(now)  # RFC 5798: a master hearing priority 0 advertises at once
        # RFC 9568: answer at once; and re-announce so hosts that followed the other master come back
        # (the split-brain heal that keepalived only gets right with garp_lower_prio_*).
        return [*self._advertise(now), *self._announce(burst=False, reason="lower_priority")]

    def _may_answer(self, src: IPAddress, now: float) -> bool:
        interval = self.params.advert_interval
        last = self._answered.get(src)
        if last is not None and now - last < interval:
            return False
        self._answers = [t for t in self._answers if now - t < interval]
        if len(self._answers) >= ANSWERS_PER_INTERVAL:
            return False
        if len(self._answered) > 64:  # forged senders must not grow this without bound
            self._answered = {a: t for a, t in self._answered.items() if now - t < interval}
        self._answered[src] = now
        self._answers.append(now)
        return True

    def _on_resigning_advert(self, now: float, adv: Advertisement | None, src: IPAddress | None,
                             _reason: str) -> list[Action]:
        assert adv is not None and src is not None
        if adv.priority == 0 or self.master_address is not None:
            return []
        # the successor advertises: give its ARP burst a moment to land, then let go
        self.master_address = src
        self.master_priority = adv.priority
        self._timers.release = now + min(self.params.advert_interval, 0.1) + self.params.garp_burst_interval
        return []

    # ------------------------------------------------------------------------------------- helpers

    def _advert(self, priority: int) -> Advertisement:
        p = self.params
        interval = round(p.advert_interval * 100) if p.version == 3 else round(p.advert_interval)
        return Advertisement(p.version, p.router_id, priority, p.addresses, interval, p.auth_pass)

    def _advertise(self, now: float) -> list[Action]:
        self.counters.adverts_sent += 1
        self._timers.adver = now + self.params.advert_interval
        return [SendAdvertisement(self._advert(self.priority))]

    def _announce(self, *, burst: bool, reason: str) -> list[Action]:
        """The one place that asks for gratuitous ARP (takeover burst, refresh, lower-priority master)."""
        return [AnnounceAddresses(burst=burst, reason=reason)]

    def _drop(self, reason: str, src: IPAddress) -> list[Action]:
        self.counters.dropped[reason] += 1
        return [AdvertDropped(reason, src)]

    def _transition(self, to: State, reason: str, now: float) -> list[Action]:
        from_ = self.state
        if (from_, to) not in MOVES:
            raise RuntimeError(f"illegal VRRP transition {from_} → {to}")
        actions: list[Action] = []
        # leaving
        if from_ == MASTER:
            if to in (INIT, FAULT, RESIGNING):
                # resign so the backup takes over soon instead of after 3 intervals
                self.counters.adverts_sent += 1
                actions.append(SendAdvertisement(self._advert(0)))
            if to != RESIGNING:  # a resigning master keeps them until the successor is heard
                actions.append(ReleaseAddresses(self.params.addresses))
        elif from_ == RESIGNING:
            actions.append(ReleaseAddresses(self.params.addresses))
        self._timers = _Timers()
        self._preempt_from = None
        self._last_master_advert = None
        self._resign_pending = False
        self._answered.clear()
        self._answers.clear()
        self.state = to
        self.since = now
        actions.append(StateChanged(from_, to, reason))
        # entering
        self.master_address = None
        self.master_priority = None
        self.master_adver_interval = self.params.advert_interval
        if to == MASTER:
            self.master_address = self.params.primary_address
            self.master_priority = self.priority
            actions.append(TakeAddresses(self.params.addresses))
            actions += self._advertise(now)
            actions += self._announce(burst=True, reason=reason)
            if self.params.garp_refresh > 0:
                self._timers.garp = now + self.params.garp_refresh
        elif to == RESIGNING:
            self._resign_started = now
            self._timers.release = now + 3 * self.params.advert_interval + RESIGN_EXTRA
        else:
            if to == BACKUP:
                self._timers.master_down = now + self.master_down_interval
                self._timers.stale = now + STALE_CHECK_INTERVALS * self.params.advert_interval
            if from_ not in (MASTER, RESIGNING):
                # a kill -9 or a crash of an earlier life may have left them on an interface
                actions.append(ReleaseAddresses(self.params.addresses, "stale"))
        return actions

    def snapshot(self) -> dict[str, object]:
        return {
            "state": str(self.state),
            "since": self.since,
            "priority": self.priority,
            "base_priority": self.params.priority,
            "master": str(self.master_address) if self.master_address is not None else None,
            "master_priority": self.master_priority,
            "master_adver_interval": self.master_adver_interval,
            "adverts_sent": self.counters.adverts_sent,
            "adverts_received": self.counters.adverts_received,
            "dropped": dict(self.counters.dropped),
            "ignored": dict(self.counters.ignored),
        }


# (state, input) → handler. What is not here is ignored and counted (e.g. adverts in INIT or FAULT, a
# timer of a state we already left, recover while not in FAULT).
TABLE: dict[tuple[State, Input], Callable[..., list[Action]]] = {
    (INIT, Input.START): VrrpInstance._on_start,
    (INIT, Input.FAULT): VrrpInstance._on_fault,
    (INIT, Input.STOP): VrrpInstance._noop,
    (INIT, Input.SHUTDOWN): VrrpInstance._noop,
    (BACKUP, Input.ADVERT): VrrpInstance._on_backup_advert,
    (BACKUP, Input.MASTER_DOWN): VrrpInstance._on_master_down,
    (BACKUP, Input.STALE_CHECK): VrrpInstance._on_stale_check,
    (BACKUP, Input.FAULT): VrrpInstance._on_fault,
    (BACKUP, Input.STOP): VrrpInstance._on_shutdown,
    (BACKUP, Input.SHUTDOWN): VrrpInstance._on_shutdown,
    (MASTER, Input.ADVERT): VrrpInstance._on_master_advert,
    (MASTER, Input.ADVER): VrrpInstance._on_adver,
    (MASTER, Input.GARP): VrrpInstance._on_garp,
    (MASTER, Input.FAULT): VrrpInstance._on_fault,
    (MASTER, Input.STOP): VrrpInstance._on_resign,
    (MASTER, Input.SHUTDOWN): VrrpInstance._on_shutdown,
    (RESIGNING, Input.ADVERT): VrrpInstance._on_resigning_advert,
    (RESIGNING, Input.RELEASE): VrrpInstance._on_release,  # successor heard (and lingered), or deadline
    (RESIGNING, Input.SHUTDOWN): VrrpInstance._on_release,
    (FAULT, Input.FAULT): VrrpInstance._noop,
    (FAULT, Input.RECOVER): VrrpInstance._on_recover,
    (FAULT, Input.STOP): VrrpInstance._on_shutdown,
    (FAULT, Input.SHUTDOWN): VrrpInstance._on_shutdown,
}


def _addr_key(a: IPAddress) -> int:
    # RFC 5798: unsigned compare of the primary addresses in network byte order
    return int(ipaddress.ip_address(a))


__all__ = [
    "BACKUP",
    "FAULT",
    "INIT",
    "MASTER",
    "MOVES",
    "RESIGNING",
    "TABLE",
    "Action",
    "AdvertDropped",
    "AnnounceAddresses",
    "Handover",
    "Ignored",
    "Input",
    "ReleaseAddresses",
    "SendAdvertisement",
    "State",
    "StateChanged",
    "TakeAddresses",
    "VrrpInstance",
    "VrrpParams",
]
