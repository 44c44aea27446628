"""The floating addresses' side of VRRP: add, remove, re-add, gratuitous ARP and unsolicited NA, in one place.

The core decides (TakeAddresses, ReleaseAddresses, AnnounceAddresses); this carries it out with one
rtnetlink socket (`edge.addresses`) and one packet socket per interface and family (`edge.garp.Garp` for
IPv4, `edge.garp.Ndisc` for IPv6: the core emits one announce action, and each address gets what its
family needs). Every failure is caught here, counted, logged once per kind per `LOG_EVERY` seconds, and
never reaches the heartbeat.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections import Counter
from typing import Any

from havs.edge.addresses import Addresses, Interface
from havs.edge.garp import FrameSender, Garp, Ndisc

LOG_EVERY = 5.0  # seconds between two log lines of one kind of failure
_KIND = {4: "garp", 6: "unsolicited_na"}  # log events and failure counters per family


class RateLimitedLog:
    """Warnings that could repeat per packet: the first at once, then one per LOG_EVERY with a count."""

    def __init__(self, log: Any) -> None:
        self.log = log
        self.counts: Counter[str] = Counter()
        self._last: dict[str, tuple[float, int]] = {}

    def __call__(self, key: str, event: str, *, level: str = "warning", **fields: Any) -> None:
        self.counts[key] += 1
        now = time.monotonic()
        last, suppressed = self._last.get(key, (-LOG_EVERY, 0))
        if now - last < LOG_EVERY:
            self._last[key] = (last, suppressed + 1)
            return
        self._last[key] = (now, 0)
        getattr(self.log, level)(event, suppressed=suppressed, **fields)


class AddressCache:
    """What is on each interface, as a MASTER's check reads it: one netlink dump per interface and family per
    `ttl` for every instance of the child, not one per instance and address (8 instances at 0.1 s made 80
    dumps a second, the VRRP child's main cost). Whatever an announcer changes itself is read afresh."""

    def __init__(self, ttl: float = 0.0) -> None:
        self.ttl = ttl
        self._seen: dict[tuple[str, int], tuple[float, frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address]]] = {}

    async def present(self, addrs: Addresses, ifname: str,
                      family: int) -> frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        now = time.monotonic()
        hit = self._seen.get((ifname, family))
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        listed = await addrs.list(ifname, socket.AF_INET if family == 4 else socket.AF_INET6)
        ips = frozenset(iface.ip for iface, _ in listed)
        self._seen[ifname, family] = (now, ips)
        return ips

    def invalidate(self, ifname: str) -> None:
        for key in [k for k in self._seen if k[0] == ifname]:
            del self._seen[key]


class Announcer:
    def __init__(self, floating: tuple[tuple[str, Interface], ...], addrs: Addresses, log: Any,
                 warn: RateLimitedLog, cache: AddressCache | None = None) -> None:
        self.floating = floating
        self._addrs = addrs
        self._log = log
        self._warn = warn
        self._cache = cache if cache is not None else AddressCache()
        self._senders: dict[int, FrameSender] = {4: Garp(), 6: Ndisc()}
        self.held: set[str] = set()  # "address dev ifname" this node holds, as far as we know
        self._tasks: set[asyncio.Task[None]] = set()
        self._checked = 0.0  # when a MASTER last checked its addresses

    def _name(self, ifname: str, a: Interface) -> str:
        return f"{a} dev {ifname}"

    def _by_interface(self) -> dict[tuple[str, int], list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
        by_if: dict[tuple[str, int], list[ipaddress.IPv4Address | ipaddress.IPv6Address]] = {}
        for ifname, a in self.floating:
            by_if.setdefault((ifname, a.version), []).append(a.ip)
        return by_if

    async def take(self) -> None:
        for ifname, a in self.floating:
            self._cache.invalidate(ifname)
            await self._addrs.ensure(ifname, a)
            self.held.add(self._name(ifname, a))
        self._log.info("vrrp.addresses", action="take", addresses=[self._name(i, a) for i, a in self.floating])

    async def release(self, reason: str) -> None:
        """reason "stale": remove what is there and say so only then (at warning: someone left them)."""
        self.cancel_bursts()
        removed = []
        for ifname, a in self.floating:
            self._cache.invalidate(ifname)
            if await self._addrs.remove(ifname, a):
                removed.append(self._name(ifname, a))
            self.held.discard(self._name(ifname, a))
        if reason == "stale":
            if removed:
                self._log.warning("vrrp.addresses", action="release", reason="stale", addresses=removed)
            return
        self._log.info("vrrp.addresses", action="release", reason=reason, addresses=removed or "already absent")

    def reassert_due(self, interval: float) -> bool:
        """With every advert, but at most once an interval: answers to forged adverts add no netlink dumps."""
        now = time.monotonic()
        if now - self._checked < interval * 0.9:
            return False
        self._checked = now
        return True

    async def reassert(self) -> None:
        """MASTER: put back an address someone removed, and tell the neighbours again."""
        readded = []
        for ifname, a in self.floating:
            if a.ip not in await self._cache.present(self._addrs, ifname, a.version):
                self._cache.invalidate(ifname)
                await self._addrs.ensure(ifname, a)
                readded.append(self._name(ifname, a))
            self.held.add(self._name(ifname, a))
        if readded:
            self._log.warning("vrrp.addresses", action="readd", addresses=readded)
            self.announce(rounds=1, interval=0.0, reason="readd")

    def announce(self, rounds: int, interval: float, reason: str) -> None:
        """Gratuitous ARP (IPv4) or unsolicited NA (IPv6) for every floating address: the first round now,
        on every side back to back (the clients and the real servers must switch together), the rest of a
        burst `interval` apart."""
        sent = self._round()
        if rounds <= 1:
            self._logged(sent, 1, reason)
            return
        task = asyncio.get_running_loop().create_task(self._burst(sent, rounds, interval, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _round(self) -> dict[tuple[str, int], int]:
        sent: dict[tuple[str, int], int] = {}
        for (ifname, family), ips in self._by_interface().items():
            try:
                sent[ifname, family] = self._senders[family].announce(ifname, ips)
            except OSError as e:
                sent[ifname, family] = 0
                kind = _KIND[family]
                self._warn(f"{kind}:{ifname}", f"vrrp.{kind}_failed", interface=ifname, error=e.strerror or str(e))
        return sent

    async def _burst(self, sent: dict[tuple[str, int], int], rounds: int, interval: float, reason: str) -> None:
        done = 1
        try:
            for _ in range(rounds - 1):
                await asyncio.sleep(interval)
                for key, n in self._round().items():
                    sent[key] = sent.get(key, 0) + n
                done += 1
        finally:
            self._logged(sent, done, reason)

    def _logged(self, sent: dict[tuple[str, int], int], rounds: int, reason: str) -> None:
        for (ifname, family), ips in self._by_interface().items():
            if sent.get((ifname, family)):
                self._log.info(f"vrrp.{_KIND[family]}", interface=ifname, address=[str(i) for i in ips], count=rounds,
                               reason=reason)

    def cancel_bursts(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def close(self) -> None:
        self.cancel_bursts()
        for sender in self._senders.values():
            sender.close()
