"""The VRRP state machine's handlers (havs.core.vrrp): one function per `(state, input)` entry of `TABLE`,
and the helpers they share. Pure, like the instance they act on: each takes
`(instance, now, advert, source, reason)` and returns actions."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import TYPE_CHECKING

from havs.core.vrrp_model import (
    BACKUP,
    FAULT,
    INIT,
    MASTER,
    RESIGNING,
    STALE_CHECK_INTERVALS,
    Action,
    AdvertDropped,
    AnnounceAddresses,
    Handover,
    Input,
    ReleaseAddresses,
    SendAdvertisement,
    State,
    WantMaster,
)
from havs.core.wire import Advertisement, IPAddress

if TYPE_CHECKING:
    from havs.core.vrrp import VrrpInstance

Handler = Callable[["VrrpInstance", float, Advertisement | None, IPAddress | None, str], list[Action]]


def _announce(*, burst: bool, reason: str) -> list[Action]:
    """The one place that asks for gratuitous ARP (takeover burst, refresh, lower-priority master)."""
    return [AnnounceAddresses(burst=burst, reason=reason)]


def _drop(inst: VrrpInstance, reason: str, src: IPAddress) -> list[Action]:
    inst.counters.dropped[reason] += 1
    return [AdvertDropped(reason, src)]


def _accept_master(inst: VrrpInstance, adv: Advertisement, src: IPAddress, now: float) -> list[Action]:
    """Follow this master: its interval (v3), address and priority; Master_Down_Timer restarts. A sync group
    member that wanted MASTER does no longer: the group hears it."""
    if inst.params.version == 3:
        inst.master_adver_interval = adv.interval_seconds
    inst.master_address = src
    inst.master_priority = adv.priority
    inst.last_master_advert = now
    inst.resign_pending = False
    inst.timers.master_down = now + inst.master_down_interval
    if inst.want_master:
        inst.want_master = False
        return [WantMaster(False)]
    return []


# handlers: (instance, now, advert, source, reason) -> actions


def _start(inst: VrrpInstance, now: float, *_: object) -> list[Action]:
    if inst.priority == 255:
        return inst._transition(MASTER, "owner", now)
    return inst._transition(BACKUP, "start", now)


def _recover(inst: VrrpInstance, now: float, _adv: object, _src: object, reason: str) -> list[Action]:
    if inst.priority == 255:
        return inst._transition(MASTER, "owner", now)
    return inst._transition(BACKUP, reason, now)


def _fault(inst: VrrpInstance, now: float, _adv: object, _src: object, reason: str) -> list[Action]:
    return inst._transition(FAULT, reason, now)


def _noop(*_: object) -> list[Action]:
    return []  # already there: asking again is not a mistake


def _shutdown(inst: VrrpInstance, now: float, *_: object) -> list[Action]:
    return inst._transition(INIT, "shutdown", now)


def _resign(inst: VrrpInstance, now: float, *_: object) -> list[Action]:
    return inst._transition(RESIGNING, "shutdown", now)


def _release(inst: VrrpInstance, now: float, *_: object) -> list[Action]:
    started = inst.resign_started if inst.resign_started is not None else now
    outcome = "peer took over" if inst.master_address is not None else "no peer heard"
    return [Handover(outcome, now - started), *inst._transition(INIT, "shutdown", now)]


def _master_down(inst: VrrpInstance, now: float, *_: object) -> list[Action]:
    if inst.params.sync_group:
        # keepalived's vrrp_sync_can_goto_master: a member goes MASTER only with the others (the group
        # sends SYNC_MASTER once every member wants it); meanwhile it keeps listening, and asks again
        inst.want_master = True
        inst.timers.master_down = now + inst.master_down_interval
        return [WantMaster(True)]
    return _take_over(inst, now)


def _take_over(inst: VrrpInstance, now: float) -> list[Action]:
    # name the master that went silent (priority 0 if it resigned), as keepalived does
    peer_priority = 0 if inst.resign_pending else inst.master_priority
    return inst._transition(MASTER, "master_down", now, inst.master_address, peer_priority)


def _sync_master(inst: VrrpInstance, now: float, _adv: object, _src: object, reason: str) -> list[Action]:
    if inst.want_master:  # its own master went silent too: say so, as a plain takeover would
        return _take_over(inst, now)
    return inst._transition(MASTER, reason or "sync_group", now)


def _sync_backup(inst: VrrpInstance, now: float, _adv: object, _src: object, reason: str) -> list[Action]:
    # a member heard a higher priority and stepped down: the group's addresses move together
    return inst._transition(BACKUP, reason or "sync_group", now)


def _adver(inst: VrrpInstance, now: float, *_: object) -> list[Action]:
    return inst._advertise(now)


def _garp_refresh(inst: VrrpInstance, now: float, *_: object) -> list[Action]:
    inst.timers.garp = now + inst.params.garp_refresh
    return _announce(burst=False, reason="refresh")


def _stale_check(inst: VrrpInstance, now: float, *_: object) -> list[Action]:
    inst.timers.stale = now + STALE_CHECK_INTERVALS * inst.params.advert_interval
    return [ReleaseAddresses(inst.params.addresses, "stale")]


def _backup_advert(inst: VrrpInstance, now: float, adv: Advertisement | None, src: IPAddress | None,
                   _reason: str) -> list[Action]:
    assert adv is not None and src is not None
    if adv.priority == 0:
        return _backup_resignation(inst, now, src)
    if adv.priority < inst.priority and inst.params.preempt:
        if inst.params.preempt_delay > 0:
            if inst.preempt_from is None:
                inst.preempt_from = now
            if now < inst.preempt_from + inst.params.preempt_delay:
                return _accept_master(inst, adv, src, now)
        # preempting: ignore it and let Master_Down_Timer run out
        return []
    inst.preempt_from = None
    if inst.resign_pending and src == inst.master_address:
        inst.counters.dropped["priority0_contradicted"] += 1  # the master is alive after all
    return _accept_master(inst, adv, src, now)


def _backup_resignation(inst: VrrpInstance, now: float, src: IPAddress) -> list[Action]:
    if src != inst.master_address or inst.last_master_advert is None:
        return _drop(inst, "priority0_not_master", src)
    if inst.resign_pending:
        return _drop(inst, "priority0_repeat", src)
    # believed only once the master's next advert is overdue, then our skew (highest backup first)
    overdue = inst.last_master_advert + inst.master_adver_interval + inst.advert_tolerance
    inst.timers.master_down = max(now, overdue) + inst.skew_time
    inst.resign_pending = True
    return []


def _master_advert(inst: VrrpInstance, now: float, adv: Advertisement | None, src: IPAddress | None,
                   _reason: str) -> list[Action]:
    assert adv is not None and src is not None
    p = inst.params
    if adv.priority > inst.priority or (
        adv.priority == inst.priority and _addr_key(src) > _addr_key(p.primary_address)
    ):
        actions: list[Action] = []
        if p.higher_priority_advert:
            inst.counters.adverts_sent += 1
            actions.append(SendAdvertisement(p.advert(inst.priority)))
        actions += inst._transition(BACKUP, "higher_priority", now, src, adv.priority)
        return actions + _accept_master(inst, adv, src, now)
    if adv.priority > 0 and not p.lower_priority_advert:
        return []
    if not inst.answers.allow(src, now, p.advert_interval):
        return _drop(inst, "answer_rate", src)
    if adv.priority == 0:
        return inst._advertise(now)  # RFC 5798: a master hearing priority 0 advertises at once
    # RFC 9568: answer at once; and re-announce so hosts that followed the other master come back
    # (the split-brain heal that keepalived only gets right with garp_lower_prio_*).
    return [*inst._advertise(now), *_announce(burst=False, reason="lower_priority")]


def _resigning_advert(inst: VrrpInstance, now: float, adv: Advertisement | None, src: IPAddress | None,
                      _reason: str) -> list[Action]:
    assert adv is not None and src is not None
    if adv.priority == 0 or inst.master_address is not None:
        return []
    # the successor advertises: give its ARP burst a moment to land, then let go
    inst.master_address = src
    inst.master_priority = adv.priority
    inst.timers.release = now + min(inst.params.advert_interval, 0.1) + inst.params.garp_burst_interval
    return []


# (state, input) → handler. What is not here is ignored and counted (e.g. adverts in INIT or FAULT, a
# timer of a state we already left, recover while not in FAULT).
TABLE: dict[tuple[State, Input], Handler] = {
    (INIT, Input.START): _start,
    (INIT, Input.FAULT): _fault,
    (INIT, Input.STOP): _noop,
    (INIT, Input.SHUTDOWN): _noop,
    (BACKUP, Input.ADVERT): _backup_advert,
    (BACKUP, Input.MASTER_DOWN): _master_down,
    (BACKUP, Input.STALE_CHECK): _stale_check,
    (BACKUP, Input.FAULT): _fault,
    (BACKUP, Input.STOP): _shutdown,
    (BACKUP, Input.SHUTDOWN): _shutdown,
    (BACKUP, Input.SYNC_MASTER): _sync_master,
    (BACKUP, Input.SYNC_BACKUP): _noop,
    (MASTER, Input.ADVERT): _master_advert,
    (MASTER, Input.ADVER): _adver,
    (MASTER, Input.GARP): _garp_refresh,
    (MASTER, Input.FAULT): _fault,
    (MASTER, Input.STOP): _resign,
    (MASTER, Input.SHUTDOWN): _shutdown,
    (MASTER, Input.SYNC_MASTER): _noop,
    (MASTER, Input.SYNC_BACKUP): _sync_backup,
    (RESIGNING, Input.ADVERT): _resigning_advert,
    (RESIGNING, Input.RELEASE): _release,  # successor heard (and lingered), or the deadline
    (RESIGNING, Input.SHUTDOWN): _release,
    (FAULT, Input.FAULT): _noop,
    (FAULT, Input.RECOVER): _recover,
    (FAULT, Input.STOP): _shutdown,
    (FAULT, Input.SHUTDOWN): _shutdown,
}


def _addr_key(a: IPAddress) -> int:
    # RFC 5798: unsigned compare of the primary addresses in network byte order
    return int(ipaddress.ip_address(a))
