"""Floating addresses and link state over rtnetlink (pyroute2), in the current network namespace.

Idempotent: `add` of a present address and `remove` of an absent one are no-ops that report False.
Async (pyroute2's AsyncIPRoute) because the synchronous IPRoute of pyroute2 0.9 drives an event loop of
its own and cannot be called from inside a running one, which is where the VRRP thread lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import socket
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

IFF_UP = 0x1
IFF_RUNNING = 0x40  # operstate UP (or UNKNOWN for carrier-less devices such as dummy/lo)
IFA_F_SECONDARY = 0x01
IFA_F_NODAD = 0x02  # an IPv6 floating address is usable at once: no duplicate-address wait after a takeover
IFA_F_TENTATIVE = 0x40
IFA_F_DADFAILED = 0x08


class AddressError(OSError):
    pass


class Addresses:
    """One rtnetlink socket, opened in the current namespace by `open()` inside the caller's loop."""

    def __init__(self) -> None:
        self._ipr: AsyncIPRoute | None = None
        self._indexes: dict[str, int] = {}  # a takeover must not wait for a lookup per address

    async def open(self) -> Addresses:
        if self._ipr is None:
            self._ipr = AsyncIPRoute()
            await self._ipr.setup_endpoint()
        return self

    async def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    @property
    def ipr(self) -> AsyncIPRoute:
        if self._ipr is None:
            raise RuntimeError("Addresses.open() first")
        return self._ipr

    async def index(self, ifname: str) -> int:
        cached = self._indexes.get(ifname)
        if cached is not None:
            return cached
        found = await self.ipr.link_lookup(ifname=ifname)
        if not found:
            raise AddressError(errno.ENODEV, f"no interface {ifname}")
        self._indexes[ifname] = int(found[0])
        return int(found[0])

    async def list(self, ifname: str, family: int = socket.AF_INET) -> list[tuple[Interface, bool]]:
        """(address/prefix, is_primary) on `ifname`, kernel order (primary first)."""
        idx = await self.index(ifname)
        out: list[tuple[Interface, bool]] = []
        async for msg in await self.ipr.addr("dump", index=idx, family=family):
            if msg.get("index") != idx:
                continue
            addr = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
            if addr is None:
                continue
            iface = ipaddress.ip_interface(f"{addr}/{msg['prefixlen']}")
            out.append((iface, not (msg["flags"] & IFA_F_SECONDARY)))
        return out

    async def present(self, ifname: str, address: Interface) -> bool:
        return any(iface.ip == address.ip for iface, _ in await self.list(ifname, _family(address)))

    async def add(self, ifname: str, address: Interface) -> bool:
        """Ensure `address` is on `ifname`. True if it was added."""
        if await self.present(ifname, address):
            return False
        await self.ensure(ifname, address)
        return True

    async def ensure(self, ifname: str, address: Interface) -> None:
        """Put `address` on `ifname` in one request ("replace" is idempotent): the takeover path."""
        try:
            await self._replace(await self.index(ifname), address)
        except NetlinkError as e:
            if e.code != errno.ENODEV:
                raise
            self._indexes.pop(ifname, None)  # the interface was re-created: look it up again
            await self._replace(await self.index(ifname), address)

    async def _replace(self, idx: int, address: Interface) -> None:
        extra = {"flags": IFA_F_NODAD} if address.version == 6 else {}
        await self.ipr.addr(
            "replace", index=idx, address=str(address.ip), prefixlen=address.network.prefixlen,
            family=_family(address), **extra,
        )

    async def remove(self, ifname: str, address: Interface) -> bool:
        """Ensure `address` is not on `ifname`. True if it was removed."""
        try:
            idx = await self.index(ifname)
            await self.ipr.addr(
                "del", index=idx, address=str(address.ip), prefixlen=address.network.prefixlen,
                family=_family(address),
            )
        except NetlinkError as e:
            if e.code in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
                return False
            raise
        except AddressError:
            return False
        return True

    async def link_up(self, ifname: str) -> bool:
        """Administratively up and running (carrier). A missing interface is down."""
        try:
            links = await self.ipr.link("get", ifname=ifname)
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return False
            raise
        flags = int(links[0]["flags"]) if links else 0
        return bool(flags & IFF_UP and flags & IFF_RUNNING)

    async def primary_ipv4(self, ifname: str, exclude: set[IPAddress] | None = None) -> ipaddress.IPv4Address | None:
        """The interface's primary IPv4 address (the advert source), ignoring our floating ones."""
        candidates = [(iface, primary) for iface, primary in await self.list(ifname) if iface.ip not in (exclude or ())]
        for iface, primary in candidates:
            if primary:
                return ipaddress.IPv4Address(iface.ip)
        return ipaddress.IPv4Address(candidates[0][0].ip) if candidates else None

    async def link_local(self, ifname: str) -> ipaddress.IPv6Address | None:
        """The interface's IPv6 link-local address (the VRRPv3 advert source, RFC 9568 §5.1.2.1): one that
        finished duplicate-address detection if there is one, else a tentative one (None if neither)."""
        idx = await self.index(ifname)
        ready: list[ipaddress.IPv6Address] = []
        tentative: list[ipaddress.IPv6Address] = []
        async for msg in await self.ipr.addr("dump", index=idx, family=socket.AF_INET6):
            addr = msg.get("IFA_ADDRESS")
            if msg.get("index") != idx or addr is None:
                continue
            ip = ipaddress.IPv6Address(addr.split("%")[0])
            flags = int(msg.get("IFA_FLAGS") or msg["flags"])
            if not ip.is_link_local or flags & IFA_F_DADFAILED:
                continue
            (tentative if flags & IFA_F_TENTATIVE else ready).append(ip)
        return (ready or tentative or [None])[0]


T = TypeVar("T")


class OwnLoopAddresses:
    """`Addresses` on a standard asyncio loop in a thread of its own, for a caller on uvloop (the daemon):
    pyroute2's async socket is a datagram endpoint on an AF_NETLINK socket, which uvloop refuses ("cannot
    open a UDP handle, invalid family 16"). The VRRP child runs asyncio's own loop and uses `Addresses`."""

    def __init__(self) -> None:
        self._inner = Addresses()
        self._closed = False
        self._loop = asyncio.SelectorEventLoop()  # not new_event_loop(): under uvloop's policy that is uvloop
        self._thread = threading.Thread(target=self._run, name="havs-netlink", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._loop.run_forever()
        self._loop.close()

    async def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    async def open(self) -> OwnLoopAddresses:
        await self._call(self._inner.open())
        return self

    async def add(self, ifname: str, address: Interface) -> bool:
        return await self._call(self._inner.add(ifname, address))

    async def remove(self, ifname: str, address: Interface) -> bool:
        return await self._call(self._inner.remove(ifname, address))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True  # a second close must not wait on a loop that no longer runs
        try:
            await self._call(self._inner.close())
        finally:
            with contextlib.suppress(RuntimeError):  # stopped already
                self._loop.call_soon_threadsafe(self._loop.stop)


def _family(address: Interface) -> int:
    return socket.AF_INET if address.version == 4 else socket.AF_INET6
