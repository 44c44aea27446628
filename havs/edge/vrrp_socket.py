"""Raw IPv4 protocol-112 socket for VRRP adverts on one interface, multicast or unicast peers.

Non-blocking; the caller registers `fileno()` with its event loop (`loop.add_reader`) and drains
`receive()`. The kernel builds the IP header; we set TTL 255 and TOS 0xc0 (network control, as keepalived)
and choose the source address per packet with IP_PKTINFO, because binding a raw socket to a local
address would also filter what it receives to that destination and lose the multicast group.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

PROTO_VRRP = 112
GROUP = ipaddress.IPv4Address("224.0.0.18")
TOS_NETWORK_CONTROL = 0xC0
# not exported by Python's socket module on every build
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
# Room for a burst of forged adverts without losing the peer's real ones behind it (~4,000 packets).
RCVBUF = 4 << 20


@dataclass(frozen=True)
class Received:
    payload: bytes
    src: ipaddress.IPv4Address
    dst: ipaddress.IPv4Address
    ttl: int


class VrrpSocket:
    def __init__(
        self,
        ifname: str,
        src: ipaddress.IPv4Address,
        *,
        peers: Sequence[ipaddress.IPv4Address] = (),
        group: ipaddress.IPv4Address = GROUP,
    ) -> None:
        self.ifname = ifname
        self.src = src
        self.peers = tuple(peers)
        self.group = group
        self.ifindex = socket.if_nametoindex(ifname)
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, PROTO_VRRP)
        try:
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, ifname.encode())
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, TOS_NETWORK_CONTROL)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 255)
            try:
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)  # beyond rmem_max: CAP_NET_ADMIN
            except PermissionError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            if not self.peers:
                mreqn = struct.pack("4s4si", group.packed, src.packed, self.ifindex)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        except BaseException:
            s.close()
            raise
        self._sock = s

    @property
    def unicast(self) -> bool:
        return bool(self.peers)

    @property
    def destinations(self) -> tuple[ipaddress.IPv4Address, ...]:
        return self.peers or (self.group,)

    def fileno(self) -> int:
        return self._sock.fileno()

    def send(self, payload: bytes, dst: ipaddress.IPv4Address) -> None:
        """Send one VRRP message to `dst` from our source address. Raises OSError (e.g. ENETDOWN)."""
        pktinfo = struct.pack("i4s4s", self.ifindex, self.src.packed, b"\x00" * 4)
        self._sock.sendmsg([payload], [(socket.IPPROTO_IP, IP_PKTINFO, pktinfo)], 0, (str(dst), 0))

    def receive(self, limit: int = 1 << 30) -> list[Received]:
        """Datagrams queued now (at most `limit` read, so a flood cannot hold the caller's loop), minus our
        own and, in unicast mode, anyone but the peers."""
        out: list[Received] = []
        for _ in range(limit):
            try:
                data = self._sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return out
            got = _parse_ipv4(data)
            if got is None or got.src == self.src:
                continue
            if self.peers and got.src not in self.peers:
                continue
            out.append(got)
        return out

    def close(self) -> None:
        self._sock.close()


def _parse_ipv4(data: bytes) -> Received | None:
    # raw IPv4 sockets deliver the IP header; that is where TTL and the addresses come from
    if len(data) < 20 or data[0] >> 4 != 4:
        return None
    ihl = (data[0] & 0x0F) * 4
    total = struct.unpack("!H", data[2:4])[0]
    if ihl < 20 or total < ihl or total > len(data):
        return None
    return Received(
        payload=data[ihl:total],
        src=ipaddress.IPv4Address(data[12:16]),
        dst=ipaddress.IPv4Address(data[16:20]),
        ttl=data[8],
    )
