"""Gratuitous ARP: AF_PACKET frames built by `core.wire.arp_announcement`, one socket per interface.

Each interface's packet socket is opened on first use and kept: a takeover, a refresh or an answer to a
lower-priority master is a few non-blocking `send` calls, not an open/bind/close (measured ~24 ms a round
under load before, on the VRRP loop). A socket whose interface vanished is dropped and reopened next time.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterable

from havs.core.wire import arp_announcement

ETH_P_ARP = 0x0806
_GONE = {errno.ENODEV, errno.ENXIO, errno.ENETDOWN}


def _open(ifname: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    try:
        s.bind((ifname, ETH_P_ARP))
        s.setblocking(False)
        # we only send: a receive queue would fill with every ARP frame on the segment
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


class Garp:
    """The announcer's sockets. Not thread-safe: one owner (the VRRP loop)."""

    def __init__(self) -> None:
        self._socks: dict[str, socket.socket] = {}

    def announce(self, ifname: str, addresses: Iterable[ipaddress.IPv4Address]) -> int:
        """Broadcast one gratuitous ARP per address on `ifname` from its MAC. Returns frames sent.

        Non-blocking: a full transmit queue drops the frame rather than stalling the loop. Raises OSError
        (the interface is gone or down); the socket is then reopened on the next call."""
        s = self._socks.get(ifname)
        if s is None:
            s = self._socks[ifname] = _open(ifname)
        sent = 0
        try:
            mac = bytes(s.getsockname()[4][:6])  # read each round: cheap, and right after a MAC change
            for ip in addresses:
                try:
                    s.send(arp_announcement(mac, ip))
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
