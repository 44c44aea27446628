"""The VRRP shell's heartbeat path: where adverts come from and go, and the core's one deadline.

Nothing but the core and the socket runs here: adverts are read in batches (a flood cannot hold the loop
away from the timer), our own advert goes before the rest of a flood when it is due, and an advert is
signed once and sent to every destination. Address changes, GARP and notify hooks are the shell's effects.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable, Sequence

from havs.core import wire
from havs.core.model import NodeView
from havs.core.vrrp import Action, VrrpInstance
from havs.edge.addresses import Addresses, Interface
from havs.edge.vrrp_socket import VrrpSocket
from havs.vrrp.announcer import RateLimitedLog

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
READ_BATCH = 32  # adverts read per wake-up: a flood cannot hold the loop away from the timer


async def advert_source(view: NodeView, addrs: Addresses, hb_if: str, family: int,
                        floating: tuple[tuple[str, Interface], ...]) -> IP:
    """The advert source: unicast_src, else the heartbeat interface's primary IPv4 address or (IPv6,
    RFC 9568 §5.1.2.1) its link-local address. RuntimeError if there is none of the family."""
    src = view.node.unicast_src
    if src is None and family == 4:
        src = await addrs.primary_ipv4(hb_if, exclude={a.ip for _, a in floating})
    elif src is None:
        src = await addrs.link_local(hb_if)
    if src is None or src.version != family:
        kind = "IPv4 address" if family == 4 else "IPv6 link-local address"
        raise RuntimeError(f"{hb_if} has no {kind} to send adverts from (set unicast_src)")
    return src


class Heartbeat:
    """One started instance's socket reader, deadline timer and advert sender. `dispatch` is the shell's
    (the actions a received advert or a due deadline produce); `after_batch` runs after each read batch;
    `on_tick` whenever the deadline fires."""

    def __init__(self, sock: VrrpSocket, src: IP, inst: VrrpInstance, *, checksum: wire.ChecksumMode,
                 warn: RateLimitedLog, dispatch: Callable[[Sequence[Action]], None],
                 after_batch: Callable[[], None], on_tick: Callable[[], None]) -> None:
        self.sock = sock
        self.src = src
        self.inst = inst
        self.checksum = checksum
        self.warn = warn
        self._dispatch = dispatch
        self._after_batch = after_batch
        self._on_tick = on_tick
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    def on_readable(self) -> None:
        inst, sock = self.inst, self.sock
        loop = asyncio.get_running_loop()
        for r in sock.receive(limit=READ_BATCH):
            now = loop.time()
            if self._timer is not None and self._timer_at is not None and now >= self._timer_at:
                self._timer.cancel()  # our advert is due: it goes before the rest of a flood
                self._on_timer(self._timer_at)
            # keepalived skips the TTL rule for unicast peers (they may be routed)
            self._dispatch(inst.receive_bytes(r.payload, src=r.src, dst=r.dst,
                                              ttl=None if sock.unicast else r.ttl, now=now, wall=time.time()))
        self._after_batch()

    def _on_timer(self, at: float) -> None:
        self._timer = self._timer_at = None
        self._on_tick()
        # the loop may wake a hair early (clock resolution); the deadline has come by definition
        self._dispatch(self.inst.handle_timer(max(asyncio.get_running_loop().time(), at)))

    def rearm(self) -> None:
        at = self.inst.get_timer()
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(at, self._on_timer, at) if at is not None else None
        self._timer_at = at

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

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
