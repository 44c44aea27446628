"""Raw protocol-112 socket for VRRP adverts on one interface, IPv4 or IPv6, multicast or unicast peers.

Non-blocking; the caller registers `fileno()` with its event loop (`loop.add_reader`) and drains
`receive()`. The kernel builds the IP header; we set TTL 255 and TOS 0xc0 (network control, as keepalived)
and choose the source address per packet with IP_PKTINFO, because binding a raw socket to a local
address would also filter what it receives to that destination and lose the multicast group.

IPv6 (RFC 9568): the family follows `src` (the interface's link-local address); adverts go to ff02::12
with hop limit 255 and traffic class 0xc0; a raw IPv6 socket delivers no IP header, so the hop limit and
the destination come from ancillary data (IPV6_RECVHOPLIMIT, IPV6_RECVPKTINFO). We compute and check the
checksum ourselves (core.wire), as for IPv4.

Each datagram carries its kernel receive time (SO_TIMESTAMPNS, in the same recvmsg: no extra syscall), so
the heartbeat can tell the core when an advert really arrived, not when a busy loop got round to it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

PROTO_VRRP = 112
GROUP = ipaddress.IPv4Address("224.0.0.18")
GROUP_V6 = ipaddress.IPv6Address("ff02::12")
TOS_NETWORK_CONTROL = 0xC0
# not exported by Python's socket module on every build
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
# Room for a burst of forged adverts without losing the peer's real ones behind it (~4,000 packets).
RCVBUF = 4 << 20
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
IPV6_RECVHOPLIMIT = getattr(socket, "IPV6_RECVHOPLIMIT", 51)
IPV6_HOPLIMIT = getattr(socket, "IPV6_HOPLIMIT", 52)
IPV6_TCLASS = getattr(socket, "IPV6_TCLASS", 67)
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # also the cmsg type (SCM_TIMESTAMPNS)
_TIMESPEC = struct.Struct("@ll")
_ANCBUF4 = socket.CMSG_SPACE(_TIMESPEC.size)
_ANCBUF = socket.CMSG_SPACE(20) + socket.CMSG_SPACE(4) + _ANCBUF4  # in6_pktinfo + hop limit + timestamp
IP = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Received:
    payload: bytes
    src: IP
    dst: IP
    ttl: int  # the hop limit for IPv6
    stamp: float | None = None  # kernel receive time, wall-clock seconds (SO_TIMESTAMPNS); None: unknown


class VrrpSocket:
    def __init__(
        self,
        ifname: str,
        src: IP,
        *,
        peers: Sequence[IP] = (),
        group: IP | None = None,
    ) -> None:
        self.ifname = ifname
        self.src = src
        self.peers = tuple(peers)
        self.group: IP = group if group is not None else (GROUP if src.version == 4 else GROUP_V6)
        if any(p.version != src.version for p in self.peers) or self.group.version != src.version:
            raise ValueError(f"VRRP source {src}, peers and group must share one family")
        self.ifindex = socket.if_nametoindex(ifname)
        self._sock = self._open_v4() if src.version == 4 else self._open_v6()
        self.drained = True  # the last receive() emptied the queue (ended on EAGAIN, not on `limit`)

    def _open_v4(self) -> socket.socket:
        ifname, src, group = self.ifname, self.src, self.group
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, PROTO_VRRP)
        try:
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, ifname.encode())
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, TOS_NETWORK_CONTROL)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 255)
            _timestamps(s)
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
        return s

    def _open_v6(self) -> socket.socket:
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, PROTO_VRRP)
        try:
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, self.ifname.encode())
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_TCLASS, TOS_NETWORK_CONTROL)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1)
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
            _timestamps(s)
            try:
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
            except PermissionError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            if not self.peers:
                mreq = self.group.packed + struct.pack("@I", self.ifindex)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, self.ifindex)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        except BaseException:
            s.close()
            raise
        return s

    @property
    def unicast(self) -> bool:
        return bool(self.peers)

    @property
    def destinations(self) -> tuple[IP, ...]:
        return self.peers or (self.group,)

    def fileno(self) -> int:
        return self._sock.fileno()

    def send(self, payload: bytes, dst: IP) -> None:
        """Send one VRRP message to `dst` from our source address. Raises OSError (e.g. ENETDOWN)."""
        if self.src.version == 6:
            pktinfo6 = self.src.packed + struct.pack("@I", self.ifindex)
            self._sock.sendmsg([payload], [(socket.IPPROTO_IPV6, IPV6_PKTINFO, pktinfo6)], 0,
                               (str(dst), 0, 0, self.ifindex))
            return
        pktinfo = struct.pack("i4s4s", self.ifindex, self.src.packed, b"\x00" * 4)
        self._sock.sendmsg([payload], [(socket.IPPROTO_IP, IP_PKTINFO, pktinfo)], 0, (str(dst), 0))

    def receive(self, limit: int = 1 << 30) -> list[Received]:
        """Datagrams queued now (at most `limit` read, so a flood cannot hold the caller's loop), minus our
        own and, in unicast mode, anyone but the peers. `drained` says whether the queue was emptied."""
        out: list[Received] = []
        self.drained = False
        self.error: OSError | None = None  # the error that ended this read, if one did
        for _ in range(limit):
            try:
                if self.src.version == 6:
                    data, anc, _flags, addr = self._sock.recvmsg(65535, _ANCBUF)
                    got = _parse_ipv6(data, anc, addr)
                else:
                    data, anc, _flags, _addr = self._sock.recvmsg(65535, _ANCBUF4)
                    got = _parse_ipv4(data, _stamp(anc))
            except (BlockingIOError, InterruptedError):
                self.drained = True
                return out
            except OSError as e:  # a raw socket reports none in practice; if one comes, say it, lose no timer
                self.error = e
                return out
            if got is None or got.src == self.src:
                continue
            if self.peers and got.src not in self.peers:
                continue
            out.append(got)
        return out

    def close(self) -> None:
        self._sock.close()


def _timestamps(s: socket.socket) -> None:
    with contextlib.suppress(OSError):  # without receive times the heartbeat takes "when read"
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)


def _stamp(anc: list[tuple[int, int, bytes]]) -> float | None:
    for level, kind, value in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(value)
            return sec + nsec * 1e-9
    return None


def _parse_ipv4(data: bytes, stamp: float | None = None) -> Received | None:
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
        stamp=stamp,
    )


def _parse_ipv6(data: bytes, anc: list[tuple[int, int, bytes]], addr: tuple[object, ...]) -> Received | None:
    # no IP header on a raw IPv6 socket: the source is the peer address, the rest is ancillary data
    dst: ipaddress.IPv6Address | None = None
    hops: int | None = None
    for level, kind, value in anc:
        if level != socket.IPPROTO_IPV6:
            continue
        if kind == IPV6_PKTINFO and len(value) >= 16:
            dst = ipaddress.IPv6Address(value[:16])
        elif kind == IPV6_HOPLIMIT and len(value) >= 4:
            hops = struct.unpack("@i", value[:4])[0]
    if dst is None or hops is None:
        return None
    try:
        src = ipaddress.IPv6Address(str(addr[0]).split("%")[0])
    except ValueError:
        return None
    return Received(payload=data, src=src, dst=dst, ttl=hops, stamp=_stamp(anc))
