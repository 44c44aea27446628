"""The VRRP state machine of one virtual router (RFC 5798 / RFC 9568; RFC 3768 for v2).

Pure: the caller passes `now` (monotonic seconds) and performs the returned actions. One instance carries
every floating address (the VIP and the real servers' gateway move together). Timers are deadlines;
`get_timer()` is the earliest, `handle_timer(now)` fires whatever is due.

Every input goes through `_input(input, ...)`, which looks `(state, input)` up in `TABLE`; an input with
no entry is a counted no-op returned as `Ignored`. Every state change goes through `_transition`, checked
against `MOVES`, which emits the exit and entry actions, so what happens on becoming MASTER is written once.
`_announce` is the one place that asks for gratuitous ARP. The vocabulary is in `havs.core.vrrp_model`, the
handlers and `TABLE` in `havs.core.vrrp_handlers`.

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

from havs.core import vrrp_auth, wire
from havs.core.vrrp_handlers import TABLE, _announce, _drop
from havs.core.vrrp_model import (
    ANSWERS_PER_INTERVAL,
    BACKUP,
    FAULT,
    INIT,
    MASTER,
    MOVES,
    RESIGN_EXTRA,
    RESIGNING,
    STALE_CHECK_INTERVALS,
    Action,
    AdvertDropped,
    AnnounceAddresses,
    AnswerLimiter,
    Counters,
    Handover,
    Ignored,
    Input,
    ReleaseAddresses,
    SendAdvertisement,
    State,
    StateChanged,
    TakeAddresses,
    Timers,
    VrrpParams,
    WantMaster,
)
from havs.core.wire import Advertisement, IPAddress
from havs.errors import PacketError

# What a reload may change without touching the state (the rest makes a new instance).
RECONFIGURABLE = frozenset({"priority", "advert_interval", "preempt", "preempt_delay", "auth_pass", "garp_refresh",
                            "garp_burst_interval", "lower_priority_advert", "higher_priority_advert", "auth",
                            "sync_group"})


class VrrpInstance:
    RECONFIGURABLE = RECONFIGURABLE

    def __init__(self, params: VrrpParams, now: float) -> None:
        self.params = params
        self.state = INIT
        self.since = now
        self.priority = params.priority  # effective priority (tracking may lower it)
        self.master_adver_interval = params.advert_interval
        self.master_address: IPAddress | None = None
        self.master_priority: int | None = None
        self.counters = Counters()
        self.timers = Timers()
        self.preempt_from: float | None = None  # BACKUP: when we first heard a lower-priority master
        self.last_master_advert: float | None = None  # BACKUP: when the followed master last advertised
        self.resign_pending = False  # BACKUP: the master's priority 0 is counting down
        self.resign_started: float | None = None  # RESIGNING: when we sent priority 0
        self.want_master = False  # BACKUP in a sync group: Master_Down ran out, the group has not said go
        self.answers = AnswerLimiter()  # MASTER
        self.auth = vrrp_auth.Authenticator(params.auth) if params.auth is not None else None

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
        t = self.timers
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

    def force(self, to: State, now: float, reason: str = "sync_group") -> list[Action]:
        """A sync group's verdict (havs.core.vrrp_group): FAULT with a member, back to BACKUP when no member is
        faulty (or from MASTER when a member stepped down), MASTER when every member wants it. Inputs of the
        table like any other: from a state where the move makes no sense it is a counted no-op."""
        if to == FAULT:
            return self._input(Input.FAULT, now, reason=reason)
        if to == MASTER:
            return self._input(Input.SYNC_MASTER, now, reason=reason)
        if to == BACKUP:
            kind = Input.RECOVER if self.state == FAULT else Input.SYNC_BACKUP
            return self._input(kind, now, reason=reason)
        raise ValueError(f"a sync group cannot force {to}")

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
        if self.state == BACKUP and self.timers.master_down is not None and self.master_address is None:
            # no master heard yet: the down interval depends on our priority
            self.timers.master_down = self.since + self.master_down_interval
        return []

    def reconfigure(self, params: VrrpParams, priority: int, now: float) -> list[Action]:
        """A reload changed settings: keep the state, apply the new ones (no needless transition, no
        advert gap). `priority` is the new effective priority. ValueError for a change that needs a
        new instance (router id, version, addresses, source)."""
        changed = {f for f in params.__dataclass_fields__ if getattr(params, f) != getattr(self.params, f)}
        fixed = changed - RECONFIGURABLE
        if fixed:
            raise ValueError(f"cannot change {', '.join(sorted(fixed))} in place")
        old_interval = self.params.advert_interval
        self.params = params
        # keys rotate and modes move (receive_only → permissive → enforce) in place: the send sequence and
        # the replay marks stay, so neither our adverts nor the peer's are refused across the reload
        if params.auth is None:
            self.auth = None
        elif self.auth is None:
            self.auth = vrrp_auth.Authenticator(params.auth)
        else:
            self.auth.params = params.auth
        actions = self.set_priority(priority, now)
        if self.state == MASTER and params.advert_interval != old_interval and not actions:
            actions = self._advertise(now)  # tell the backup the new interval at once (v3 adopts it)
        if self.state != MASTER:
            self.master_adver_interval = (
                self.master_adver_interval if self.master_address is not None else params.advert_interval)
        return actions

    def receive_bytes(
        self, payload: bytes, *, src: IPAddress, dst: IPAddress, ttl: int | None, now: float, wall: float = 0.0
    ) -> list[Action]:
        """Decode, authenticate (`auth_hmac`: `wall` is UTC seconds) and receive; malformed or
        unauthenticated packets become counted drops, before any field reaches the state machine."""
        auth, tail = self.auth, None
        message = payload
        if auth is not None:
            message, tail = vrrp_auth.split(payload, src.version)
        try:
            adv = wire.decode(message, src=src, dst=dst, ttl=ttl, trailer=tail or b"")
        except PacketError as e:
            return _drop(self, e.reason, src)
        if auth is not None and adv.router_id == self.params.router_id:
            reason = auth.check(message, tail, version=adv.version, router_id=adv.router_id, src=src, wall=wall)
            if reason is not None:
                return _drop(self, reason, src)
        return self.receive(adv, src, now)

    def sign(self, message: bytes, wall: float) -> bytes:
        """The `auth_hmac` trailer for one of our adverts (b"" without auth or in receive_only)."""
        if self.auth is None:
            return b""
        return self.auth.sign(message, version=self.params.version, router_id=self.params.router_id,
                              src=self.params.primary_address, wall=wall)

    def receive(self, adv: Advertisement, src: IPAddress, now: float) -> list[Action]:
        p = self.params
        if src == p.primary_address:
            return _drop(self, "own", src)
        if adv.router_id != p.router_id:
            return _drop(self, "router_id", src)
        if adv.version != p.version:
            return _drop(self, "version", src)
        if p.version == 2:
            if adv.auth_pass != p.auth_pass:
                return _drop(self, "auth", src)
            if adv.advert_interval != round(p.advert_interval):
                return _drop(self, "interval", src)  # RFC 3768 §7.1: v2 intervals must match
        self.counters.adverts_received += 1
        return self._input(Input.ADVERT, now, adv=adv, src=src)

    def handle_timer(self, now: float) -> list[Action]:
        actions: list[Action] = []
        # each due deadline is one input; a transition clears the others, so look again after each
        for name, kind in (("master_down", Input.MASTER_DOWN), ("release", Input.RELEASE),
                           ("adver", Input.ADVER), ("garp", Input.GARP), ("stale", Input.STALE_CHECK)):
            at = getattr(self.timers, name)
            if at is not None and now >= at:
                setattr(self.timers, name, None)
                actions += self._input(kind, now)
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
            "auth": _auth_snapshot(self.auth, self.counters),
            **({"want_master": self.want_master} if self.params.sync_group else {}),
        }

    # ------------------------------------------------------------------------------------- machinery

    def _input(self, kind: Input, now: float, *, adv: Advertisement | None = None, src: IPAddress | None = None,
               reason: str = "") -> list[Action]:
        handler = TABLE.get((self.state, kind))
        if handler is None:
            self.counters.ignored[f"{self.state}:{kind}"] += 1
            return [Ignored(self.state, kind)]
        return handler(self, now, adv, src, reason)

    def _advertise(self, now: float) -> list[Action]:
        self.counters.adverts_sent += 1
        self.timers.adver = now + self.params.advert_interval
        return [SendAdvertisement(self.params.advert(self.priority))]

    def _transition(self, to: State, reason: str, now: float, peer: IPAddress | None = None,
                    peer_priority: int | None = None) -> list[Action]:
        from_ = self.state
        if (from_, to) not in MOVES:
            raise RuntimeError(f"illegal VRRP transition {from_} → {to}")
        actions: list[Action] = []
        # leaving
        if from_ == MASTER:
            if to in (INIT, FAULT, RESIGNING):
                # resign so the backup takes over soon instead of after 3 intervals
                self.counters.adverts_sent += 1
                actions.append(SendAdvertisement(self.params.advert(0)))
            if to != RESIGNING:  # a resigning master keeps them until the successor is heard
                actions.append(ReleaseAddresses(self.params.addresses))
        elif from_ == RESIGNING:
            actions.append(ReleaseAddresses(self.params.addresses))
        self.timers = Timers()
        self.preempt_from = self.last_master_advert = None
        self.resign_pending = self.want_master = False
        self.answers.clear()
        self.state = to
        self.since = now
        actions.append(StateChanged(from_, to, reason, peer, peer_priority))
        # entering
        self.master_address = None
        self.master_priority = None
        self.master_adver_interval = self.params.advert_interval
        if to == MASTER:
            self.master_address = self.params.primary_address
            self.master_priority = self.priority
            actions.append(TakeAddresses(self.params.addresses))
            actions += self._advertise(now)
            actions += _announce(burst=True, reason=reason)
            if self.params.garp_refresh > 0:
                self.timers.garp = now + self.params.garp_refresh
        elif to == RESIGNING:
            self.resign_started = now
            self.timers.release = now + 3 * self.params.advert_interval + RESIGN_EXTRA
        else:
            if to == BACKUP:
                self.timers.master_down = now + self.master_down_interval
                self.timers.stale = now + STALE_CHECK_INTERVALS * self.params.advert_interval
            if from_ not in (MASTER, RESIGNING):
                # a kill -9 or a crash of an earlier life may have left them on an interface
                actions.append(ReleaseAddresses(self.params.addresses, "stale"))
        return actions


def _auth_snapshot(auth: vrrp_auth.Authenticator | None, counters: Counters) -> dict[str, object] | None:
    """Mode and key ids, and the rejects by reason (all of them, zeros too, for metrics). Never keys."""
    if auth is None:
        return None
    p = auth.params
    return {"mode": p.mode, "anti_replay": p.anti_replay, "time_window": p.time_window,
            "active_key": p.active_key, "key_ids": sorted(p.keys),
            "rejected": {r: counters.dropped[r] for r in vrrp_auth.REASONS}}


__all__ = [
    "ANSWERS_PER_INTERVAL", "BACKUP", "FAULT", "INIT", "MASTER", "MOVES", "RESIGNING", "RESIGN_EXTRA",
    "STALE_CHECK_INTERVALS", "TABLE", "Action", "AdvertDropped", "AnnounceAddresses", "Handover", "Ignored", "Input",
    "ReleaseAddresses", "SendAdvertisement", "State", "StateChanged", "TakeAddresses", "VrrpInstance", "VrrpParams",
    "WantMaster",
]
