"""Floating addresses and link state over rtnetlink, in the network namespace `open()` runs in.

Idempotent: `add` of a present address and `remove` of an absent one are no-ops that report False.

One NETLINK_ROUTE socket of our own, messages by `havs.core.rtnl` (pyroute2 cost the VRRP child 0.37 s of
start-up and ~10 MB of RSS in the UML lab for these few requests, and its async socket is a datagram
endpoint that uvloop refuses). The kernel handles an address or link request inside send(), so its answer
is already queued when send() returns and is read at once; a dump's next part is made inside the recv()
that drains the previous one. Only if an answer is not there yet does a request wait on the running loop
(asyncio's or uvloop's), at most `timeout` seconds, so nothing here blocks the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

from havs.core.genl import NLMSG_DONE, NLMSG_ERROR, error_code, iter_messages
from havs.core.rtnl import (
    IFA_F_DADFAILED,
    IFA_F_NODAD,
    IFA_F_TENTATIVE,
    NLM_F_CREATE,
    NLM_F_REPLACE,
    RTM_DELADDR,
    RTM_NEWADDR,
    RTM_NEWLINK,
    Address,
    Interface,
    IPAddress,
    Link,
    address_request,
    getaddr_dump,
    getlink_request,
    parse_address,
    parse_link,
)

__all__ = ["AddressError", "Addresses", "IPAddress", "Interface"]

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_GET_STRICT_CHK = 12  # the kernel filters an address dump by interface (Linux >= 4.20)
REPLY_TIMEOUT = 2.0  # the kernel answers within the send(); this bounds a wedged one
_BUFSIZE = 1 << 16  # above the kernel's 32 KiB cap on a dump's datagram: nothing is ever truncated
_ABSENT = (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT)  # what a delete of something not there says

T = TypeVar("T")


class AddressError(OSError):
    """A kernel refusal (or no answer), with its errno and a message naming the interface and address."""


class Addresses:
    """One rtnetlink socket, opened in the current namespace by `open()`, used from one event loop."""

    def __init__(self, timeout: float = REPLY_TIMEOUT) -> None:
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._seq = 0
        self._lock: asyncio.Lock | None = None
        self._indexes: dict[str, int] = {}  # a takeover must not wait for a lookup per address

    async def open(self) -> Addresses:
        if self._sock is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                                 NETLINK_ROUTE)
            try:
                sock.bind((0, 0))
            except OSError:
                sock.close()
                raise
            with contextlib.suppress(OSError):  # an older kernel: dumps carry every interface's, filtered below
                sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
            self._sock = sock
        return self

    async def close(self) -> None:
        if self._sock is not None:
            # a request still awaiting its answer stops watching the fd (then times out), so the loop never
            # watches a closed fd whose number the next socket may reuse
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    # ------------------------------------------------------------------ requests

    async def _request(self, make: Callable[[int], bytes], what: str,
                       pick: Callable[[int, memoryview], T | None], *, dump: bool = False) -> list[T]:
        """Send `make(seq)`; what `pick(type, payload)` makes of each answer to it (None: skipped), until the
        ack or the end of the dump. A kernel error or no answer within `timeout` raises AddressError."""
        if self._sock is None:
            raise RuntimeError("Addresses.open() first")
        sock = self._sock
        if self._lock is None:  # made on first use: a lock belongs to the loop that runs it
            self._lock = asyncio.Lock()
        async with self._lock:  # one request in flight: its answers are the next ones on the socket
            self._seq = self._seq % 0x7FFFFFFF + 1
            seq = self._seq
            try:
                sock.send(make(seq))
            except OSError as e:
                raise AddressError(e.errno or errno.EIO, f"{e.strerror or e}: {what}") from e
            out: list[T] = []
            deadline: float | None = None
            while True:
                try:
                    data = sock.recv(_BUFSIZE)
                except BlockingIOError:
                    deadline = deadline or asyncio.get_running_loop().time() + self.timeout
                    data = await self._wait(sock, deadline, what)
                except OSError as e:
                    raise AddressError(e.errno or errno.EIO, f"{e.strerror or e}: {what}") from e
                for kind, _flags, mseq, payload in iter_messages(data):
                    if mseq != seq:
                        continue  # the late answer of a request that timed out
                    if kind in (NLMSG_ERROR, NLMSG_DONE):
                        err = error_code(payload) if len(payload) >= 4 else 0
                        if err:
                            raise AddressError(err, f"{os.strerror(err)}: {what}")
                        if kind == NLMSG_DONE or not dump:
                            return out
                        continue
                    item = pick(kind, payload)
                    if item is not None:
                        out.append(item)

    async def _wait(self, sock: socket.socket, deadline: float, what: str) -> bytes:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                return await loop.sock_recv(sock, _BUFSIZE)
        except TimeoutError:
            raise AddressError(errno.ETIMEDOUT, f"no answer from the kernel in {self.timeout:g} s: {what}") from None
        except OSError as e:
            raise AddressError(e.errno or errno.EIO, f"{e.strerror or e}: {what}") from e

    async def _with_index(self, ifname: str, call: Callable[[int], Awaitable[T]]) -> T:
        """`call(index)`; once more with a fresh lookup if the kernel says ENODEV: the interface was
        re-created under the same name since its index was cached."""
        cached = ifname in self._indexes
        try:
            return await call(await self.index(ifname))
        except AddressError as e:
            if e.errno != errno.ENODEV or not cached:
                raise
            self._indexes.pop(ifname, None)
            return await call(await self.index(ifname))

    async def _link(self, ifname: str) -> Link:
        links = await self._request(lambda seq: getlink_request(ifname, seq), f"link {ifname}", _pick_link)
        if not links:
            raise AddressError(errno.ENODEV, f"no interface {ifname}")
        self._indexes[ifname] = links[0].index
        return links[0]

    async def _dump(self, ifname: str, family: int) -> list[Address]:
        async def dump(idx: int) -> list[Address]:
            found = await self._request(lambda seq: getaddr_dump(family, idx, seq), f"addresses of {ifname}",
                                        _pick_address, dump=True)
            return [a for a in found if a.index == idx and a.family == family]

        return await self._with_index(ifname, dump)

    # ------------------------------------------------------------------ the API

    async def index(self, ifname: str) -> int:
        cached = self._indexes.get(ifname)
        if cached is not None:
            return cached
        try:
            return (await self._link(ifname)).index
        except AddressError as e:
            if e.errno == errno.ENODEV:
                raise AddressError(errno.ENODEV, f"no interface {ifname}") from None
            raise

    async def list(self, ifname: str, family: int = socket.AF_INET) -> list[tuple[Interface, bool]]:
        """(address/prefix, is_primary) on `ifname`, kernel order (primary first)."""
        out: list[tuple[Interface, bool]] = []
        for a in await self._dump(ifname, family):
            iface = a.interface
            if iface is not None:
                out.append((iface, a.primary))
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
        nodad = IFA_F_NODAD if address.version == 6 else 0

        async def replace(idx: int) -> None:
            await self._request(
                lambda seq: address_request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, seq, idx, address, nodad),
                f"add {address} dev {ifname}", _pick_nothing)

        await self._with_index(ifname, replace)

    async def remove(self, ifname: str, address: Interface) -> bool:
        """Ensure `address` is not on `ifname`. True if it was removed."""
        async def delete(idx: int) -> None:
            await self._request(lambda seq: address_request(RTM_DELADDR, 0, seq, idx, address),
                                f"delete {address} dev {ifname}", _pick_nothing)

        try:
            await self._with_index(ifname, delete)
        except AddressError as e:
            if e.errno in _ABSENT:
                return False
            raise
        return True

    async def link_up(self, ifname: str) -> bool:
        """Administratively up and running (carrier). A missing interface is down."""
        try:
            return (await self._link(ifname)).up
        except AddressError as e:
            if e.errno == errno.ENODEV:
                self._indexes.pop(ifname, None)
                return False
            raise

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
        ready: list[ipaddress.IPv6Address] = []
        tentative: list[ipaddress.IPv6Address] = []
        for a in await self._dump(ifname, socket.AF_INET6):
            ip = a.address
            if not isinstance(ip, ipaddress.IPv6Address) or not ip.is_link_local or a.flags & IFA_F_DADFAILED:
                continue
            (tentative if a.flags & IFA_F_TENTATIVE else ready).append(ip)
        return (ready or tentative or [None])[0]


def _pick_link(kind: int, payload: memoryview) -> Link | None:
    return parse_link(payload) if kind == RTM_NEWLINK else None


def _pick_address(kind: int, payload: memoryview) -> Address | None:
    return parse_address(payload) if kind == RTM_NEWADDR else None


def _pick_nothing(kind: int, payload: memoryview) -> None:
    return None


def _family(address: Interface) -> int:
    return socket.AF_INET if address.version == 4 else socket.AF_INET6
