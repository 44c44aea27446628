"""The VRRP core's vocabulary: states, inputs, the moves allowed between states, parameters, actions.

Pure data; the state machine that uses it is `havs.core.vrrp`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

from havs.core.vrrp_auth import AuthParams
from havs.core.wire import Advertisement, IPAddress


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
    # a sync group's verdict (havs.core.vrrp_group): every member wants MASTER, or a member left MASTER
    SYNC_MASTER = "sync_master"
    SYNC_BACKUP = "sync_backup"


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
    auth: AuthParams | None = None  # keepalived 2.4 `auth_hmac` (havs.core.vrrp_auth); None: no trailer
    # in a vrrp_sync_group: Master_Down running out asks the group (WantMaster) instead of taking over, so
    # the members go MASTER together, once every one of them has lost its master (keepalived's rule)
    sync_group: bool = False

    def advert(self, priority: int) -> Advertisement:
        """Our advertisement at `priority` (0: resigning)."""
        interval = round(self.advert_interval * 100) if self.version == 3 else round(self.advert_interval)
        return Advertisement(self.version, self.router_id, priority, self.addresses, interval, self.auth_pass)

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
    """`peer`, `peer_priority`: the advert that caused it (higher_priority; master_down names the master
    that went silent, priority 0 when it resigned), as keepalived logs them."""

    from_: State
    to: State
    reason: str
    peer: IPAddress | None = None
    peer_priority: int | None = None


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


@dataclass(frozen=True)
class WantMaster:
    """A sync group member's Master_Down ran out (want) or it heard a master again (not): the group
    decides (havs.core.vrrp_group) and forces the members with SYNC_MASTER."""

    want: bool


Action = (SendAdvertisement | StateChanged | TakeAddresses | ReleaseAddresses | AnnounceAddresses | AdvertDropped
          | Ignored | Handover | WantMaster)


@dataclass
class Timers:
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


class AnswerLimiter:
    """A master answers lower-priority (and priority-0) adverts at most once per interval per sender and
    ANSWERS_PER_INTERVAL times per interval in all: forged floods must not become floods of our own."""

    def __init__(self) -> None:
        self._last: dict[IPAddress, float] = {}
        self._recent: list[float] = []

    def allow(self, src: IPAddress, now: float, interval: float) -> bool:
        last = self._last.get(src)
        if last is not None and now - last < interval:
            return False
        self._recent = [t for t in self._recent if now - t < interval]
        if len(self._recent) >= ANSWERS_PER_INTERVAL:
            return False
        if len(self._last) > 64:  # forged senders must not grow this without bound
            self._last = {a: t for a, t in self._last.items() if now - t < interval}
        self._last[src] = now
        self._recent.append(now)
        return True

    def clear(self) -> None:
        self._last.clear()
        self._recent.clear()
