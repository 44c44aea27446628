"""The asyncio shell around one VRRP instance: the socket, the timer, link tracking, and the actions.

Runs on the caller's loop (the VRRP child's only loop; several instances share it, `havs.vrrp.instances`).
On the heartbeat's path there is nothing but the core and the socket: a received advert or a due timer goes
through `VrrpInstance` and its adverts are sent at once; address changes and GARP run after, in order, on
this instance's own effects queue (with its own rtnetlink socket, so one instance's address changes never
wait behind another's); notify hooks are asyncio subprocesses. Every effect that fails is caught, counted
and logged (rate-limited), and VRRP goes on. The heartbeat's path (socket demultiplexer, deadline timer,
advert sender) is `havs.vrrp.heartbeat`.

In a sync group (`group` given) the shell does not decide its own FAULT/recovery or a takeover: it tells the
group (`GroupHooks`), which forces the members (`force`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from havs.core.model import NodeView, Vrrp
from havs.core.vrrp import (
    MASTER,
    RESIGN_EXTRA,
    Action,
    AdvertDropped,
    AnnounceAddresses,
    Handover,
    Ignored,
    ReleaseAddresses,
    SendAdvertisement,
    State,
    StateChanged,
    TakeAddresses,
    VrrpInstance,
    VrrpParams,
    WantMaster,
)
from havs.edge.addresses import Addresses
from havs.edge.links import LinkEvent, LinkWatcher
from havs.vrrp.announcer import AddressCache, Announcer, RateLimitedLog
from havs.vrrp.auth_keys import auth_params
from havs.vrrp.heartbeat import Demux, Heartbeat, advert_source
from havs.vrrp.notify import NotifyRunner

OnState = Callable[[str, str, str], None]
LINK_POLL = 5.0  # seconds between link polls while rtnetlink link events arrive (the fallback)
SocketKey = tuple[str, object, tuple[object, ...]]  # heartbeat interface, advert source, unicast peers


class GroupHooks(Protocol):
    """What a sync group member tells its group (havs.vrrp.instances)."""

    def fault(self, name: str, faulty: bool, reason: str) -> None: ...

    def want(self, name: str, want: bool) -> None: ...

    def any_faulty(self, name: str) -> bool: ...


def identity(view: NodeView, name: str) -> tuple[object, ...]:
    """What a reload cannot change without a new instance (instance `name` of `view`)."""
    cfg = view.config.instance(name)
    return (cfg.router_id, cfg.version, view.ifname(cfg.interface), tuple(cfg.unicast_peers), cfg.v3_checksum,
            tuple((view.ifname(fa.interface), fa.address) for fa in cfg.addresses), view.node.unicast_src)


class VrrpShell:
    def __init__(self, view: NodeView, *, log: Any, name: str, on_state: OnState | None = None,
                 on_change: Callable[[], None] | None = None, group: GroupHooks | None = None,
                 links: bool = True, notify_env: dict[str, str] | None = None,
                 address_cache: AddressCache | None = None) -> None:
        """`name`: the instance of `view` this shell runs (KeyError if there is none); `links`: watch link
        events here (else the caller feeds `on_link`, one watcher for every instance); `address_cache`: what
        the interfaces hold, shared by every instance's MASTER checks."""
        self.name = name
        self.view = view
        cfg = self.cfg
        self._log = log
        self._on_state = on_state
        self._on_change = on_change or (lambda: None)  # a state changed: push a snapshot now
        self.group = group
        self._hb_if = view.ifname(cfg.interface)
        self.floating = tuple((view.ifname(fa.interface), fa.address) for fa in cfg.addresses)
        self.decrement = 0
        self.preempt_hold = ""  # why preemption is deferred ("": it is not): a returning director catching up
        self._deferred_said = False  # vrrp.preempt_deferred logged for this hold
        self.warn = RateLimitedLog(log)
        self.notify = NotifyRunner(cfg.notify, log, view.name, notify_env)
        self.faulty: frozenset[str] = frozenset()
        self.family = cfg.family  # one family per instance (RFC 9568; the model checks)
        self.src: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
        self.inst: VrrpInstance | None = None
        self.last_tick = time.monotonic()
        self.demux: Demux | None = None
        self._addrs = Addresses()
        self._netlink = asyncio.Lock()  # one address request at a time: adds and removes keep their order
        self._announcer: Announcer | None = None
        self._heartbeat: Heartbeat | None = None  # the deadline timer, the advert sender
        self._effects: asyncio.Queue[Callable[[], Awaitable[None]] | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = asyncio.Event()  # the instance reached INIT after a stop
        self._links = LinkWatcher(self.on_link) if links else None  # link state from the kernel's events
        self.links_open = False  # else: poll every advert interval, as before
        self._link_events = 0  # a poll that started before an event must not undo it
        self._polled = 0.0
        self._down: set[str] = set()  # links found down by `open`
        self._address_cache = address_cache

    @property
    def cfg(self) -> Vrrp:
        return self.view.config.instance(self.name)

    @property
    def track(self) -> tuple[str, ...]:
        """The heartbeat link, the links the addresses live on, and any extra: a director that cannot
        reach the clients or the real servers must not stay MASTER."""
        return _track_of(self.view, self.name)

    @property
    def _interval(self) -> float:
        return self.cfg.advert_interval

    @property
    def base_priority(self) -> int:
        return self.cfg.priority_of(self.view.name, self.view.node)

    @property
    def effective_priority(self) -> int:
        return max(1, self.base_priority - self.decrement)

    @property
    def socket_key(self) -> SocketKey:
        return (self._hb_if, self.src, tuple(self._peers()))

    def _peers(self) -> list[Any]:
        # one config serves both directors, so the peer list may name us too
        return [p for p in self.cfg.unicast_peers if p != self.src]

    def params(self) -> VrrpParams:
        cfg = self.cfg
        assert self.src is not None
        return VrrpParams(
            router_id=cfg.router_id, priority=self.base_priority, advert_interval=cfg.advert_interval,
            primary_address=self.src, addresses=tuple(a.ip for _, a in self.floating), version=cfg.version,
            preempt=cfg.preempt and not self.preempt_hold, preempt_delay=cfg.preempt_delay, auth_pass=cfg.auth_pass,
            garp_refresh=cfg.garp.refresh, garp_burst_interval=cfg.garp.burst_interval,
            auth=auth_params(cfg.auth_hmac, cfg.advert_interval),  # reads file: keys; ValueError names the key
            sync_group=self.group is not None,
        )

    # ------------------------------------------------------------------------------ start, stop

    async def open(self) -> None:
        """The rtnetlink socket, the advert source, the links' state, the keys. RuntimeError if not."""
        try:
            await self._addrs.open()
            # no instance's floating address is anyone's advert source
            others = tuple((self.view.ifname(fa.interface), fa.address) for v in self.view.config.vrrp
                           for fa in v.addresses)
            self.src = await advert_source(self.view, self._addrs, self._hb_if, self.family, others)
            self._down = {i for i in self.track if not await self._addrs.link_up(i)}
            self.params()  # an auth_hmac key that cannot be read (missing, world-readable, wrong size)
        except (OSError, ValueError, RuntimeError) as e:
            await self.close()
            raise RuntimeError(f"VRRP did not start: {e}") from e

    def begin(self, demux: Demux) -> None:
        """Start in BACKUP (or FAULT), releasing stale addresses, on `demux`'s socket."""
        loop = asyncio.get_running_loop()
        cfg = self.cfg
        assert self.src is not None
        self.demux = demux
        self.inst = VrrpInstance(self.params(), loop.time())
        self.inst.priority = self.effective_priority
        self._announcer = Announcer(self.floating, self._addrs, self._log, self.warn, self._address_cache)
        self._heartbeat = Heartbeat(demux.sock, self.src, self.inst, checksum=cfg.v3_checksum, warn=self.warn,
                                    dispatch=lambda actions: self.dispatch(actions), after_batch=self._note_deferred,
                                    on_tick=lambda: setattr(self, "last_tick", time.monotonic()))
        self.notify.start()
        self._tasks = [loop.create_task(self._effects_worker()), loop.create_task(self._track_loop())]
        demux.add(cfg.router_id, self._heartbeat)
        if self._links is not None:
            try:
                self._links.open()
                self.links_open = True
            except OSError as e:
                self._log.warning("vrrp.link_events_unavailable", error=str(e), fallback="poll every advert")
        self._log.info(
            "vrrp.started", interface=self._hb_if, source=str(self.src), router_id=cfg.router_id,
            version=cfg.version, priority=self.inst.priority, interval=cfg.advert_interval,
            mode="unicast" if demux.sock.unicast else "multicast", track=list(self.track),
            auth=_auth_summary(self.inst),
        )
        self.faulty = frozenset(self._down)
        now = loop.time()
        if self.group is not None:
            if self.faulty or self.group.any_faulty(self.name):
                # its own verdict either way: a replaced member's predecessor may have left its fault behind
                self.group.fault(self.name, bool(self.faulty), "interface_down" if self.faulty else "interface_up")
            if self.group.any_faulty(self.name):  # a member's link is down: start with the group, in FAULT
                self.dispatch(self.inst.fault(now, "interface_down" if self.faulty else "sync_group"))
                return
        self.dispatch(self.inst.fault(now) if self.faulty else self.inst.start(now))

    async def stop(self, graceful: bool) -> None:
        """graceful: a MASTER resigns and hands over (make before break, driven by the core's timers);
        anything else releases stale addresses. Not graceful: stop as a crash would, addresses stay."""
        loop = asyncio.get_running_loop()
        if self.inst is not None and graceful:
            self.dispatch(self.inst.stop(loop.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), 3 * self._interval + RESIGN_EXTRA + 1.0)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        self._tasks, tasks = [], self._tasks
        for task in tasks[1:]:
            task.cancel()
        if tasks:
            self._effects.put_nowait(None)
            if graceful:  # the release must be done before we go
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(tasks[0], 5.0)
            tasks[0].cancel()
        await self.notify.stop(wait=graceful)
        await self.close()

    async def close(self) -> None:
        if self._links is not None:
            self._links.close()
        self.links_open = False
        if self._announcer is not None:
            self._announcer.close()
        if self.demux is not None and self.inst is not None:
            if self.demux.remove(self.inst.params.router_id, self._heartbeat):
                self.demux.close()  # the last instance on it
            self.demux = None
        await self._addrs.close()

    def set_priority_decrement(self, n: int) -> None:
        """Lower the advertised priority by n (quorum tracking); 0 restores the configured priority."""
        self.decrement = max(0, int(n))
        inst = self.inst
        if inst is None or inst.priority == self.effective_priority:
            return
        self._log.info("vrrp.priority", from_=inst.priority, to=self.effective_priority, decrement=self.decrement)
        self.dispatch(inst.set_priority(self.effective_priority, asyncio.get_running_loop().time()))

    def set_preempt_hold(self, reason: str) -> None:
        """Defer preemption while `reason` (the daemon's connection catch-up); "" preempts again. Held, a
        lower-priority master is followed as with `preempt: false`; a failover or a first start is not
        held up (no master: Master_Down runs out as always). A `preempt_delay` counts from the release."""
        if reason == self.preempt_hold:
            return
        self.preempt_hold, self._deferred_said = reason, False
        self._log.info("vrrp.preempt_hold", held=bool(reason), reason=reason or None)
        if self.inst is not None and self.src is not None:
            self.dispatch(self.inst.reconfigure(self.params(), self.effective_priority,
                                                asyncio.get_running_loop().time()))

    def _note_deferred(self) -> None:
        inst, cfg = self.inst, self.cfg
        if (not self.preempt_hold or self._deferred_said or inst is None or not cfg.preempt
                or inst.state != "BACKUP" or inst.master_priority is None or inst.master_priority >= inst.priority):
            return
        self._deferred_said = True
        self._log.info("vrrp.preempt_deferred", reason=self.preempt_hold, master=str(inst.master_address),
                       master_priority=inst.master_priority, priority=inst.priority)

    def update(self, view: NodeView, group: GroupHooks | bool | None = False) -> bool:
        """Reloaded tunables in place (priority, interval, preemption, tracking, notify, GARP, sync group):
        the state stays and adverts keep their rhythm. False: the identity changed; the caller restarts.
        `group`: the new group hooks (False: unchanged)."""
        names = {v.name for v in view.config.vrrp}
        if self.name not in names or self.inst is None or identity(view, self.name) != identity(self.view, self.name):
            return False
        old, old_group, self.view = self.view, self.group, view
        if group is not False:
            self.group = group  # type: ignore[assignment]
        try:
            new_params = self.params()
        except ValueError as e:  # a key file gone or unsafe: keep signing with the keys we have
            self.view, self.group = old, old_group
            self._log.error("vrrp.reload", applied=False, reason=str(e), kept="running VRRP settings")
            return True
        try:
            actions = self.inst.reconfigure(new_params, self.effective_priority, asyncio.get_running_loop().time())
        except ValueError as e:
            self.view, self.group = old, old_group
            self._log.info("vrrp.reload", applied=False, reason=str(e))
            return False
        self.notify.notify = self.cfg.notify
        if self.track != _track_of(old, self.name):
            self._polled = 0.0  # tracked links changed (one may be missing: FAULT): read them at the next tick
        self.dispatch(actions)
        self._log.info("vrrp.reload", applied=True, priority=self.effective_priority,
                       interval=self.cfg.advert_interval, auth=_auth_summary(self.inst))
        return True

    # ------------------------------------------------------------------------------ events in

    async def _track_loop(self) -> None:
        """The fallback: link events decide at once; this poll catches what they missed (every LINK_POLL
        seconds, or every advert interval when the event socket could not be opened)."""
        assert self.inst is not None
        while True:
            await asyncio.sleep(self._interval)
            self.last_tick = now = time.monotonic()
            if self.links_open and now - self._polled < LINK_POLL:
                continue
            self._polled, seen = now, self._link_events
            try:
                async with self._netlink:
                    down = frozenset({i for i in self.track if not await self._addrs.link_up(i)})
            except Exception as e:  # netlink trouble: keep the last known state, say so (rate-limited)
                self.warn("track", "vrrp.track_failed", error=f"{type(e).__name__}: {e}")
                continue
            if seen == self._link_events:
                self._set_faulty(down, "poll")

    def on_link(self, event: LinkEvent | None) -> None:
        if self.inst is None:
            return
        if event is None:  # events were lost: poll at the next tick
            self._polled = 0.0
            return
        if event.ifname not in self.track:
            return
        self._link_events += 1
        down = self.faulty - {event.ifname} if event.up else self.faulty | {event.ifname}
        self._set_faulty(frozenset(down), "event")

    def _set_faulty(self, down: frozenset[str], source: str) -> None:
        assert self.inst is not None
        if down == self.faulty:
            return
        for ifname in sorted(down ^ self.faulty):
            self._log.info("vrrp.track", interface=ifname, up=ifname not in down, source=source)
        was, self.faulty = bool(self.faulty), down
        if self.group is not None:
            if was != bool(down):
                self.group.fault(self.name, bool(down), "interface_down" if down else "interface_up")
            return
        now = asyncio.get_running_loop().time()
        self.dispatch(self.inst.fault(now) if down else self.inst.recover(now))

    def force(self, to: State, reason: str) -> None:
        """The sync group's verdict; nothing when the instance is already there."""
        if self.inst is not None and self.inst.state != to:
            self.dispatch(self.inst.force(to, asyncio.get_running_loop().time(), reason))

    # ------------------------------------------------------------------------------ actions out

    def dispatch(self, actions: Sequence[Action]) -> None:
        assert self.inst is not None and self._announcer is not None and self._heartbeat is not None
        ann, heartbeat = self._announcer, self._heartbeat
        for action in actions:
            if isinstance(action, SendAdvertisement):
                heartbeat.send(action.adv)
                if self.inst.state == MASTER and ann.reassert_due(self._interval):
                    self._effects.put_nowait(lambda: self._if_master(ann.reassert))
            elif isinstance(action, StateChanged):
                self._state_changed(action)
            elif isinstance(action, TakeAddresses):
                self._effects.put_nowait(ann.take)
            elif isinstance(action, ReleaseAddresses):
                ann.cancel_bursts()
                self._effects.put_nowait(lambda reason=action.reason: ann.release(reason))
            elif isinstance(action, AnnounceAddresses):
                garp = self.cfg.garp
                rounds, gap = (garp.burst if action.burst else 1), garp.burst_interval
                self._effects.put_nowait(lambda r=rounds, g=gap, why=action.reason: self._if_master(
                    lambda: ann.announce(r, g, why)))
            elif isinstance(action, AdvertDropped):
                if action.reason.startswith("auth_"):  # forged, replayed or unsigned: say who sent it
                    self.warn(f"auth:{action.reason}", "vrrp.auth_reject", reason=action.reason,
                              src=str(action.src))
                else:
                    self.warn(f"drop:{action.reason}", "vrrp.advert_dropped", reason=action.reason,
                              src=str(action.src))
            elif isinstance(action, Ignored):
                self.warn(f"ignored:{action.state}:{action.input}", "vrrp.ignored", level="info",
                          state=str(action.state), input=str(action.input))
            elif isinstance(action, Handover):
                self._log.info("vrrp.handover", outcome=action.outcome, waited=round(action.waited, 3))
            elif isinstance(action, WantMaster) and self.group is not None:
                self.group.want(self.name, action.want)
        if self.demux is not None:  # closed: a late group verdict must not arm a timer again
            heartbeat.rearm()

    def _state_changed(self, change: StateChanged) -> None:
        peer = {} if change.peer is None else {"peer": str(change.peer), "peer_priority": change.peer_priority}
        self._log.info("vrrp.state", from_=str(change.from_), to=str(change.to), reason=change.reason, **peer)
        self.notify.submit(str(change.to), change.reason)
        if change.to == "INIT":
            self._stopped.set()
        if self._on_state is not None:
            try:
                self._on_state(str(change.from_), str(change.to), change.reason)
            except Exception as e:  # a bad callback must not stop VRRP
                self._log.error("vrrp.on_state_failed", error=f"{type(e).__name__}: {e}")
        self._on_change()

    async def _if_master(self, effect: Callable[[], Awaitable[None] | None]) -> None:
        """Announcer work that only a MASTER does (the state may have moved on since it was queued)."""
        if self.inst is not None and self.inst.state == MASTER:
            result = effect()
            if result is not None:
                await result

    async def _effects_worker(self) -> None:
        # effects run one at a time, in order (netlink is quick; GARP bursts run apart)
        while (effect := await self._effects.get()) is not None:
            try:
                async with self._netlink:
                    await effect()
            except Exception as e:  # netlink refusing one change must not stop VRRP
                self.warn(f"effect:{type(e).__name__}", "vrrp.effect_failed", level="error",
                          error=f"{type(e).__name__}: {e}")

    def snapshot(self) -> dict[str, Any]:
        cfg = self.cfg
        snap: dict[str, Any] = self.inst.snapshot() if self.inst is not None else {"state": "INIT", "since": None}
        snap.setdefault("priority", self.effective_priority)
        since = snap.get("since")
        snap["since_wall"] = time.time() - (time.monotonic() - since) if isinstance(since, float) else None
        snap.update(
            router_id=cfg.router_id, version=cfg.version, interface=self._hb_if,
            source=str(self.src) if self.src else None, mode="unicast" if cfg.unicast_peers else "multicast",
            priority_decrement=self.decrement, preempt_hold=self.preempt_hold or None,
            addresses=[f"{a} dev {i}" for i, a in self.floating],
            faulty_interfaces=sorted(self.faulty),
            held=sorted(self._announcer.held) if self._announcer is not None else [],
            failures=dict(self.warn.counts),
        )
        if self.demux is not None and self.demux.unmatched:
            snap["unmatched_router_id"] = self.demux.unmatched
        return snap


def _track_of(view: NodeView, name: str) -> tuple[str, ...]:
    cfg = view.config.instance(name)
    return tuple(dict.fromkeys([view.ifname(cfg.interface), *(view.ifname(fa.interface) for fa in cfg.addresses),
                                *map(view.ifname, cfg.track_interfaces)]))


def _auth_summary(inst: VrrpInstance | None) -> dict[str, Any] | None:
    """What a log may say about auth_hmac: mode, anti-replay, key ids. Never a key."""
    if inst is None or inst.auth is None:
        return None
    p = inst.auth.params
    return {"mode": p.mode, "anti_replay": p.anti_replay, "active_key": p.active_key, "key_ids": sorted(p.keys)}
