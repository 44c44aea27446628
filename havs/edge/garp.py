"""Gratuitous ARP and its IPv6 twin, unsolicited neighbour advertisements (RFC 4861 §7.2.6): AF_PACKET
frames built by `core.wire.arp_announcement` / `core.wire.neighbour_advertisement`, one socket per
interface and family.

Each interface's packet socket is opened on first use and kept: a takeover, a refresh or an answer to a
lower-priority master is a few non-blocking `send` calls, not an open/bind/close (measured ~24 ms a round
under load before, on the VRRP loop). A socket whose interface vanished is dropped and reopened next time.
`FrameSender` is that machinery; `Garp` (IPv4) and `Ndisc` (IPv6) fill in the frames.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterable
from pathlib import Path

from havs.core.wire import arp_announcement, neighbour_advertisement

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
PROC_CONF = Path("/proc/sys/net/ipv6/conf")
_GONE = {errno.ENODEV, errno.ENXIO, errno.ENETDOWN}


def _open(ifname: str, ethertype: int = ETH_P_ARP) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ethertype))
    try:
        s.bind((ifname, ethertype))
        s.setblocking(False)
        # we only send: a receive queue would fill with every frame of that type on the segment
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
    except BaseException:
        s.close()
        raise
    return s


def interface_mac(ifname: str) -> bytes:
    """The interface's hardware address (a bound packet socket reports it; no sysfs, so it is right in
    whichever network namespace the caller is)."""
    with _open(ifname) as s:
        return bytes(s.getsockname()[4][:6])


class FrameSender:
    """One kept packet socket per interface. Not thread-safe: one owner (the VRRP loop)."""

    ethertype = ETH_P_ARP

    def __init__(self) -> None:
        self._socks: dict[str, socket.socket] = {}

    def frame(self, ifname: str, mac: bytes, ip: IPAddress) -> bytes:
        raise NotImplementedError

    def announce(self, ifname: str, addresses: Iterable[IPAddress]) -> int:
        """Send one announcement per address on `ifname` from its MAC. Returns frames sent.

        Non-blocking: a full transmit queue drops the frame rather than stalling the loop. Raises OSError
        (the interface is gone or down); the socket is then reopened on the next call."""
        s = self._socks.get(ifname)
        if s is None:
            s = self._socks[ifname] = _open(ifname, self.ethertype)
        sent = 0
        try:
            mac = bytes(s.getsockname()[4][:6])  # read each round: cheap, and right after a MAC change
            for ip in addresses:
                try:
                    s.send(self.frame(ifname, mac, ip))
                    sent += 1
                except BlockingIOError:
                    pass
        except OSError as e:
            if e.errno in _GONE:
                self._socks.pop(ifname, None)
                s.close()
            raise
        return sent

    def close(self) -> None:
        for s in self._socks.values():
            s.close()
        self._socks.clear()


class Garp(FrameSender):
    """Broadcast gratuitous ARP for IPv4 floating addresses."""

    def frame(self, ifname: str, mac: bytes, ip: IPAddress) -> bytes:
        if not isinstance(ip, ipaddress.IPv4Address):
            raise ValueError(f"gratuitous ARP is IPv4 only, got {ip}")
        return arp_announcement(mac, ip)


def forwarding(ifname: str) -> bool:
    """The interface's IPv6 forwarding setting, in the caller's network namespace (False if unreadable)."""
    try:
        return (PROC_CONF / ifname / "forwarding").read_text().strip() == "1"
    except (OSError, ValueError):
        return False


class Ndisc(FrameSender):
    """Unsolicited neighbour advertisements for IPv6 floating addresses. The Router flag follows the
    interface's IPv6 forwarding setting, as keepalived's does: a director that routes for its real servers
    says so (a host that sees the flag drop removes it from its default router list)."""

    ethertype = ETH_P_IPV6

    def __init__(self) -> None:
        super().__init__()
        self._router: dict[str, bool] = {}  # read once per interface per round (see announce)

    def announce(self, ifname: str, addresses: Iterable[IPAddress]) -> int:
        self._router[ifname] = forwarding(ifname)
        return super().announce(ifname, addresses)

    def frame(self, ifname: str, mac: bytes, ip: IPAddress) -> bytes:
        if not isinstance(ip, ipaddress.IPv6Address):
            raise ValueError(f"neighbour advertisements are IPv6 only, got {ip}")
        return neighbour_advertisement(mac, ip, router=self._router.get(ifname, False))
