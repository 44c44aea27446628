"""Gratuitous ARP on an interface: AF_PACKET frames built by `core.wire.arp_announcement`."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from havs.core.wire import arp_announcement

ETH_P_ARP = 0x0806


def interface_mac(ifname: str) -> bytes:
    """The interface's hardware address (a bound packet socket reports it; no sysfs, so it is right in
    whichever network namespace the caller is)."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
        s.bind((ifname, ETH_P_ARP))
        return bytes(s.getsockname()[4][:6])


def announce(ifname: str, addresses: Iterable[ipaddress.IPv4Address]) -> int:
    """Broadcast one gratuitous ARP per address on `ifname`, from the interface's MAC. Returns frames sent.

    Non-blocking: a full transmit queue drops the frame rather than stalling the VRRP thread."""
    sent = 0
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
        s.bind((ifname, ETH_P_ARP))
        s.setblocking(False)
        mac = bytes(s.getsockname()[4][:6])
        for ip in addresses:
            try:
                s.send(arp_announcement(mac, ip))
                sent += 1
            except BlockingIOError:
                pass
    return sent
