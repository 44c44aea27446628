"""The VRRP shell's heartbeat path: where adverts come from and go, and the core's one deadline.

Nothing but the core and the socket runs here: adverts are read in batches (a flood cannot hold the loop
away from the timer), our own advert goes before the rest of a flood when it is due, and an advert is
signed once and sent to every destination. Address changes, GARP and notify hooks are the shell's effects.

Instances on one interface, family and peer list share one raw socket (`Demux`), each advert handed to the
instance of its router id (byte 1 of every VRRP header, v2 and v3, signed or not): the kernel gives a copy
of every protocol-112 packet to every raw socket on the interface, so N sockets would make every instance
read, and the loop wake for, every other instance's adverts (and a flood would cost N times over), and N
multicast memberships would say the same thing. keepalived also keeps one socket per interface and family.

What is queued goes before a deadline: when a deadline comes (or the socket is readable with one already
past), the adverts already in the socket are fed to the cores first and a deadline fires only if it is
still due after them. On a saturated CPU the loop runs late, and the master's advert sitting unread in the
socket must not lose to Master_Down (a false takeover, undone by that very advert a few ms later). Each
advert is given to its core at its kernel receive time, so the deadline it sets is counted from when it
arrived, not from when a late loop read it; with no advert queued a deadline fires exactly as before (one
non-blocking recv, EAGAIN, per deadline). A due deadline waits for at most one read batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Callable, Sequence

from havs.core import wire
from havs.core.model import NodeView
from havs.core.vrrp import Action, VrrpInstance
from havs.edge.addresses import Addresses, Interface
from havs.edge.vrrp_socket import Received, VrrpSocket
from havs.vrrp.announcer import RateLimitedLog

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
READ_BATCH = 32  # adverts read per wake-up: a flood cannot hold the loop away from the timer


async def advert_source(view: NodeView, addrs: Addresses, hb_if: str, family: int,
                        floating: tuple[tuple[str, Interface], ...]) -> IP:
    """The advert source: unicast_src (when of the instance's family: a dual-stack director has instances of
    both), else the heartbeat interface's primary IPv4 address or (IPv6, RFC 9568 §5.1.2.1) its link-local
    address; `floating` (every instance's, never a source) excluded. RuntimeError if there is none."""
    src = view.node.unicast_src
    if src is not None and src.version != family and view.config.vrrp and \
            any(v.family == src.version for v in view.config.vrrp):
        src = None  # the other family's instances use it
    if src is None and family == 4:
        src = await addrs.primary_ipv4(hb_if, exclude={a.ip for _, a in floating})
    elif src is None:
        src = await addrs.link_local(hb_if)
    if src is None or src.version != family:
        kind = "IPv4 address" if family == 4 else "IPv6 link-local address"
        raise RuntimeError(f"{hb_if} has no {kind} to send adverts from (set unicast_src)")
    return src


class Demux:
    """One VRRP socket shared by the instances that use it, each advert given to its router id's `Heartbeat`.
    Adverts for a router id nobody here has are counted (`unmatched`); with a single instance they go to it,
    which counts them as its `router_id` drops, as before there were several."""

    def __init__(self, sock: VrrpSocket) -> None:
        self.sock = sock
        self.heartbeats: dict[int, Heartbeat] = {}
        self.unmatched = 0
        self._reading = False
        self._floor = float("-inf")  # no advert read from here on arrived before this (loop time)

    def add(self, router_id: int, heartbeat: Heartbeat) -> None:
        self.heartbeats[router_id] = heartbeat
        heartbeat.demux = self
        if not self._reading:
            asyncio.get_running_loop().add_reader(self.sock.fileno(), self.on_readable)
            self._reading = True

    def remove(self, router_id: int, heartbeat: Heartbeat | None = None) -> bool:
        """Forget one instance (`heartbeat`, when given: only if it is still the one of `router_id`, never a
        successor's); True when nobody uses the socket any more (the caller closes it)."""
        gone = self.heartbeats.get(router_id)
        if gone is not None and heartbeat in (None, gone):
            del self.heartbeats[router_id]
            gone.demux = None  # a timer of its that still wakes must not read a socket that may be closed
        if not self.heartbeats and self._reading:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self._reading = False
        return not self.heartbeats

    def close(self) -> None:
        if self._reading:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self._reading = False
        self.sock.close()

    def on_readable(self) -> None:
        self._pump(asyncio.get_running_loop().time())

    def on_deadline(self, now: float) -> None:
        """A heartbeat's deadline came: whatever is already queued goes first."""
        self._pump(now)

    def _pump(self, now: float) -> None:
        """Feed one batch of queued adverts, then fire the deadlines that are still due at `now`."""
        beats = self.heartbeats
        got = self.sock.receive(limit=READ_BATCH)
        if (error := getattr(self.sock, "error", None)) is not None and beats:
            hb = next(iter(beats.values()))  # one socket, one warning (rate-limited); the deadlines still fire
            hb.warn("receive", "vrrp.receive_failed", level="error", error=error.strerror or str(error))
        fed: dict[int, Heartbeat] = {}
        if got:
            only = next(iter(beats.values())) if len(beats) == 1 else None
            floor, to_mono = self._floor, None
            for r in got:
                hb = only or (beats.get(r.payload[1]) if len(r.payload) > 1 else None)
                if hb is None:
                    self.unmatched += 1
                    continue
                at = now
                if r.stamp is not None:  # when it arrived, within what we know: after `floor`, not after now
                    if to_mono is None:
                        to_mono = time.monotonic() - time.time()
                    at = min(now, max(floor, hb.inst.since, r.stamp + to_mono))
                hb.on_packet(r, at)
                fed[id(hb)] = hb
        fired = False
        for hb in list(beats.values()):
            fired = hb.fire_if_due(now) or fired
        # what is read later arrived after this read emptied the queue; and no core is fed a time earlier
        # than one a deadline has already been given (a wall-clock step cannot put an advert in the past)
        if fired or getattr(self.sock, "drained", False):
            self._floor = now
        for hb in fed.values():
            hb.after_batch()


class Heartbeat:
    """One started instance's deadline timer, advert sender and receiver (fed by its `Demux`). `dispatch` is
    the shell's (the actions a received advert or a due deadline produce); `after_batch` runs after each
    read batch that had adverts for it; `on_tick` whenever the deadline timer wakes."""

    def __init__(self, sock: VrrpSocket, src: IP, inst: VrrpInstance, *, checksum: wire.ChecksumMode,
                 warn: RateLimitedLog, dispatch: Callable[[Sequence[Action]], None],
                 after_batch: Callable[[], None], on_tick: Callable[[], None]) -> None:
        self.sock = sock
        self.src = src
        self.inst = inst
        self.checksum = checksum
        self.warn = warn
        self._dispatch = dispatch
        self.after_batch = after_batch
        self._on_tick = on_tick
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.demux: Demux | None = None  # set by `Demux.add`: its socket is drained before a deadline fires

    def on_packet(self, r: Received, now: float) -> None:
        # keepalived skips the TTL rule for unicast peers (they may be routed)
        self._dispatch(self.inst.receive_bytes(r.payload, src=r.src, dst=r.dst,
                                               ttl=None if self.sock.unicast else r.ttl, now=now, wall=time.time()))

    def fire_if_due(self, now: float) -> bool:
        """Fire the deadline if it has come by `now` (a loop time); True if it fired."""
        at = self._timer_at
        if at is None or now < at:
            return False
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_at = None
        self._on_tick()
        self._dispatch(self.inst.handle_timer(now))
        return True

    def _woke(self, at: float) -> None:
        self._on_tick()
        # the loop may wake a hair early (clock resolution); the deadline has come by definition
        now = max(asyncio.get_running_loop().time(), at)
        if self.demux is not None:
            self.demux.on_deadline(now)  # the adverts already queued first, then whatever is still due
        else:
            self.fire_if_due(now)

    def rearm(self) -> None:
        at = self.inst.get_timer()
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(at, self._woke, at) if at is not None else None
        self._timer_at = at

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_at = None

    def send(self, adv: wire.Advertisement) -> None:
        signs = self.inst.auth is not None and self.inst.auth.params.signs
        trailer: bytes | None = None if signs else b""
        for dst in self.sock.destinations:
            payload = wire.encode(adv, src=self.src, dst=dst, checksum=self.checksum)
            if trailer is None:  # signed once per advert: every peer gets the same sequence (as keepalived)
                trailer = self.inst.sign(payload, time.time())
            if trailer:  # encoded again with it: the IPv6 checksum covers the trailer (IPv4 does not)
                payload = wire.encode(adv, src=self.src, dst=dst, checksum=self.checksum, trailer=trailer)
            try:
                self.sock.send(payload, dst)
            except OSError as e:
                self.warn("send", "vrrp.send_failed", dst=str(dst), error=e.strerror or str(e))
