"""The VRRP state machine of one virtual router (RFC 5798 / RFC 9568; RFC 3768 for v2).

Pure: the caller passes `now` (monotonic seconds) and performs the returned actions. One instance carries
every floating address (the VIP and the real servers' gateway move together). Timers are deadlines;
`get_timer()` is the earliest, `handle_timer(now)` fires whatever is due.

Every state change goes through `_transition`, which checks it against `TRANSITIONS` and emits the exit
and entry actions, so what happens on becoming MASTER is written once.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, field

from havs.core import wire
from havs.core.wire import Advertisement, IPAddress
from havs.errors import PacketError

INIT = "INIT"
BACKUP = "BACKUP"
MASTER = "MASTER"
FAULT = "FAULT"

# (from, to) pairs that may happen; anything else is a bug in this module and raises.
TRANSITIONS: frozenset[tuple[str, str]] = frozenset(
    {
        (INIT, BACKUP),
        (INIT, MASTER),
        (INIT, FAULT),
        (BACKUP, MASTER),
        (BACKUP, FAULT),
        (BACKUP, INIT),
        (MASTER, BACKUP),
        (MASTER, FAULT),
        (MASTER, INIT),
        (FAULT, BACKUP),
        (FAULT, MASTER),
        (FAULT, INIT),
    }
)


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
    from_: str
    to: str
    reason: str


@dataclass(frozen=True)
class TakeAddresses:
    addresses: tuple[IPAddress, ...]


@dataclass(frozen=True)
class ReleaseAddresses:
    addresses: tuple[IPAddress, ...]


@dataclass(frozen=True)
class AnnounceAddresses:
    """Gratuitous ARP for every floating address: a burst on takeover, a single round otherwise."""

    burst: bool
    reason: str


@dataclass(frozen=True)
class AdvertDropped:
    reason: str
    src: IPAddress


Action = SendAdvertisement | StateChanged | TakeAddresses | ReleaseAddresses | AnnounceAddresses | AdvertDropped


@dataclass
class _Timers:
    master_down: float | None = None
    adver: float | None = None
    garp: float | None = None


@dataclass
class Counters:
    adverts_sent: int = 0
    adverts_received: int = 0
    dropped: Counter[str] = field(default_factory=Counter)


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

    # --------------------------------------------------------------------------------- derived timers

    @property
    def skew_time(self) -> float:
        if self.params.version == 2:
            return (256 - self.priority) / 256  # RFC 3768: not scaled by the interval
        return ((256 - self.priority) * self.master_adver_interval) / 256

    @property
    def master_down_interval(self) -> float:
        return 3 * self.master_adver_interval + self.skew_time

    def get_timer(self) -> float | None:
        pending = [t for t in (self._timers.master_down, self._timers.adver, self._timers.garp) if t is not None]
        return min(pending) if pending else None

    # ------------------------------------------------------------------------------------- inputs

    def start(self, now: float) -> list[Action]:
        if self.state != INIT:
            return []
        if self.priority == 255:
            return self._transition(MASTER, "owner", now)
        return self._transition(BACKUP, "start", now)

    def shutdown(self, now: float) -> list[Action]:
        """Stop: a master resigns with a priority-0 advert so the backup takes over after skew time."""
        if self.state == INIT:
            return []
        return self._transition(INIT, "shutdown", now)

    def fault(self, now: float, reason: str = "interface_down") -> list[Action]:
        """A tracked interface went down. From INIT too: a node that starts with a dead link waits in
        FAULT and `recover` starts it."""
        if self.state == FAULT:
            return []
        return self._transition(FAULT, reason, now)

    def recover(self, now: float, reason: str = "interface_up") -> list[Action]:
        if self.state != FAULT:
            return []
        if self.priority == 255:
            return self._transition(MASTER, "owner", now)
        return self._transition(BACKUP, reason, now)

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
                                "garp_refresh", "lower_priority_advert", "higher_priority_advert"})

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
        if self.state == BACKUP:
            return self._backup_receive(adv, src, now)
        if self.state == MASTER:
            return self._master_receive(adv, src, now)
        return []  # INIT / FAULT: not taking part

    def handle_timer(self, now: float) -> list[Action]:
        actions: list[Action] = []
        t = self._timers
        if self.state == BACKUP and t.master_down is not None and now >= t.master_down:
            actions += self._transition(MASTER, "master_down", now)
        if self.state == MASTER:
            if t.adver is not None and now >= t.adver:
                actions += self._advertise(now)
            if t.garp is not None and now >= t.garp:
                t.garp = now + self.params.garp_refresh
                actions.append(AnnounceAddresses(burst=False, reason="refresh"))
        return actions

    # ---------------------------------------------------------------------------------- per state

    def _backup_receive(self, adv: Advertisement, src: IPAddress, now: float) -> list[Action]:
        if adv.priority == 0:
            # the master resigned: take over after skew time only, highest priority first
            self._timers.master_down = now + self.skew_time
            return []
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
        self._accept_master(adv, src, now)
        return []

    def _accept_master(self, adv: Advertisement, src: IPAddress, now: float) -> None:
        if self.params.version == 3:
            self.master_adver_interval = adv.interval_seconds
        self.master_address = src
        self.master_priority = adv.priority
        self._timers.master_down = now + self.master_down_interval

    def _master_receive(self, adv: Advertisement, src: IPAddress, now: float) -> list[Action]:
        if adv.priority == 0:
            return self._advertise(now)
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
        if not self.params.lower_priority_advert:
            return []
        # RFC 9568: answer at once; and re-announce so hosts that followed the other master come back
        # (the split-brain heal that keepalived only gets right with garp_lower_prio_*).
        return [*self._advertise(now), AnnounceAddresses(burst=False, reason="lower_priority")]

    # ------------------------------------------------------------------------------------- helpers

    def _advert(self, priority: int) -> Advertisement:
        p = self.params
        interval = round(p.advert_interval * 100) if p.version == 3 else round(p.advert_interval)
        return Advertisement(p.version, p.router_id, priority, p.addresses, interval, p.auth_pass)

    def _advertise(self, now: float) -> list[Action]:
        self.counters.adverts_sent += 1
        self._timers.adver = now + self.params.advert_interval
        return [SendAdvertisement(self._advert(self.priority))]

    def _drop(self, reason: str, src: IPAddress) -> list[Action]:
        self.counters.dropped[reason] += 1
        return [AdvertDropped(reason, src)]

    def _transition(self, to: str, reason: str, now: float) -> list[Action]:
        from_ = self.state
        if (from_, to) not in TRANSITIONS:
            raise RuntimeError(f"illegal VRRP transition {from_} → {to}")
        actions: list[Action] = []
        # leaving
        if from_ == MASTER:
            if to in (INIT, FAULT):
                # resign so the backup takes over after skew time instead of 3 intervals
                self.counters.adverts_sent += 1
                actions.append(SendAdvertisement(self._advert(0)))
            actions.append(ReleaseAddresses(self.params.addresses))
        self._timers = _Timers()
        self._preempt_from = None
        self.state = to
        self.since = now
        actions.append(StateChanged(from_, to, reason))
        # entering
        if to == MASTER:
            self.master_address = self.params.primary_address
            self.master_priority = self.priority
            self.master_adver_interval = self.params.advert_interval
            actions.append(TakeAddresses(self.params.addresses))
            actions += self._advertise(now)
            actions.append(AnnounceAddresses(burst=True, reason=reason))
            if self.params.garp_refresh > 0:
                self._timers.garp = now + self.params.garp_refresh
        elif to == BACKUP:
            self.master_address = None
            self.master_priority = None
            self.master_adver_interval = self.params.advert_interval
            self._timers.master_down = now + self.master_down_interval
        else:
            self.master_address = None
            self.master_priority = None
        return actions

    def snapshot(self) -> dict[str, object]:
        return {
            "state": self.state,
            "since": self.since,
            "priority": self.priority,
            "base_priority": self.params.priority,
            "master": str(self.master_address) if self.master_address is not None else None,
            "master_priority": self.master_priority,
            "master_adver_interval": self.master_adver_interval,
            "adverts_sent": self.counters.adverts_sent,
            "adverts_received": self.counters.adverts_received,
            "dropped": dict(self.counters.dropped),
        }


def _addr_key(a: IPAddress) -> int:
    # RFC 5798: unsigned compare of the primary addresses in network byte order
    return int(ipaddress.ip_address(a))


__all__ = [
    "BACKUP",
    "FAULT",
    "INIT",
    "MASTER",
    "Action",
    "AdvertDropped",
    "AnnounceAddresses",
    "ReleaseAddresses",
    "SendAdvertisement",
    "StateChanged",
    "TakeAddresses",
    "VrrpInstance",
    "VrrpParams",
]
